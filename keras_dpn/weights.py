"""Pretrained-weight registry: ``arch.tag`` entries, download, verification.

Each entry (e.g. ``"DPN4_32.coco"``) records where a weights file lives, its
sha256, and the contract it was trained under: input size, keypoint set and
count, preprocessing, and the metrics it reaches. Builders accept
``weights=None``, a registered tag, or a path to a ``.weights.h5`` / ``.keras``
file.

**The registry ships empty.** No COCO- or MPII-trained DPN weights have been
released; entries are never invented. To use your own release::

    import keras_dpn
    keras_dpn.weights.register(
        "DPN4_32", "coco", url="https://example.org/dpn4_32_coco.weights.h5",
        sha256="<64 hex digits>", input_shape=(256, 192, 3), num_keypoints=17,
        metrics={"coco_val_AP": 0.70})
    model = keras_dpn.DPN4_32(weights="coco")

Downloads go through ``keras.utils.get_file`` into ``$KERAS_HOME/keras_dpn``
and are checked against the sha256; a file that fails any check (hash,
truncation, architecture, keypoint count) is removed from the cache so that
the next attempt starts clean.
"""

import dataclasses
import io
import os
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

import keras

# Tags a user may reasonably expect (the paper's datasets); they get a
# "not released" error instead of "unknown" when nothing is registered.
KNOWN_TAGS = ("coco", "mpii")
WEIGHT_SUFFIXES = (".weights.h5", ".keras")
CACHE_SUBDIR = "keras_dpn"

