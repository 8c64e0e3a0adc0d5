"""Pretrained-weight registry: ``arch.tag`` entries, download, verification.

Each entry (e.g. ``"DPN4_32.coco"``) records where a release lives (a
``.weights.h5`` / ``.keras`` file, or a preset archive: see
:mod:`keras_dpn.presets`), its sha256, and the contract it was trained under:
input size, keypoint set and count, the builder's architecture arguments
(``resolution``, ``dilation_schedule``, ...), preprocessing, and the metrics
it reaches. Builders accept ``weights=None``, a registered tag, a path to a
``.weights.h5`` / ``.keras`` file, or a preset (folder, ``.tar.gz`` / ``.zip``
archive or URL of one).

**The registry ships empty.** No COCO- or MPII-trained DPN weights have been
released; entries are never invented. ``keras-dpn publish RUN_DIR --name NAME``
turns a training run into a preset archive and prints the entry to register::

    import keras_dpn
    keras_dpn.weights.register(
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
import inspect
import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

import keras

from keras_dpn.keypoints import validate_num_keypoints

# Tags a user may reasonably expect (the paper's datasets); they get a
# "not released" error instead of "unknown" when nothing is registered.
KNOWN_TAGS = ("coco", "mpii")
WEIGHT_SUFFIXES = (".weights.h5", ".keras")
# Preset archives (keras_dpn.presets); kept here so that the checks below need no import.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
URL_SCHEMES = ("http://", "https://", "file://")
CACHE_SUBDIR = "keras_dpn"
# Builder arguments that the weights' variable shapes do not reveal, or that a
# registry entry records besides input size and keypoint count: they change
# strides or dilation rates, not shapes, so only the recorded values keep
# weights out of a model built otherwise.
ARCHITECTURE_ARGS = ("resolution", "dilation_schedule", "num_blocks", "kernel_size")
# The attribute under which builders leave their arguments on the model.
_BUILDER_ATTR = "_keras_dpn_builder"

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
        return _url_path(self.url).endswith(ARCHIVE_SUFFIXES)

    @property
    def cache_file_name(self):
        if self.file_name:
            return self.file_name
        path = _url_path(self.url)
        suffix = next((x for x in ARCHIVE_SUFFIXES + (".keras",) if path.endswith(x)),
                      ".weights.h5")
        return f"{self.arch}_{self.tag}{suffix}"

    @property
    def arguments(self):
        """The builder arguments the weights were trained with."""
        return {"input_shape": list(self.input_shape), "num_keypoints": self.num_keypoints,
                **self.config}


def _url_path(url):
    return url.split("#", 1)[0].split("?", 1)[0]


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
    if (not isinstance(sha256, str) or len(sha256) != 64
            or any(ch not in "0123456789abcdefABCDEF" for ch in sha256)):
        raise ValueError(f"`sha256` must be 64 hex digits. Received: sha256={sha256!r}")
    validate_num_keypoints(num_keypoints)
    if input_shape is None or len(tuple(input_shape)) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels). "
            f"Received: input_shape={input_shape!r}")
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


# ---------------------------------------------------------------------------
# Builder arguments: what the shapes do not tell.


def builder_defaults(arch):
    """Default values of the architecture arguments a variant takes.

    A registered variant either lists its arguments (``HRNetW32``) or is a
    one-line call of its family's builder with ``**kwargs`` (``DPN4_32`` ->
    ``DPN``): then the builder it calls gives them.

    Returns:
        ``{name: default}`` for the :data:`ARCHITECTURE_ARGS` the variant takes.
    """
    import keras_dpn.models  # noqa: F401  registers the variants
    from keras_dpn.models.registry import model_info

    fn = model_info(arch, arg_name="arch").constructor
    params = dict(inspect.signature(fn).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for name in fn.__code__.co_names:
            target = fn.__globals__.get(name)
            if inspect.isfunction(target) and target is not fn:
                params = {**inspect.signature(target).parameters, **params}
                break
    return {k: params[k].default for k in ARCHITECTURE_ARGS
            if k in params and params[k].default is not inspect.Parameter.empty}


def _jsonable(value):
    return json.loads(json.dumps(value))


def complete_config(arch, config, arg_name="config"):
    """``config`` checked against the variant's arguments and completed with its defaults.

    Raises:
        ValueError: an argument the variant does not take, naming ``arg_name``.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"`{arg_name}` must be a dict of builder arguments. "
                         f"Received: {arg_name}={config!r}")
    defaults = builder_defaults(arch)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(
            f"{arch} takes no architecture argument {unknown} (its arguments: "
            f"{sorted(defaults) or 'none'}). Received: {arg_name}={config!r}")
    return _jsonable({**defaults, **config})


