"""The model registry: every named variant, declared once with ``@register_model``.

A variant is a one-line constructor in its family's module, decorated with
the paper's figures for it::

    @register_model(paper_params=0.7, paper_gmacs=1.1, source="Table II")
    def DPN4_32(**kwargs):
        return DPN(num_modules=4, width=32, **kwargs)

The decorator adds it to :data:`MODELS` (name -> constructor), which the
package namespace, :func:`get_model`, the ``keras-dpn`` command line, the
recipes, the benchmarks and the test harness all read; nothing else lists
the variants.
"""

import dataclasses
import difflib
from typing import Callable, Dict, Optional


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A registered variant and what the paper reports for it.

    Attributes:
        name: the constructor's name, e.g. ``"DPN4_32"``.
        constructor: the function building it.
        paper_params: trainable parameters in millions (None where the paper
            gives none), at 17 keypoints.
        paper_gmacs: multiply-accumulates in G for one 256x192 image.
        paper_gmacs_high: the same with ``resolution="high"`` (Table IV).
        source: where in the paper the figures are.
    """

    name: str
    constructor: Callable
    paper_params: Optional[float] = None
    paper_gmacs: Optional[float] = None
    paper_gmacs_high: Optional[float] = None
    source: str = ""


#: Variant name -> constructor, in registration order.
MODELS: Dict[str, Callable] = {}
_INFO: Dict[str, ModelInfo] = {}


def register_model(constructor=None, *, paper_params=None, paper_gmacs=None,
                   paper_gmacs_high=None, source=""):
    """Registers a variant constructor under its function name.

    Usable bare (``@register_model``) or with the paper's figures
    (``@register_model(paper_params=0.7, ...)``).

    Raises:
        ValueError: if the name is already registered.
    """
    def add(fn):
        name = fn.__name__
        if name in MODELS:
            raise ValueError(f"A model named {name!r} is already registered. "
                             f"Received: constructor={fn!r}")
        MODELS[name] = fn
        _INFO[name] = ModelInfo(name, fn, paper_params, paper_gmacs, paper_gmacs_high, source)
        return fn

    return add if constructor is None else add(constructor)


def model_info(name, arg_name="name"):
    """The :class:`ModelInfo` of a registered variant.

    Raises:
        ValueError: one line listing the registered names (and the closest
            one), naming ``arg_name`` and what it received.
    """
    if isinstance(name, str) and name in _INFO:
        return _INFO[name]
    upper = {n.upper(): n for n in MODELS}
    close = difflib.get_close_matches(str(name).upper(), list(upper), n=1)
    hint = f" Did you mean {upper[close[0]]}?" if close else ""
    raise ValueError(f"Unknown model name. Expected one of: {', '.join(MODELS)}.{hint} "
                     f"Received: {arg_name}={name!r}")


def get_model(name, **kwargs):
    """Builds a registered variant by name.

    Args:
        name: a key of :data:`MODELS`, e.g. ``"DPN4_32"``.
        **kwargs: the constructor's arguments (``num_keypoints``,
            ``input_shape``, ``weights``, ...).

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
    >>> get_model("DPN1_32", input_shape=(64, 48, 3)).output_shape
    (None, 16, 12, 17)
    """
    return model_info(name).constructor(**kwargs)
