"""Preset folders: a released model as a few files, in the layout keras-hub users know.

::

    NAME/
      config.json        the builder's arguments: variant, input shape, keypoint count and
                         set, resolution, dilation schedule, ... (enough to rebuild it)
      model.weights.h5   the weights
      metadata.json      keypoint spec, preprocessing, training data, metrics (COCO AP /
                         PCKh, the per-format table when measured), package versions, and
                         the sha256 of every other file
      README.md          the model card
      export/            optional: SavedModel, TFLite, ONNX files of the same weights

A preset is loaded from its folder, from a ``.tar.gz`` / ``.tgz`` / ``.zip``
archive of it, from an ``http(s)://`` or ``file://`` URL of such an archive
(downloaded with ``keras.utils.get_file``; an ``http(s)://`` URL must end in
``#sha256=<hex>``, the digest ``keras-dpn publish`` prints, unless unverified
downloads are allowed: ``allow_unverified=True`` or the environment variable
``KERAS_DPN_ALLOW_UNVERIFIED=1``, which prints the digest received), or from a
registered ``"arch.tag"`` whose URL is an archive (verified by the registered
sha256)::

    model = keras_dpn.DPN4_32(weights="presets/dpn4_32_coco")        # the builder checks it
    model = keras_dpn.hub.presets.from_preset("presets/dpn4_32_coco.tar.gz")  # built from config.json
    estimator = keras_dpn.PoseEstimator.from_preset("DPN4_32.coco")

Before anything is loaded every file listed in ``metadata.json`` is hashed
and compared, and ``config.json`` is checked (known variant, arguments the
variant takes, a keypoint set of the head's size). Archives are unpacked
into ``$KERAS_HOME/keras_dpn/presets/`` member by member: absolute paths,
``..`` and links are refused, and the folder appears there (renamed into
place) only once it is complete and verified.

``keras-dpn publish RUN_DIR --name NAME`` makes a preset from a training run
(:mod:`keras_dpn.hub.publish`); :func:`save_preset` makes one from a model.
"""

import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import zipfile
from typing import Any, Dict

from keras_dpn.core import io_utils
from keras_dpn._version import __version__
from keras_dpn.hub import weights as weights_lib
from keras_dpn.core.keypoints import (KeypointSpec, check_keypoint_count, get_keypoint_spec,
                                 keypoint_source)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
EXPORT_DIR = "export"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
FORMAT = "keras_dpn.preset"
FORMAT_VERSION = 1
ARCHIVE_SUFFIXES = weights_lib.ARCHIVE_SUFFIXES
PRESETS_SUBDIR = "presets"
# A preset is a few MB (weights) to a few hundred MB (every export format); an
# archive that unpacks to more is refused rather than allowed to fill the disk.
MAX_UNPACKED_BYTES = 4 << 30
_CHUNK = 1 << 20
# Opts in to http(s) preset URLs without "#sha256=" (for a builder's weights=URL,
# which has no argument for it).
ALLOW_UNVERIFIED_ENV = "KERAS_DPN_ALLOW_UNVERIFIED"


def sha256_file(path):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fail(message, source):
    raise ValueError(f"{message} Received: preset={os.fspath(source)!r}")


def _read_json(path, source):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        _fail(f"Preset file {path} cannot be read as JSON ({e}).", source)


