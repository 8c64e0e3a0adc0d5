"""Pretrained-weight registry: ``arch.tag`` entries, download, verification.

Each entry (e.g. ``"DPN4_32.coco"``) records where a release lives (a
``.weights.h5`` / ``.keras`` file, or a preset archive: see
:mod:`keras_dpn.hub.presets`), its sha256, and the contract it was trained under:
input size, keypoint set and count, the builder's architecture arguments
(``resolution``, ``dilation_schedule``, ...), preprocessing, and the metrics
it reaches. Builders accept ``weights=None``, a registered tag, a path to a
``.weights.h5`` / ``.keras`` file, or a preset (folder, ``.tar.gz`` / ``.zip``
archive or URL of one).

**The registry ships empty.** No COCO- or MPII-trained DPN weights have been
released; entries are never invented. ``keras-dpn publish RUN_DIR --name NAME``
turns a training run into a preset archive and prints the entry to register::

    import keras_dpn
    keras_dpn.hub.weights.register(
        "DPN4_32", "coco", url="https://example.org/dpn4_32_coco.tar.gz",
        sha256="<64 hex digits>", input_shape=(256, 192, 3), num_keypoints=17,
        config={"resolution": "medium", "dilation_schedule": "pyramid"},
        metrics={"coco_val_AP": 0.70})
    model = keras_dpn.DPN4_32(weights="coco")

The architecture arguments are compared with the model's before anything is
downloaded: the shapes of a ``resolution="high"`` or a
``dilation_schedule="reversed"`` DPN are those of the default one, so only
the recorded arguments keep such weights out of a default model.

Downloads go through ``keras.utils.get_file`` into ``$KERAS_HOME/keras_dpn``
and are checked against the sha256; a file that fails any check (hash,
truncation, architecture, keypoint count) is removed from the cache so that
the next attempt starts clean.
"""

import dataclasses
import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

import keras

from keras_dpn.core.keypoints import validate_num_keypoints
# The builder arguments live with the builders (models import nothing above
# them); they are part of this module's API too.
from keras_dpn.models.config import (  # noqa: F401
    ARCHITECTURE_ARGS, attach_builder_config, builder_config, builder_defaults,
    check_builder_config, complete_config)

# Tags a user may reasonably expect (the paper's datasets); they get a
# "not released" error instead of "unknown" when nothing is registered.
KNOWN_TAGS = ("coco", "mpii")
WEIGHT_SUFFIXES = (".weights.h5", ".keras")
# Preset archives (keras_dpn.hub.presets); kept here so that the checks below need no import.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
URL_SCHEMES = ("http://", "https://", "file://")
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
        keypoints: keypoint set name (see :mod:`keras_dpn.core.keypoints`).
        metrics: what the weights reach, e.g. ``{"coco_val_AP": 0.70}``.
        preprocessing: how images must be prepared.
        file_name: name in the cache; defaults to ``{arch}_{tag}{suffix}``.
        config: the builder's architecture arguments (``resolution``,
            ``dilation_schedule``, ``num_blocks``, ``kernel_size`` as the
            variant takes them), completed with the variant's defaults.
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
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self):
        return f"{self.arch}.{self.tag}"

    @property
    def is_archive(self):
        """True when the URL names a preset archive rather than a weights file."""
        return url_path(self.url).endswith(ARCHIVE_SUFFIXES)

    @property
    def cache_file_name(self):
        if self.file_name:
            return self.file_name
        path = url_path(self.url)
        suffix = next((x for x in ARCHIVE_SUFFIXES + (".keras",) if path.endswith(x)),
                      ".weights.h5")
        return f"{self.arch}_{self.tag}{suffix}"

    @property
    def arguments(self):
        """The builder arguments the weights were trained with."""
        return {"input_shape": list(self.input_shape), "num_keypoints": self.num_keypoints,
                **self.config}


def url_path(url):
    return url.split("#", 1)[0].split("?", 1)[0]


def check_url(url, arg_name="url"):
    """Raises a one-line ValueError unless ``url`` can be downloaded from.

    An ``http://`` / ``https://`` URL with a host, or a ``file://`` URL with
    an absolute path (for local tests); no spaces.

    Example:
    >>> check_url("https://example.org/dpn.tar.gz")
    >>> check_url("not a url")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `url` must be an http://, https:// or file:// URL ... Received: url='not a url'
    """
    import urllib.parse

    ok = isinstance(url, str) and url == url.strip() and not any(c.isspace() for c in url)
    if ok:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            parts.port  # noqa: B018  raises on a port that is not a number
        except ValueError:
            ok = False
        if scheme in ("http", "https"):
            ok = ok and bool(parts.hostname)
        elif scheme == "file":
            ok = ok and parts.netloc in ("", "localhost") and parts.path.startswith("/")
        else:
            ok = False
    if not ok:
        raise ValueError(f"`{arg_name}` must be an http://, https:// or file:// URL with a "
                         "host (https://HOST/PATH; file:///ABSOLUTE/PATH for local tests). "
                         f"Received: {arg_name}={url!r}")


_REGISTRY: Dict[str, WeightsEntry] = {}