def attach_builder_config(model, arch, num_keypoints, input_shape, config=None):
    """Leaves the builder's arguments on ``model`` (read by :func:`builder_config`).

    Kept outside Keras' attribute tracking, so saving, checkpoints and exports
    do not see it.
    """
    value = {"variant": arch,
             "arguments": _jsonable({"input_shape": list(input_shape),
                                     "num_keypoints": num_keypoints, **(config or {})})}
    object.__setattr__(model, _BUILDER_ATTR, value)
    return model


def builder_config(model):
    """``{"variant": ..., "arguments": {...}}`` of a model built by a keras_dpn builder.

    The arguments are the ones :func:`keras_dpn.get_model` rebuilds the model
    from (input shape, keypoint count, resolution, dilation schedule, ...).
    None for any other model (e.g. one loaded from a ``.keras`` file).

    Example:
    >>> import keras_dpn
    >>> cfg = builder_config(keras_dpn.DPN1_32(input_shape=(64, 48, 3), resolution="high"))
    >>> cfg["variant"], cfg["arguments"]["resolution"], cfg["arguments"]["input_shape"]
    ('DPN1_32', 'high', [64, 48, 3])
    """
    value = getattr(model, _BUILDER_ATTR, None)
    return None if value is None else json.loads(json.dumps(value))


def check_builder_config(source, arch, arguments, model_arch, model_config, received):
    """Raises when weights trained as ``arch(**arguments)`` do not fit the model.

    Args:
        source: how the weights are named in the message, e.g. ``"'DPN4_64.coco'"``.
        arch, arguments: what the weights were trained with.
        model_arch: the model's variant.
        model_config: the model's architecture arguments (None: unknown, only
            the variant is compared).
        received: the ``weights`` argument, for the message.
    """
    if arch != model_arch:
        raise ValueError(
            f"The weights {source} belong to {arch}, not {model_arch}. Build "
            f"keras_dpn.{arch}(...) instead, or use keras_dpn.presets.from_preset. "
            f"Received: weights={received!r}")
    if model_config is None:
        return
    defaults = builder_defaults(arch)
    expected = _jsonable({**defaults, **{k: v for k, v in arguments.items()
                                         if k in ARCHITECTURE_ARGS}})
    actual = _jsonable({**defaults, **model_config})
    differ = [k for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]
    if differ:
        trained = ", ".join(f"{k}={expected.get(k)!r}" for k in differ)
        built = ", ".join(f"{k}={actual.get(k)!r}" for k in differ)
        raise ValueError(
            f"The weights {source} were trained with {arch}({trained}) but the model is built "
            f"with {built}: same shapes, other strides or dilations, so they would load and "
            f"predict nonsense. Build keras_dpn.{arch}({trained}, weights=...). "
            f"Received: weights={received!r}")


def _is_path_like(weights):
    text = os.fspath(weights)
    return (os.sep in text or text.endswith(WEIGHT_SUFFIXES + ARCHIVE_SUFFIXES)
            or text.endswith(".h5"))


def is_url(text):
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def is_preset_source(weights):
    """True for a preset folder, a preset archive file or a URL of an archive."""
    if not isinstance(weights, (str, os.PathLike)):
        return False
    text = os.fspath(weights)
    if is_url(text):
        return _url_path(text).endswith(ARCHIVE_SUFFIXES)
    if os.path.isdir(text):
        return True
    return os.path.isfile(text) and text.endswith(ARCHIVE_SUFFIXES)