def _relative(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/")


def _safe_relpath(name, source):
    """A member or listed file name as a relative path inside the preset, or an error."""
    text = name.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ".." in parts:
        _fail(f"The preset names a file outside its folder: {name!r} (absolute path or '..'); "
              "nothing was unpacked.", source)
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A verified preset folder.

    Attributes:
        path: the folder.
        config: ``config.json``.
        metadata: ``metadata.json``.
    """

    path: str
    config: Dict[str, Any]
    metadata: Dict[str, Any]

    @property
    def variant(self):
        """The registered variant, e.g. ``"DPN4_32"``."""
        return self.config["variant"]

    @property
    def arguments(self):
        """Builder arguments: ``input_shape``, ``num_keypoints`` and the architecture ones."""
        return dict(self.config["arguments"])

    @property
    def keypoints(self):
        """The keypoint set's name, e.g. ``"coco"``."""
        return self.config["keypoints"]

    @property
    def weights_path(self):
        return os.path.join(self.path, WEIGHTS_FILE)

    @property
    def files(self):
        """``{relative path: sha256}`` of every file but ``metadata.json``."""
        return dict(self.metadata["files"])

    def keypoint_spec(self):
        """The :class:`~keras_dpn.KeypointSpec` the head predicts.

        A built-in set by name; a custom set is rebuilt from ``metadata.json``.
        """
        recorded = self.metadata.get("keypoints") or {}
        try:
            spec = get_keypoint_spec(self.keypoints)
        except ValueError:
            spec = None
        if spec is not None and (not recorded.get("names")
                                 or list(recorded["names"]) == list(spec.names)):
            return spec
        try:
            return KeypointSpec.from_dict(recorded, source="metadata.json `keypoints`")
        except ValueError as e:
            _fail(f"metadata.json describes no usable keypoint set {self.keypoints!r} ({e}).",
                  self.path)

    @property
    def export_files(self):
        """``{format: path}`` of the exported files the preset carries (verified)."""
        meta = os.path.join(self.path, EXPORT_DIR, METADATA_FILE)
        if f"{EXPORT_DIR}/{METADATA_FILE}" not in self.files:
            return {}
        listed = _read_json(meta, self.path)
        listed = listed.get("files") if isinstance(listed, dict) else None
        if not isinstance(listed, dict):
            _fail(f"{EXPORT_DIR}/{METADATA_FILE} holds no `files` object.", self.path)
        out = {}
        for fmt, name in listed.items():
            rel = f"{EXPORT_DIR}/{name}"
            if rel in self.files or any(k.startswith(rel + "/") for k in self.files):
                out[fmt] = os.path.join(self.path, EXPORT_DIR, name)
        return out

    def export_file(self, fmt):
        """Path of one exported format, e.g. ``"tflite_fp32"``.

        Raises:
            ValueError: the preset carries no such file, listing those it has.
        """
        files = self.export_files
        if fmt not in files:
            _fail(f"The preset carries no {fmt!r} file. Its formats: "
                  f"{sorted(files) or 'none (no export folder)'}; "
                  f"or format=None for the Keras model. Received: format={fmt!r};", self.path)
        return files[fmt]


# ---------------------------------------------------------------------------
# Reading and verifying.


def read_preset(folder, source=None):
    """Reads and verifies a preset folder.

    Args:
        folder: the preset folder.
        source: what the user passed (a URL, an archive), for messages.

    Returns:
        A :class:`Preset`.

    Raises:
        ValueError: a missing file, a file whose sha256 is not the one
            ``metadata.json`` records (altered or truncated), or a
            ``config.json`` that names an unknown variant, arguments the
            variant does not take, or a keypoint set of another size. The
            message names the file and what is wrong.
    """
    folder = os.path.abspath(os.fspath(folder))
    source = folder if source is None else source
    if not os.path.isdir(folder):
        _fail("The preset is not a folder.", source)
    for name in (CONFIG_FILE, METADATA_FILE):
        if not os.path.isfile(os.path.join(folder, name)):
            _fail(f"Preset file missing: {name} (is this a preset folder? `keras-dpn publish` "
                  "and keras_dpn.hub.presets.save_preset write them).", source)
    metadata = _read_json(os.path.join(folder, METADATA_FILE), source)
    files = metadata.get("files") if isinstance(metadata, dict) else None
    if not isinstance(files, dict):
        _fail("metadata.json holds no `files` table of sha256 digests.", source)
    for name in REQUIRED_FILES:
        if name != METADATA_FILE and name not in files:
            _fail(f"metadata.json records no sha256 for {name}.", source)
    for rel, digest in sorted(files.items()):
        path = os.path.join(folder, *_safe_relpath(rel, source).split("/"))
        if not os.path.isfile(path):
            _fail(f"Preset file missing: {rel} (listed in metadata.json).", source)
        found = sha256_file(path)
        if found != str(digest).lower():
            _fail(f"Preset file {rel} was altered or truncated: its sha256 is {found}, "
                  f"metadata.json records {digest}.", source)
    config = _read_json(os.path.join(folder, CONFIG_FILE), source)
    _check_config(config, metadata, source)
    return Preset(folder, config, metadata)


def _check_config(config, metadata, source):
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        _fail(f"config.json is not a keras-dpn preset config (its `format` must be "
              f"{FORMAT!r}).", source)
    if config.get("format_version", 0) > FORMAT_VERSION:
        _fail(f"config.json has format_version {config.get('format_version')}; this keras-dpn "
              f"reads up to {FORMAT_VERSION}: upgrade keras-dpn.", source)
    from keras_dpn.models.registry import model_info
    try:
        model_info(config.get("variant"), arg_name="variant")
    except ValueError as e:
        _fail(f"config.json names an unknown variant: {e}.", source)
    variant = config["variant"]
    arguments = config.get("arguments")
    if not isinstance(arguments, dict):
        _fail("config.json holds no `arguments` object.", source)
    extra = sorted(set(arguments) - {"input_shape", "num_keypoints"}
                   - set(weights_lib.ARCHITECTURE_ARGS))
    if extra:
        _fail(f"config.json gives {variant} arguments a preset cannot set: {extra}.", source)
    shape = arguments.get("input_shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in shape)):
        _fail(f"config.json: `input_shape` must be [height, width, 3], got {shape!r}.", source)
    try:
        weights_lib.validate_num_keypoints(arguments.get("num_keypoints"))
        weights_lib.complete_config(
            variant, {k: v for k, v in arguments.items() if k in weights_lib.ARCHITECTURE_ARGS},
            arg_name="arguments")
    except ValueError as e:
        _fail(f"config.json: {e}.", source)
    name = config.get("keypoints")
    recorded = (metadata.get("keypoints") or {}).get("names")
    try:
        count = get_keypoint_spec(name).num_keypoints
    except ValueError:
        if not recorded:
            _fail(f"config.json names the keypoint set {name!r}, which is neither built in nor "
                  "described in metadata.json.", source)
        count = len(recorded)
    if count != arguments["num_keypoints"]:
        _fail(f"config.json is inconsistent: keypoint set {name!r} has {count} joints but "
              f"num_keypoints={arguments['num_keypoints']}.", source)


# ---------------------------------------------------------------------------
# Archives.


def _cache_root():
    return os.path.join(weights_lib.cache_dir(), weights_lib.CACHE_SUBDIR, PRESETS_SUBDIR)


def _archive_stem(path):
    base = os.path.basename(path)
    for suffix in ARCHIVE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _extract(archive, dest, source):
    """Unpacks ``archive`` into ``dest`` member by member, refusing anything unsafe."""
    total = 0

    def add(size):
        nonlocal total
        total += size
        if total > MAX_UNPACKED_BYTES:
            _fail(f"The archive unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB; refused.",
                  source)

    def target(rel):
        path = os.path.join(dest, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _safe_relpath(info.filename, source)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        _fail(f"The archive holds a link ({info.filename!r}); presets hold "
                              "plain files only. Nothing was unpacked.", source)
                    if not rel or info.is_dir():
                        continue
                    add(info.file_size)
                    with zf.open(info) as src, open(target(rel), "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    rel = _safe_relpath(member.name, source)
                    if member.isdir() or not rel:
                        continue
                    if not member.isfile():
                        _fail(f"The archive holds a link or special file ({member.name!r}); "
                              "presets hold plain files only. Nothing was unpacked.", source)
                    add(member.size)
                    with tf.extractfile(member) as src, open(target(rel), "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, gzip.BadGzipFile) as e:
        _fail(f"The preset archive cannot be read (truncated, or not a .tar.gz / .zip): "
              f"{type(e).__name__}: {e}.", source)


def _find_root(folder, source):
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return folder
    entries = os.listdir(folder)
    if len(entries) == 1 and os.path.isfile(os.path.join(folder, entries[0], CONFIG_FILE)):
        return os.path.join(folder, entries[0])
    _fail("The archive holds no preset: config.json is neither at its top level nor in its "
          "one top folder.", source)


def unpack(archive, sha256=None, name=None, source=None):
    """Unpacks and verifies a preset archive into the Keras cache.

    The folder, ``$KERAS_HOME/keras_dpn/presets/<name>-<sha256 prefix>``,
    appears only once it is complete and verified; a verified copy from an
    earlier call is reused, a damaged one replaced.

    Args:
        archive: a local ``.tar.gz`` / ``.tgz`` / ``.zip`` file.
        sha256: expected digest of the archive (None: not checked).
        name: folder name in the cache (default: the archive's stem).
        source: what the user passed, for messages.

    Returns:
        The :class:`Preset` in the cache.

    Raises:
        ValueError: wrong digest, unreadable or unsafe archive, or a preset
            that fails :func:`read_preset`; nothing is left in the cache.
    """
    archive = os.path.abspath(os.fspath(archive))
    source = archive if source is None else source
    if not archive.endswith(ARCHIVE_SUFFIXES):
        _fail(f"A preset archive ends in {', '.join(ARCHIVE_SUFFIXES)}.", source)
    digest = sha256_file(archive)
    if sha256 is not None and digest != sha256.lower():
        _fail(f"The preset archive's sha256 is {digest}, not the expected {sha256.lower()} "
              "(altered or truncated download).", source)
    root = _cache_root()
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"{name or _archive_stem(archive)}-{digest[:16]}")
    if os.path.isdir(final):
        try:
            return read_preset(final, source)
        except ValueError:
            shutil.rmtree(final, ignore_errors=True)  # damaged since: unpack again
    io_utils.remove_partial_leftovers(final)  # of a killed unpack
    scratch = io_utils.make_partial_directory(final)
    try:
        _extract(archive, scratch, source)
        top = _find_root(scratch, source)
        preset = read_preset(top, source)
        io_utils.publish_mode(top, directory=True)
        try:
            os.replace(top, final)
        except OSError:
            if not os.path.isdir(final):  # not a concurrent unpack of the same archive
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dataclasses.replace(preset, path=final)


def _unverified_allowed(allow_unverified):
    if allow_unverified is not None:
        return bool(allow_unverified)
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() not in ("", "0", "false",
                                                                           "no")


def _download(url, allow_unverified=None):
    """A URL (optionally ``#sha256=<hex>``) -> the cached archive and the expected digest.

    An ``http(s)://`` URL without a digest is refused before anything is
    downloaded unless unverified downloads are allowed; then the digest
    received is printed, with how to pin it (``file://`` URLs are local files
    and need no digest).
    """
    import keras

    match = re.search(r"#sha256=([0-9a-fA-F]{64})$", url)
    digest = match.group(1).lower() if match else None
    if "#" in url and digest is None:
        _fail("A preset URL ends in #sha256=<64 hex digits> or has no '#' part.", url)
    verify = digest is None and not url.lower().startswith("file://")
    if verify and not _unverified_allowed(allow_unverified):
        _fail("An http(s) preset URL needs the archive's sha256 (nothing else checks what the "
              "server sends): append #sha256=<64 hex digits> (`keras-dpn publish` prints it; "
              "`sha256sum ARCHIVE`), or allow unverified downloads with allow_unverified=True "
              f"/ {ALLOW_UNVERIFIED_ENV}=1 (--allow-unverified); nothing was downloaded.", url)
    origin = url.split("#", 1)[0]
    base = os.path.basename(origin.split("?", 1)[0]) or "preset.tar.gz"
    # Keyed by the URL: two servers' "model.tar.gz" must not share a cache file.
    fname = f"{hashlib.sha256(origin.encode()).hexdigest()[:10]}-{base}"
    cache_dir = weights_lib.cache_dir()
    target = os.path.join(cache_dir, weights_lib.CACHE_SUBDIR, fname)
    try:
        # Unverified: never reuse a cached file (it may be a killed download's half).
        path = keras.utils.get_file(fname, origin=origin, file_hash=digest,
                                    hash_algorithm="sha256" if digest else "auto",
                                    cache_dir=cache_dir, cache_subdir=weights_lib.CACHE_SUBDIR,
                                    force_download=verify)
    except BaseException as e:
        weights_lib.remove_quietly(target)
        if isinstance(e, KeyboardInterrupt):
            raise
        _fail(f"Could not download the preset archive: {e} (nothing was kept in the cache).",
              url)
    if verify:
        found = sha256_file(path)
        import warnings

        warnings.warn(f"Downloaded the preset archive unverified (no #sha256= in the URL); its "
                      f"sha256 is {found}: pin it with {origin}#sha256={found}", stacklevel=3)
    return path, digest


def get_preset(source, sha256=None, allow_unverified=None):
    """A verified :class:`Preset` from a folder, an archive, a URL or a registry key.

    Args:
        source: a preset folder; a ``.tar.gz`` / ``.tgz`` / ``.zip`` file;
            an ``http(s)://`` / ``file://`` URL of one (``#sha256=<hex>``
            appended: the download is verified); or a registered
            ``"arch.tag"`` whose URL is an archive.
        sha256: expected digest of an archive given by path or URL.
        allow_unverified: download an ``http(s)://`` URL that has no
            ``#sha256=`` and no ``sha256`` (a warning prints the digest
            received and how to pin it). None: only when the environment
            variable ``KERAS_DPN_ALLOW_UNVERIFIED`` is ``1``. Without it such
            a URL is refused before anything is downloaded.

    Raises:
        ValueError: see :func:`read_preset` and :func:`unpack`; a failed
            download or unpack leaves nothing in the cache.

    Example:
    >>> get_preset("no/such/preset")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Preset not found: expected a preset folder, ... Received: preset='no/such/preset'
    """
    if isinstance(source, Preset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a path, a URL or a registered 'arch.tag'. "
                         f"Received: preset={source!r}")
    text = os.fspath(source)
    if weights_lib.is_url(text):
        path, digest = _download(text, True if sha256 else allow_unverified)
        try:
            return unpack(path, sha256=sha256 or digest, source=text)
        except BaseException:
            weights_lib.remove_quietly(path)  # a bad download must not be reused
            raise
    if os.path.isdir(text):
        return read_preset(text)
    if os.path.isfile(text):
        return unpack(text, sha256=sha256, source=text)
    if weights_lib.is_registered(text):
        entry = weights_lib.get_entry(text)
        if not entry.is_archive:
            _fail(f"{text!r} is registered as a bare weights file, not a preset archive; "
                  f"build it with keras_dpn.get_model({entry.arch!r}, weights={entry.tag!r}) "
                  "or keras_dpn.hub.presets.from_preset.", text)
        path = weights_lib.fetch(entry)
        try:
            preset = unpack(path, sha256=entry.sha256, name=f"{entry.arch}_{entry.tag}",
                            source=text)
            check_entry(preset, entry, remove=True)
        except BaseException:
            weights_lib.remove_quietly(path)
            raise
        return preset
    registered = ", ".join(weights_lib.list_entries()) or "none registered"
    _fail("Preset not found: expected a preset folder, a .tar.gz/.tgz/.zip archive, a URL of "
          f"one, or a registered 'arch.tag' ({registered}).", text)


def check_entry(preset, entry, remove=False):
    """Raises when a downloaded preset is not what its registry entry promises.

    Args:
        preset: the unpacked :class:`Preset`.
        entry: its :class:`keras_dpn.hub.weights.WeightsEntry`.
        remove: remove the preset's folder (the copy in the cache) when it
            is refused, so that a refusal leaves nothing there.
    """
    promised = {"variant": entry.arch, "input_shape": list(entry.input_shape),
                "num_keypoints": entry.num_keypoints, "keypoints": entry.keypoints,
                **weights_lib.complete_config(entry.arch, entry.config)}
    found = {"variant": preset.variant, "keypoints": preset.keypoints, **preset.arguments}
    found.update(weights_lib.complete_config(
        preset.variant, {k: v for k, v in preset.arguments.items()
                         if k in weights_lib.ARCHITECTURE_ARGS}))
    differ = [k for k in promised if promised[k] != found.get(k)]
    if differ:
        details = ", ".join(f"{k}: entry {promised[k]!r}, preset {found.get(k)!r}"
                            for k in differ)
        if remove:
            shutil.rmtree(preset.path, ignore_errors=True)
        raise ValueError(f"The registry entry {entry.key!r} and the preset it downloads disagree "
                         f"({details}); fix the entry. Received: weights={entry.tag!r}")


# ---------------------------------------------------------------------------
# Building from a preset.


def from_preset(source, allow_unverified=None, **overrides):
    """Builds the model a preset describes and loads its weights.

    Args:
        source: see :func:`get_preset`; a registered ``"arch.tag"`` of a bare
            weights file works too (built from the entry's arguments).
        allow_unverified: see :func:`get_preset` (an ``http(s)://`` URL
            without ``#sha256=``).
        **overrides: builder arguments to change, e.g. ``input_shape``
            (fully convolutional: another size warns) or ``dtype``. Changing
            an architecture argument raises (the weights would not fit).

    Returns:
        A ``keras.Model``.

    Example:
    >>> import os, tempfile, keras_dpn
    >>> with tempfile.TemporaryDirectory() as d:  # a preset folder (keras-dpn publish, save_preset)
    ...     _ = save_preset(keras_dpn.DPN1_32(input_shape=(64, 48, 3)), os.path.join(d, "tiny"))
    ...     model = from_preset(os.path.join(d, "tiny"))
    >>> model.output_shape
    (None, 16, 12, 17)

    A registered ``"arch.tag"`` or a URL downloads the archive first (not run here):

    >>> model = from_preset("DPN4_32.coco")  # doctest: +SKIP
    """
    from keras_dpn.models.registry import get_model

    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if weights_lib.is_registered(text) and not os.path.exists(text):
        entry = weights_lib.get_entry(text)
        if not entry.is_archive:
            kwargs = {**entry.arguments, **overrides}
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
            return get_model(entry.arch, weights=entry.tag, **kwargs)
    preset = get_preset(source, allow_unverified=allow_unverified)
    kwargs = {**preset.arguments, **overrides}
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    return get_model(preset.variant, weights=preset.path, **kwargs)


def estimator_model(source, keypoints=None, format=None):
    """What :meth:`keras_dpn.PoseEstimator.from_preset` runs: ``(model or file, spec)``.

    Raises:
        ValueError: ``keypoints`` names another set than the preset's, or
            the preset carries no file of ``format``.
    """
    preset = get_preset(source)
    spec = preset.keypoint_spec()
    if keypoints is not None:
        asked = get_keypoint_spec(keypoints)
        if asked.name != spec.name or tuple(asked.names) != tuple(spec.names):
            raise ValueError(
                f"The preset was trained for the keypoint set {spec.name!r} "
                f"({spec.num_keypoints} joints), not {asked.name!r} ({asked.num_keypoints} "
                f"joints); leave `keypoints` out to use the preset's. "
                f"Received: keypoints={keypoints!r}")
    if format in (None, "keras"):
        return from_preset(preset), spec
    return preset.export_file(format), spec


# ---------------------------------------------------------------------------
# Writing.


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def _hash_tree(folder):
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = _relative(path, folder)
            if rel != METADATA_FILE:
                files[rel] = sha256_file(path)
    return files


def save_preset(model, folder, keypoints=None, metadata=None, export_dir=None,
                weights_file=None, name=None, overwrite=False):
    """Writes a preset folder for a model built by a keras_dpn builder, atomically.

    Args:
        model: a model from :func:`keras_dpn.get_model` or a variant
            constructor (it knows its builder arguments, see
            :func:`keras_dpn.hub.weights.builder_config`).
        folder: the preset folder to create.
        keypoints: keypoint set: a name, a keypoint-set file, a dict or a
            ``KeypointSpec`` (default: ``coco`` for 17 heatmaps, ``mpii`` for
            16); ``metadata.json`` records all its fields.
        metadata: extra ``metadata.json`` entries: ``training``, ``metrics``,
            ``formats`` (per-format metrics), ...
        export_dir: an export folder (``keras_dpn.deploy.export``) copied into
            ``export/``; it must hold the same model.
        weights_file: a ``.weights.h5`` file of ``model`` to copy as is
            (default: ``model.save_weights``).
        name: the preset's name (default: the folder's name).
        overwrite: replace an existing folder (only once the new one is
            complete); if False an existing folder raises ``FileExistsError``.

    Returns:
        The :class:`Preset` written.

    Raises:
        ValueError: a model without builder arguments, or a keypoint set of
            another size, before anything is written.
    """
    import keras

    config = weights_lib.builder_config(model)
    if config is None:
        raise ValueError(
            "The model does not record its builder arguments (it was not built by a "
            "keras_dpn builder, e.g. it was loaded from a .keras file): build it with "
            "keras_dpn.get_model(name, ...) and load its weights. "
            f"Received: model={getattr(model, 'name', model)!r}")
    arguments = config["arguments"]
    num_k = arguments["num_keypoints"]
    if keypoints is None:
        keypoints = {17: "coco", 16: "mpii"}.get(num_k)
    spec = get_keypoint_spec(keypoints)
    check_keypoint_count(spec, num_k, f"the model {config['variant']}'s head",
                         keypoint_source(keypoints))
    folder = os.path.abspath(os.fspath(folder))
    name = name or os.path.basename(folder)
    from keras_dpn.core import transforms
    meta = {
        "name": name,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": config["variant"],
        "keras_dpn_version": __version__,
        "keras_version": keras.__version__,
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameter_count": int(model.count_params()),
        "keypoints": spec.to_dict(),
        "preprocessing": {
            "color": "RGB", "scale": 1 / 255.0, "mean": list(transforms.IMAGENET_MEAN),
            "std": list(transforms.IMAGENET_STD), "layout": "NHWC",
            "crop": "person box -> center and size, widened to the input aspect ratio, "
                    f"x{transforms.DEFAULT_PADDING} (HRNet geometry, sizes in pixels)",
            "description": weights_lib.DEFAULT_PREPROCESSING},
        "training": {}, "metrics": {}, "formats": {},
    }
    meta.update(metadata or {})
    preset_config = {"format": FORMAT, "format_version": FORMAT_VERSION,
                     "variant": config["variant"], "keypoints": spec.name,
                     "arguments": arguments}
    with io_utils.atomic_directory(folder, overwrite=overwrite) as tmp:
        _write_json(os.path.join(tmp, CONFIG_FILE), preset_config)
        if weights_file is not None:
            shutil.copyfile(weights_file, os.path.join(tmp, WEIGHTS_FILE))
        else:
            model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        if export_dir is not None:
            shutil.copytree(export_dir, os.path.join(tmp, EXPORT_DIR))
        files = _hash_tree(tmp)
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            f.write(model_card(preset_config, meta, files))
        meta["files"] = _hash_tree(tmp)
        _write_json(os.path.join(tmp, METADATA_FILE), meta)
    return read_preset(folder)


def archive_preset(folder, path=None, archive_format="tar.gz"):
    """Packs a preset folder into one reproducible archive, written atomically.

    Members are ``NAME/...`` in sorted order with zeroed times and owners, so
    the same files always give the same sha256.

    Args:
        folder: a preset folder (verified first).
        path: the archive (default: next to the folder, ``NAME.tar.gz`` /
            ``NAME.zip``).
        archive_format: ``"tar.gz"`` or ``"zip"``.

    Returns:
        ``(archive path, sha256)``.
    """
    if archive_format not in ("tar.gz", "zip"):
        raise ValueError(f"`archive_format` must be 'tar.gz' or 'zip'. "
                         f"Received: archive_format={archive_format!r}")
    preset = read_preset(folder)
    name = os.path.basename(preset.path)
    path = os.path.abspath(path or f"{preset.path}.{archive_format}")
    members = sorted(list(preset.files) + [METADATA_FILE])
    with io_utils.atomic_path(path) as tmp:
        if archive_format == "zip":
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for rel in members:
                    info = zipfile.ZipInfo(f"{name}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    with open(os.path.join(preset.path, rel), "rb") as src, \
                            zf.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        else:
            with open(tmp, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in members:
                    full = os.path.join(preset.path, rel)
                    info = tarfile.TarInfo(f"{name}/{rel}")
                    info.size = os.path.getsize(full)
                    info.mode = 0o644
                    with open(full, "rb") as src:
                        tar.addfile(info, src)
    return path, sha256_file(path)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _keypoints_section(recorded):
    """The card's joint table: the OKS sigmas its AP was measured with, flip partners."""
    try:
        spec = get_keypoint_spec(recorded)
    except ValueError:
        return []
    partner = {a: b for a, b in spec.flip_pairs}
    partner.update({b: a for a, b in spec.flip_pairs})
    lines = ["", f"## Keypoints: {spec.name!r} (metadata.json `keypoints`)", "",
             "AP (COCO OKS) is computed with these sigmas; `--keypoints` files take the same "
             "fields (docs/keypoints.md).", "",
             "| # | joint | flip partner | OKS sigma | loss weight |", "|---|---|---|---|---|"]
    weights = spec.weights
    for j, name in enumerate(spec.names):
        other = spec.names[partner[j]] if j in partner else ""
        lines.append(f"| {j} | {name} | {other} | {spec.sigmas[j]:g} | {weights[j]:g} |")
    return lines


def model_card(config, metadata, files):
    """The preset's ``README.md``: what it is, how to load it, what it reaches."""
    args = config["arguments"]
    h, w = args["input_shape"][:2]
    name = metadata.get("name", config["variant"])
    lines = [
        f"# {name}",
        "",
        f"A {config['variant']} top-down human pose estimator (keras-dpn "
        f"{metadata.get('keras_dpn_version', '?')}, Keras {metadata.get('keras_version', '?')}): "
        f"{args['num_keypoints']} keypoints ({config['keypoints']}), input {h}x{w}, "
        f"{metadata.get('parameter_count', 0) / 1e6:.2f} M parameters.",
        "",
        "## Use",
        "",
        "```python",
        "import keras_dpn",
        f'model = keras_dpn.hub.presets.from_preset("{name}")            # folder, archive or URL',
        f'estimator = keras_dpn.PoseEstimator.from_preset("{name}")',
        'people = estimator.predict("photo.jpg", boxes=[[x, y, width, height]])',
        "```",
        "",
        "## Builder arguments (config.json)",
        "",
        "| argument | value |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | `{v}` |" for k, v in sorted(args.items())]
    lines += _keypoints_section(metadata.get("keypoints"))
    training = metadata.get("training") or {}
    lines += ["", "## Training", ""]
    if training:
        lines += [f"- {k}: {_fmt(v) if not isinstance(v, dict) else json.dumps(v, sort_keys=True)}"
                  for k, v in sorted(training.items())]
    else:
        lines.append("- not recorded")
    metrics = metadata.get("metrics") or {}
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())
                  if not isinstance(v, dict)]
    else:
        lines.append("No evaluation was recorded.")
    note = metadata.get("metrics_note")
    if note:
        lines += ["", note]
    formats = metadata.get("formats") or {}
    if formats:
        keys = sorted({k for row in formats.values() if isinstance(row, dict) for k in row})
        lines += ["", "## Exported files, measured", "", "| format | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for fmt, row in sorted(formats.items()):
            row = row if isinstance(row, dict) else {"value": row}
            lines.append(f"| {fmt} | " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    pre = metadata.get("preprocessing") or {}
    lines += ["", "## Preprocessing", "", pre.get("description", ""), "",
              "## Files (sha256; metadata.json lists them all)", "", "| file | sha256 |",
              "|---|---|"]
    lines += [f"| {rel} | `{digest}` |" for rel, digest in sorted(files.items())
              if "/" not in rel]
    exported = sorted(rel for rel in files if rel.startswith(EXPORT_DIR + "/"))
    if exported:
        lines.append(f"| {EXPORT_DIR}/ | {len(exported)} files |")
    return "\n".join(lines) + "\n"