DEFAULT_PREPROCESSING = (
    "RGB float in [0, 1], minus ImageNet mean (0.485, 0.456, 0.406), divided by std "
    "(0.229, 0.224, 0.225); person crops widened to the input aspect ratio x1.25")


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One released weights file and the contract it was trained under.

    Attributes:
        arch: model variant, e.g. ``"DPN4_32"``.
        tag: release tag, e.g. ``"coco"``.
        url: where ``keras.utils.get_file`` fetches it.
        sha256: hex digest of the file.
        input_shape: ``(H, W, 3)`` the weights were trained at.
        num_keypoints: heatmap channels of the head.
        keypoints: keypoint set name (see :mod:`keras_dpn.keypoints`).
        metrics: what the weights reach, e.g. ``{"coco_val_AP": 0.70}``.
        preprocessing: how images must be prepared.
        file_name: name in the cache; defaults to ``{arch}_{tag}{suffix}``.
    """

    arch: str
    tag: str
    url: str
    sha256: str
    input_shape: Tuple[int, int, int]
    num_keypoints: int
    keypoints: str = "coco"
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    preprocessing: str = DEFAULT_PREPROCESSING
    file_name: Optional[str] = None

    @property
    def key(self):
        return f"{self.arch}.{self.tag}"

    @property
    def cache_file_name(self):
        if self.file_name:
            return self.file_name
        suffix = ".keras" if self.url.endswith(".keras") else ".weights.h5"
        return f"{self.arch}_{self.tag}{suffix}"


_REGISTRY: Dict[str, WeightsEntry] = {}


def register(arch, tag, url, sha256, input_shape, num_keypoints, keypoints="coco",
             metrics=None, preprocessing=DEFAULT_PREPROCESSING, file_name=None,
             overwrite=False):
    """Registers a weights release as ``"{arch}.{tag}"``.

    Args:
        arch: model variant, e.g. ``"DPN4_32"`` or ``"HRNetW32"``.
        tag: release tag, passed later as ``weights=tag``.
        url: download address (``http(s)://`` or ``file://``).
        sha256: 64-hex-digit sha256 of the file.
        input_shape: ``(H, W, 3)`` the weights were trained at.
        num_keypoints: heatmap channels of the head.
        keypoints: keypoint set name, e.g. ``"coco"`` or ``"mpii"``.
        metrics: optional dict of metrics the weights reach.
        preprocessing: how images must be prepared.
        file_name: optional name in the cache.
        overwrite: replace an existing entry with the same key.

    Returns:
        The :class:`WeightsEntry`.

    Example:
    >>> entry = register("DPN4_32", "mine", url="http://127.0.0.1:1/w.weights.h5",
    ...                  sha256="0" * 64, input_shape=(256, 192, 3), num_keypoints=17)
    >>> get_entry("DPN4_32.mine").num_keypoints
    17
    >>> unregister("DPN4_32.mine")
    """
    for value, arg in ((arch, "arch"), (tag, "tag"), (url, "url")):
        if not isinstance(value, str) or not value:
            raise ValueError(f"`{arg}` must be a non-empty string. Received: {arg}={value!r}")
    if "." in arch or "." in tag:
        raise ValueError(
            f"`arch` and `tag` must not contain '.'. Received: arch={arch!r}, tag={tag!r}")
    if (not isinstance(sha256, str) or len(sha256) != 64
            or any(ch not in "0123456789abcdefABCDEF" for ch in sha256)):
        raise ValueError(f"`sha256` must be 64 hex digits. Received: sha256={sha256!r}")
    if (isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int)
            or num_keypoints < 1):
        raise ValueError(
            f"`num_keypoints` must be an int >= 1. Received: num_keypoints={num_keypoints!r}")
    if input_shape is None or len(tuple(input_shape)) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels). "
            f"Received: input_shape={input_shape!r}")
    entry = WeightsEntry(arch=arch, tag=tag, url=url, sha256=sha256.lower(),
                         input_shape=tuple(input_shape), num_keypoints=num_keypoints,
                         keypoints=keypoints, metrics=dict(metrics or {}),
                         preprocessing=preprocessing, file_name=file_name)
    if entry.key in _REGISTRY and not overwrite:
        raise ValueError(
            f"Weights {entry.key!r} are already registered; pass overwrite=True to replace "
            f"them. Received: arch={arch!r}, tag={tag!r}")
    _REGISTRY[entry.key] = entry
    return entry


def unregister(key):
    """Removes ``"arch.tag"`` from the registry (no error if absent)."""
    _REGISTRY.pop(key, None)


def get_entry(key):
    """Returns the :class:`WeightsEntry` registered as ``"arch.tag"``.

    Raises:
        ValueError: if nothing is registered under ``key``.
    """
    if key not in _REGISTRY:
        raise ValueError(
            f"No weights registered as {key!r}. Registered: {list_entries() or 'none'}. "
            f"Received: key={key!r}")
    return _REGISTRY[key]


def list_entries(arch=None):
    """Sorted ``"arch.tag"`` keys, optionally only those of one architecture."""
    return sorted(k for k, e in _REGISTRY.items() if arch is None or e.arch == arch)


def _is_path_like(weights):
    text = os.fspath(weights)
    return os.sep in text or text.endswith(WEIGHT_SUFFIXES) or text.endswith(".h5")


def validate_weights_argument(arch, weights):
    """Checks ``weights`` before any layer is built.

    Accepts None, a tag registered for ``arch``, or an existing
    ``.weights.h5`` / ``.keras`` file.

    Raises:
        ValueError: naming ``weights`` and what it received.
    """
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, a registered tag or a path to a .weights.h5 / .keras "
            f"file. Received: weights={weights!r}")
    text = os.fspath(weights)
    if os.path.isfile(text):
        if not text.endswith(WEIGHT_SUFFIXES):
            raise ValueError(
                f"`weights` file must end in {' or '.join(WEIGHT_SUFFIXES)}. "
                f"Received: weights={weights!r}")
        return
    if f"{arch}.{text}" in _REGISTRY:
        return
    how = (f"Pass the path of a .weights.h5 or .keras file (weights='/path/to/{arch}.weights.h5'), "
           f"or register a release first: keras_dpn.weights.register({arch!r}, {text!r}, "
           "url=..., sha256=..., input_shape=..., num_keypoints=...).")
    if text in KNOWN_TAGS:
        raise ValueError(
            f"No release of `{arch}.{text}` is registered: no {text.upper()}-trained weights "
            f"for {arch} have been published. {how} Received: weights={weights!r}")
    if _is_path_like(text):
        raise ValueError(f"`weights` file not found. Received: weights={weights!r}")
    registered = ", ".join(list_entries(arch)) or f"none registered for {arch}"
    raise ValueError(
        f"`weights` must be None, a registered tag ({registered}) or an existing "
        f".weights.h5 / .keras file. {how} Received: weights={weights!r}")


def _cache_dir():
    """The Keras cache root, created if needed.

    Read at call time (Keras reads KERAS_HOME once, at import). Created here
    because ``get_file`` silently falls back to ``/tmp/.keras`` when the root
    does not exist yet; only an unwritable root takes that fallback.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    home = os.path.expanduser(home)
    try:
        os.makedirs(os.path.join(home, CACHE_SUBDIR), exist_ok=True)
    except OSError:
        pass
    if not os.access(home, os.W_OK):
        home = os.path.join(tempfile.gettempdir(), ".keras")
    return home


def _remove_quietly(path):
    if path and os.path.exists(path):
        os.remove(path)


def fetch(entry):
    """Downloads ``entry`` into the Keras cache (or reuses a verified copy).

    Returns:
        The local path.

    Raises:
        ValueError: unreachable URL, truncated download or sha256 mismatch;
            nothing is left in the cache.
    """
    cache_dir = _cache_dir()
    target = os.path.join(cache_dir, CACHE_SUBDIR, entry.cache_file_name)
    try:
        return keras.utils.get_file(entry.cache_file_name, origin=entry.url,
                                    file_hash=entry.sha256, hash_algorithm="sha256",
                                    cache_dir=cache_dir, cache_subdir=CACHE_SUBDIR)
    except BaseException as e:
        # get_file removes a failed download but keeps one whose hash is wrong.
        _remove_quietly(target)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ValueError(
            f"Could not fetch the weights {entry.key!r} from {entry.url}: {e} "
            "(check the URL and the registered sha256; nothing was kept in the cache "
            f"{os.path.dirname(target)}). Received: weights={entry.tag!r}") from e


def _read_h5_layout(h5_source):
    import h5py

    layout = {}
    with h5py.File(h5_source, "r") as f:
        def visit(name, obj):
            # Only the layers: a `.keras` file may also hold optimizer state.
            if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
                layout[name] = tuple(obj.shape)
        f.visititems(visit)
    return layout


def file_layout(path):
    """``{variable path: shape}`` of a ``.weights.h5`` or ``.keras`` file."""
    path = os.fspath(path)
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            return _read_h5_layout(io.BytesIO(archive.read("model.weights.h5")))
    return _read_h5_layout(path)


def model_layout(model):
    """``{variable path: shape}`` that ``model.save_weights`` would write."""
    tmp = tempfile.mkdtemp(prefix="keras_dpn_layout-")
    try:
        path = os.path.join(tmp, "model.weights.h5")
        model.save_weights(path)
        return _read_h5_layout(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_layout(model, path, arch, num_keypoints):
    """Raises a clear ValueError when ``path`` does not fit ``model``."""
    try:
        found = file_layout(path)
    except Exception as e:
        raise ValueError(
            f"The weights file cannot be read (truncated or not a Keras weights file): {e}. "
            f"Received: weights={os.fspath(path)!r}") from e
    expected = model_layout(model)
    if found == expected:
        return
    differing = sorted(k for k in expected if k in found and found[k] != expected[k])
    if set(found) == set(expected) and differing and all(
            len(found[k]) == len(expected[k]) and found[k][:-1] == expected[k][:-1]
            and expected[k][-1] == num_keypoints for k in differing):
        # Only the head's output channels differ: the keypoint count.
        raise ValueError(
            f"The weights file holds a head for {found[differing[0]][-1]} keypoints but the "
            f"model was built with num_keypoints={num_keypoints}. Build it with "
            f"num_keypoints={found[differing[0]][-1]}, or load the file into that model and "
            f"reuse its backbone. Received: weights={os.fspath(path)!r}")
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    details = []
    if missing or extra:
        details.append(f"{len(expected)} variables expected, {len(found)} in the file")
    if differing:
        k = differing[0]
        details.append(f"{len(differing)} shapes differ, e.g. {k}: file {found[k]} vs model "
                       f"{expected[k]}")
    raise ValueError(
        f"The weights file does not match the {arch} architecture ({'; '.join(details)}). "
        f"It was probably saved from another model variant. Received: weights={os.fspath(path)!r}")


def resolve(arch, weights, num_keypoints=None):
    """Local path for ``weights`` (a file path, or a tag fetched into the cache).

    Returns:
        ``(path, entry)``; ``entry`` is None for a user-given file.
    """
    validate_weights_argument(arch, weights)
    text = os.fspath(weights)
    if os.path.isfile(text):
        return text, None
    entry = get_entry(f"{arch}.{text}")
    if num_keypoints is not None and entry.num_keypoints != num_keypoints:
        raise ValueError(
            f"The weights {entry.key!r} have a head for {entry.num_keypoints} keypoints "
            f"({entry.keypoints}); build the model with num_keypoints={entry.num_keypoints}. "
            f"Received: num_keypoints={num_keypoints!r}")
    return fetch(entry), entry


def load_weights(model, weights, arch, num_keypoints, input_shape):
    """Resolves, verifies and loads ``weights`` into ``model``.

    Args:
        model: the built model (with its heatmap head).
        weights: a registered tag or a path to a ``.weights.h5`` / ``.keras`` file.
        arch: variant name the weights must belong to, e.g. ``"DPN4_32"``.
        num_keypoints: heatmap channels of ``model``.
        input_shape: the model's input shape (weights are fully convolutional,
            so a size other than the training size only warns).

    Raises:
        ValueError: unknown tag, failed download, or a file that does not fit
            the architecture or keypoint count. A cached file that fails is
            removed.
    """
    path, entry = resolve(arch, weights, num_keypoints)
    try:
        verify_layout(model, path, arch, num_keypoints)
        model.load_weights(path)
    except BaseException:
        if entry is not None:
            _remove_quietly(path)
        raise
    if entry is not None and tuple(input_shape[:2]) != tuple(entry.input_shape[:2]):
        import warnings

        warnings.warn(
            f"The weights {entry.key!r} were trained at input_shape={entry.input_shape}; the "
            f"model takes {tuple(input_shape)}. Accuracy may differ.", stacklevel=3)
    return model