def validate_weights_argument(arch, weights):
    """Checks ``weights`` before any layer is built.

    Accepts None, a tag registered for ``arch``, an existing ``.weights.h5`` /
    ``.keras`` file, or a preset: a folder, a ``.tar.gz`` / ``.tgz`` / ``.zip``
    archive of one, or an ``http(s)://`` / ``file://`` URL of such an archive
    (see :mod:`keras_dpn.presets`). A local preset is verified here (files,
    config, variant); a URL when it is downloaded.

    Raises:
        ValueError: naming ``weights`` and what it received.
    """
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, a registered tag, a path to a .weights.h5 / .keras "
            f"file or a preset (folder, archive or URL). Received: weights={weights!r}")
    text = os.fspath(weights)
    if is_url(text):
        if not _url_path(text).endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"A `weights` URL must name a preset archive ({', '.join(ARCHIVE_SUFFIXES)}); "
                "register a weights file with keras_dpn.weights.register(...) instead. "
                f"Received: weights={weights!r}")
        return
    if is_preset_source(text):
        # A local preset is verified (and an archive unpacked into the cache)
        # now, before any layer is built; load_weights compares the rest.
        from keras_dpn import presets
        preset = presets.get_preset(text)
        check_builder_config(f"of the preset {preset.path}", preset.variant, preset.arguments,
                             arch, None, text)
        return
    if os.path.isfile(text):
        if not text.endswith(WEIGHT_SUFFIXES):
            raise ValueError(
                f"`weights` file must end in {' or '.join(WEIGHT_SUFFIXES)}, or be a preset "
                f"archive ({', '.join(ARCHIVE_SUFFIXES)}). Received: weights={weights!r}")
        return
    if f"{arch}.{text}" in _REGISTRY:
        return
    how = (f"Pass the path of a .weights.h5 or .keras file (weights='/path/to/{arch}.weights.h5') "
           "or of a preset (folder, .tar.gz/.zip or its URL), or register a release first: "
           f"keras_dpn.weights.register({arch!r}, {text!r}, "
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


def _remove_tree_quietly(path):
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def resolve(arch, weights, num_keypoints=None, config=None):
    """Local path for ``weights`` (a file path, a preset, or a tag fetched into the cache).

    Everything that can be compared without the file (variant, keypoint
    count, architecture arguments of a registry entry) is compared before any
    download.

    Args:
        arch: the model's variant.
        weights: see :func:`validate_weights_argument`.
        num_keypoints: the model's heatmap channels (None: not compared).
        config: the model's architecture arguments (None: not compared).

    Returns:
        ``(path, entry, preset)``: the ``.weights.h5`` / ``.keras`` file to
        load, the registry entry (None for a path) and the
        :class:`keras_dpn.presets.Preset` (None for a bare weights file).
    """
    validate_weights_argument(arch, weights)
    text = os.fspath(weights)
    entry = preset = None
    if is_preset_source(text):
        from keras_dpn import presets
        preset = presets.get_preset(text)
        source = f"of the preset {preset.path}"
        check_builder_config(source, preset.variant, preset.arguments, arch, config, text)
        _check_keypoints(source, preset.arguments["num_keypoints"], preset.keypoints,
                         num_keypoints)
        return preset.weights_path, None, preset
    if os.path.isfile(text):
        return text, None, None
    entry = get_entry(f"{arch}.{text}")
    _check_keypoints(repr(entry.key), entry.num_keypoints, entry.keypoints, num_keypoints)
    check_builder_config(repr(entry.key), entry.arch, entry.arguments, arch, config, text)
    path = fetch(entry)
    if not entry.is_archive:
        return path, entry, None
    from keras_dpn import presets
    try:
        preset = presets.unpack(path, sha256=entry.sha256, name=f"{entry.arch}_{entry.tag}")
        presets.check_entry(preset, entry)
    except BaseException:
        _remove_quietly(path)
        raise
    return preset.weights_path, entry, preset


def _check_keypoints(source, found, keypoints, num_keypoints):
    if num_keypoints is not None and found != num_keypoints:
        raise ValueError(
            f"The weights {source} have a head for {found} keypoints ({keypoints}); "
            f"build the model with num_keypoints={found}. "
            f"Received: num_keypoints={num_keypoints!r}")


def load_weights(model, weights, arch, num_keypoints, input_shape, config=None):
    """Resolves, verifies and loads ``weights`` into ``model``.

    Args:
        model: the built model (with its heatmap head).
        weights: a registered tag, a path to a ``.weights.h5`` / ``.keras``
            file, or a preset (folder, archive or URL).
        arch: variant name the weights must belong to, e.g. ``"DPN4_32"``.
        num_keypoints: heatmap channels of ``model``.
        input_shape: the model's input shape (weights are fully convolutional,
            so a size other than the training size only warns).
        config: the model's architecture arguments (``resolution``,
            ``dilation_schedule``, ...), compared with those the weights
            record.

    Raises:
        ValueError: unknown tag, failed download, a preset with a missing or
            altered file, or weights that do not fit the architecture, its
            arguments or the keypoint count. A cached file that fails is
            removed.
    """
    path, entry, preset = resolve(arch, weights, num_keypoints, config)
    try:
        verify_layout(model, path, arch, num_keypoints)
        model.load_weights(path)
    except BaseException:
        if entry is not None:
            _remove_quietly(os.path.join(_cache_dir(), CACHE_SUBDIR, entry.cache_file_name))
            if preset is not None:
                _remove_tree_quietly(preset.path)
            else:
                _remove_quietly(path)
        raise
    trained = (tuple(entry.input_shape) if entry is not None
               else tuple(preset.arguments["input_shape"]) if preset is not None else None)
    if trained is not None and tuple(input_shape[:2]) != trained[:2]:
        import warnings

        what = entry.key if entry is not None else preset.path
        warnings.warn(
            f"The weights {what!r} were trained at input_shape={trained}; the "
            f"model takes {tuple(input_shape)}. Accuracy may differ.", stacklevel=3)
    return model
