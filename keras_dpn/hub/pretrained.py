"""The ``weights`` argument of every builder: a tag, a weights file or a preset, loaded.

:mod:`keras_dpn.hub.weights` keeps the registry and the download cache,
:mod:`keras_dpn.hub.presets` the preset folders; this module sits above both and
resolves what a builder received into a verified file. The builders
(:mod:`keras_dpn.models`) sit below all three: this module plugs itself in
(:func:`keras_dpn.models.common.set_weights_loader`) when the package is
imported, so that the models import nothing above them.
"""

import os
import shutil
import warnings

from keras_dpn.hub import presets
from keras_dpn.models import common
from keras_dpn.models.config import check_builder_config
from keras_dpn.hub.weights import (
    ARCHIVE_SUFFIXES, CACHE_SUBDIR, KNOWN_TAGS, WEIGHT_SUFFIXES, cache_dir, fetch,
    get_entry, is_preset_source, is_registered, is_url, list_entries, remove_quietly,
    url_path, verify_layout)


def _is_path_like(weights):
    text = os.fspath(weights)
    return (os.sep in text or text.endswith(WEIGHT_SUFFIXES + ARCHIVE_SUFFIXES)
            or text.endswith(".h5"))


def validate_weights_argument(arch, weights):
    """Checks ``weights`` before any layer is built.

    Accepts None, a tag registered for ``arch``, an existing ``.weights.h5`` /
    ``.keras`` file, or a preset: a folder, a ``.tar.gz`` / ``.tgz`` / ``.zip``
    archive of one, or an ``http(s)://`` / ``file://`` URL of such an archive
    (see :mod:`keras_dpn.hub.presets`). A local preset is verified here (files,
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
        if not url_path(text).endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"A `weights` URL must name a preset archive ({', '.join(ARCHIVE_SUFFIXES)}); "
                "register a weights file with keras_dpn.hub.weights.register(...) instead. "
                f"Received: weights={weights!r}")
        return
    if is_preset_source(text):
        # A local preset is verified (and an archive unpacked into the cache)
        # now, before any layer is built; load_weights compares the rest.
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
    if is_registered(f"{arch}.{text}"):
        return
    how = (f"Pass the path of a .weights.h5 or .keras file (weights='/path/to/{arch}.weights.h5') "
           "or of a preset (folder, .tar.gz/.zip or its URL), or register a release first: "
           f"keras_dpn.hub.weights.register({arch!r}, {text!r}, "
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
        :class:`keras_dpn.hub.presets.Preset` (None for a bare weights file).
    """
    validate_weights_argument(arch, weights)
    text = os.fspath(weights)
    entry = preset = None
    if is_preset_source(text):
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
    try:
        preset = presets.unpack(path, sha256=entry.sha256, name=f"{entry.arch}_{entry.tag}")
        presets.check_entry(preset, entry, remove=True)
    except BaseException:
        remove_quietly(path)
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
            remove_quietly(os.path.join(cache_dir(), CACHE_SUBDIR, entry.cache_file_name))
            if preset is not None:
                _remove_tree_quietly(preset.path)
            else:
                remove_quietly(path)
        raise
    trained = (tuple(entry.input_shape) if entry is not None
               else tuple(preset.arguments["input_shape"]) if preset is not None else None)
    if trained is not None and tuple(input_shape[:2]) != trained[:2]:
        what = entry.key if entry is not None else preset.path
        warnings.warn(
            f"The weights {what!r} were trained at input_shape={trained}; the "
            f"model takes {tuple(input_shape)}. Accuracy may differ.", stacklevel=3)
    return model


common.set_weights_loader(validate_weights_argument, load_weights)
