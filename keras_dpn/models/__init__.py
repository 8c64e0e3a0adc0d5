"""Model builders: the DPN family and the HRNet peer.

``MODELS`` maps every registered variant name to its constructor; all take
the same arguments (``num_keypoints``, ``input_shape``, ``input_tensor``,
``include_top``, ``weights``, ``name``, ``dtype``).
"""

from keras_dpn.models.dpn import (DPN, DPN1_32, DPN1_64, DPN2_32, DPN2_64, DPN3_32,
                                  DPN3_64, DPN4_32, DPN4_64, DPN_SPECS)
from keras_dpn.models.hrnet import DPN2_HRNet, HRNetW32

MODELS = {
    "DPN1_32": DPN1_32, "DPN2_32": DPN2_32, "DPN3_32": DPN3_32, "DPN4_32": DPN4_32,
    "DPN1_64": DPN1_64, "DPN2_64": DPN2_64, "DPN3_64": DPN3_64, "DPN4_64": DPN4_64,
    "HRNetW32": HRNetW32, "DPN2_HRNet": DPN2_HRNet,
}


def get_model(name, **kwargs):
    """Builds a registered variant by name.

    Example:
    >>> get_model("DPN1_32", input_shape=(64, 48, 3)).output_shape
    (None, 16, 12, 17)
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model. Expected one of {sorted(MODELS)}. Received: name={name!r}")
    return MODELS[name](**kwargs)
