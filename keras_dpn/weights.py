"""Pretrained-weight registry (stub: the models work item completes it).

Entries are keyed ``"arch.tag"`` (e.g. ``"DPN4_32.coco"``).
"""

_REGISTRY = {}
KNOWN_TAGS = ("coco", "mpii")


def validate_weights_argument(arch, weights):
    if weights is None:
        return
    if not isinstance(weights, str):
        raise ValueError(
            f"`weights` must be None, a registered tag or a file path. Received: weights={weights!r}")


def load_weights(model, weights, arch, num_keypoints, input_shape):
    model.load_weights(weights)