def register(arch, tag, url, sha256, input_shape, num_keypoints, keypoints="coco",
             metrics=None, preprocessing=DEFAULT_PREPROCESSING, file_name=None,
             overwrite=False, config=None):
    """Registers a weights release as ``"{arch}.{tag}"``.

    Args:
        arch: model variant, e.g. ``"DPN4_32"`` or ``"HRNetW32"``.
        tag: release tag, passed later as ``weights=tag``.
        url: download address (``http(s)://`` or ``file://``) of a
            ``.weights.h5`` / ``.keras`` file or of a preset archive
            (``.tar.gz``, ``.tgz``, ``.zip``; ``keras-dpn publish`` writes one).
        sha256: 64-hex-digit sha256 of the file.
        input_shape: ``(H, W, 3)`` the weights were trained at.
        num_keypoints: heatmap channels of the head.
        keypoints: keypoint set name, e.g. ``"coco"`` or ``"mpii"``.
        metrics: optional dict of metrics the weights reach.
        preprocessing: how images must be prepared.
        file_name: optional name in the cache.
        overwrite: replace an existing entry with the same key.
        config: the builder's architecture arguments the weights were trained
            with, e.g. ``{"resolution": "high"}``; those left out are the
            variant's defaults. A model built with other values refuses the
            weights before any download.

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
    check_url(url)
    if (not isinstance(sha256, str) or len(sha256) != 64
            or any(ch not in "0123456789abcdefABCDEF" for ch in sha256)):
        raise ValueError(f"`sha256` must be 64 hex digits. Received: sha256={sha256!r}")
    validate_num_keypoints(num_keypoints)
    if (not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                       for s in input_shape) or input_shape[2] != 3):
        raise ValueError(
            "`input_shape` must be (height, width, 3) of positive integers. "
            f"Received: input_shape={input_shape!r}")
    for value, arg, kind in ((metrics, "metrics", dict), (config, "config", dict),
                             (keypoints, "keypoints", (str, dict)),
                             (preprocessing, "preprocessing", str), (file_name, "file_name", str)):
        if value is not None and not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ValueError(f"`{arg}` must be a {names}. Received: {arg}={value!r}")
    if file_name is not None and (not file_name or os.path.basename(file_name) != file_name
                                  or file_name in (".", "..")):
        raise ValueError("`file_name` must be a plain file name (it names the file in the "
                         f"cache). Received: file_name={file_name!r}")
    from keras_dpn.models.registry import model_info
    model_info(arch, arg_name="arch")
    entry = WeightsEntry(arch=arch, tag=tag, url=url, sha256=sha256.lower(),
                         input_shape=tuple(input_shape), num_keypoints=num_keypoints,
                         keypoints=keypoints, metrics=dict(metrics or {}),
                         preprocessing=preprocessing, file_name=file_name,
                         config=complete_config(arch, config, arg_name="config"))
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


def is_registered(key):
    """True when ``"arch.tag"`` is registered."""
    return key in _REGISTRY


def list_entries(arch=None):
    """Sorted ``"arch.tag"`` keys, optionally only those of one architecture."""
    return sorted(k for k, e in _REGISTRY.items() if arch is None or e.arch == arch)


REGISTER_KEYS = ("arch", "tag", "url", "sha256", "input_shape", "num_keypoints", "keypoints",
                 "metrics", "preprocessing", "file_name", "config")


def load_registry(path, overwrite=False):
    """Registers every entry of a JSON registry file.

    The file holds a list of objects with :func:`register`'s arguments (or
    ``{"entries": [...]}``); ``keras-dpn publish`` writes one entry per
    release as ``NAME.registry.json``.

    Returns:
        The registered :class:`WeightsEntry` objects.

    Raises:
        ValueError: unreadable file or a bad entry, naming the file; nothing
            is registered then.
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read the registry file ({e}). Received: path={path!r}") from e
    items = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("A registry file holds a list of entries (objects with register()'s "
                         f"arguments) or {{\"entries\": [...]}}. Received: path={path!r}")
    # All or nothing: a bad entry rolls back the ones registered before it.
    saved = dict(_REGISTRY)
    done = []
    try:
        for i, item in enumerate(items):
            unknown = sorted(set(item) - set(REGISTER_KEYS))
            if unknown:
                raise ValueError(f"Entry {i} of the registry file has unknown keys {unknown}; "
                                 f"expected some of {list(REGISTER_KEYS)}. Received: path={path!r}")
            try:
                done.append(register(**item, overwrite=overwrite))
            except (TypeError, ValueError) as e:
                raise ValueError(f"Entry {i} of the registry file is invalid: {e} "
                                 f"Received: path={path!r}") from e
    except BaseException:
        _REGISTRY.clear()
        _REGISTRY.update(saved)
        raise
    return done


def is_url(text):
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def is_preset_source(weights):
    """True for a preset folder, a preset archive file or a URL of an archive."""
    if not isinstance(weights, (str, os.PathLike)):
        return False
    text = os.fspath(weights)
    if is_url(text):
        return url_path(text).endswith(ARCHIVE_SUFFIXES)
    if os.path.isdir(text):
        return True
    return os.path.isfile(text) and text.endswith(ARCHIVE_SUFFIXES)


def cache_dir():
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


def remove_quietly(path):
    """Removes a file if it exists (a failed download's leftover)."""
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
    root = cache_dir()
    target = os.path.join(root, CACHE_SUBDIR, entry.cache_file_name)
    try:
        return keras.utils.get_file(entry.cache_file_name, origin=entry.url,
                                    file_hash=entry.sha256, hash_algorithm="sha256",
                                    cache_dir=root, cache_subdir=CACHE_SUBDIR)
    except BaseException as e:
        # get_file removes a failed download but keeps one whose hash is wrong.
        remove_quietly(target)
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
