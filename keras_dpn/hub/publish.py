"""From a training run to a release: ``run_config.json`` and ``keras-dpn publish``.

A run folder (:class:`keras_dpn.training.trainer.Trainer`, ``recipes/train_coco.py``)
records at its start, atomically, what it trains in ``OUTPUT/run_config.json``:

.. code-block:: json

    {"model": {"variant": "DPN4_32", "arguments": {"input_shape": [256, 192, 3],
               "num_keypoints": 17, "resolution": "medium", ...}},
     "architecture": {"num_weights": ..., "sha256_16": ...},
     "keypoints": "coco", "dataset": {...}, "training": {...}, "recipe": {...}}

:func:`publish_run` (``keras-dpn publish RUN_DIR --name NAME``) turns the run
into a preset (:mod:`keras_dpn.hub.presets`): the best weights, that config, the
metrics of the published epoch and of the last evaluation, the export folder
and its per-format table when present; packs it into ``NAME.tar.gz``; and
writes and prints the registry entry to paste into
:func:`keras_dpn.hub.weights.register` (or to load with
:func:`keras_dpn.hub.weights.load_registry`). A run whose files disagree on the
keypoint set, the input size or the architecture is refused before anything
is written.
"""

import csv
import json
import math
import os
import re
import shutil

from keras_dpn.core import io_utils
from keras_dpn.hub import presets
from keras_dpn.training import run_folder
from keras_dpn.hub import weights as weights_lib
from keras_dpn.core.keypoints import get_keypoint_spec

# The run folder's contract (file names, run_config.json) is keras_dpn.training.run_folder's;
# these names stay importable from here.
from keras_dpn.training.run_folder import (  # noqa: F401
    BEST_JSON, BEST_WEIGHTS, EXPORT_DIR, HISTORY_CSV, RUN_CONFIG, keypoints_record,
    read_run_config, record_run, run_record)

STATE_FILE = os.path.join(run_folder.CHECKPOINT_DIR, run_folder.STATE_FILE)
# The per-format table (AP of every exported file) is read from the export
# folder when a measurement left one there.
ACCURACY_FILE = "accuracy.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
URL_PLACEHOLDER = "https://YOUR-HOST/{file}"


# ---------------------------------------------------------------------------
# Publishing


def _refuse(message, run_dir):
    raise ValueError(f"{message} Nothing was written. Received: run_dir={os.fspath(run_dir)!r}")


def _read_json(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"A file of the run cannot be read as JSON ({e}); nothing was written. "
                         f"Received: {path}") from e
    if not isinstance(data, dict):
        raise ValueError(f"A file of the run holds a JSON {type(data).__name__}, not an object; "
                         f"nothing was written. Received: {path}")
    return data


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _last_evaluation(run_dir, prefix="val_"):
    """The last ``history.csv`` row with evaluation values: ``(epoch, {key: value})``."""
    path = os.path.join(run_dir, HISTORY_CSV)
    if not os.path.isfile(path):
        return None, {}
    last = (None, {})
    shift = None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            try:
                epoch = int(row.get("epoch"))
            except (TypeError, ValueError):
                raise ValueError(f"{HISTORY_CSV} line {reader.line_num}: `epoch` must be a whole "
                                 f"number, found {row.get('epoch')!r}; nothing was written. "
                                 f"Received: {path}") from None
            if shift is None:  # keras-dpn 0.1 numbered the rows from 0, later ones from 1
                shift = 1 if epoch == 0 else 0
            values = {k: float(v) for k, v in row.items()
                      if k and k.startswith(prefix) and _finite(v)}
            if values:
                last = (epoch + shift, values)
    return last


_ROW_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "ap_drop", "size_mb", "flip_test")


def _accuracy_by_format(report):
    """``{format: {"AP": ..., ...}}`` from the report ``export_eval.write_report`` writes
    (``{"rows": [{"format": ..., "AP": ...}, ...], ...}``); a row that failed or a
    duplicate row of one format measured without the flip test is left out."""
    if not isinstance(report, dict):
        return {}
    rows = report.get("rows")
    if not isinstance(rows, list):  # a plain {format: metrics} table
        return {k: v for k, v in report.items() if isinstance(v, dict)}
    table = {}
    for row in rows:
        if not isinstance(row, dict) or "AP" not in row or "format" not in row:
            continue
        if row["format"] in table and not row.get("flip_test"):
            continue  # the keras row without flip test, the keypoints file's reference
        table[row["format"]] = {k: row[k] for k in _ROW_METRICS if k in row}
    return table


def _export_table(export_dir):
    """Per-format metrics of an export folder, when measured."""
    path = os.path.join(export_dir, ACCURACY_FILE)
    if os.path.isfile(path):
        return _accuracy_by_format(_read_json(path))
    meta = os.path.join(export_dir, presets.METADATA_FILE)
    if os.path.isfile(meta):
        return _read_json(meta).get("accuracy") or {}
    return {}


def check_run(run_dir, run_config, weights_file):
    """Everything publish checks before it writes; returns the pieces it needs."""
    model_cfg = run_config.get("model")
    if not isinstance(model_cfg, dict) or "variant" not in model_cfg:
        _refuse(f"{RUN_CONFIG} records no model builder (the run's model was not built by "
                "keras_dpn.get_model or a variant constructor).", run_dir)
    variant, arguments = model_cfg["variant"], dict(model_cfg.get("arguments") or {})
    from keras_dpn.models.registry import model_info
    try:
        model_info(variant, arg_name="variant")
        weights_lib.complete_config(variant, {k: v for k, v in arguments.items()
                                              if k in weights_lib.ARCHITECTURE_ARGS})
    except ValueError as e:
        _refuse(f"{RUN_CONFIG} names a model this keras-dpn cannot build: {e}.", run_dir)
    num_k = arguments.get("num_keypoints")
    shape = arguments.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3 or not isinstance(num_k, int):
        _refuse(f"{RUN_CONFIG} records no input_shape [H, W, 3] and num_keypoints for the "
                f"model (found input_shape={shape!r}, num_keypoints={num_k!r}).", run_dir)
    keypoints = run_config.get("keypoints")
    # A dict (KeypointSpec.to_dict) since keras-dpn 0.2; a built-in name before.
    if not isinstance(keypoints, (str, dict)):
        _refuse(f"{RUN_CONFIG} records no keypoint set (`keypoints` must be 'coco', 'mpii' or "
                f"the set's fields, found {type(keypoints).__name__}).", run_dir)
    if isinstance(keypoints, str) and keypoints not in ("coco", "mpii"):
        _refuse(f"{RUN_CONFIG} names the keypoint set {keypoints[:60]!r} but does not record "
                "its fields (a run of an older keras-dpn): replace the value by the set's "
                "json (docs/keypoints.md).", run_dir)
    try:
        spec = get_keypoint_spec(keypoints, source=f"{RUN_CONFIG} `keypoints`")
    except ValueError as e:
        _refuse(str(e), run_dir)
    if spec.num_keypoints != num_k:
        _refuse(f"Inconsistent keypoint set: {RUN_CONFIG} says {spec.name!r} "
                f"({spec.num_keypoints} joints) but the model has num_keypoints={num_k}.",
                run_dir)
    export_dir = os.path.join(run_dir, EXPORT_DIR)
    export_meta = None
    if os.path.isdir(export_dir):
        meta_path = os.path.join(export_dir, presets.METADATA_FILE)
        if not os.path.isfile(meta_path):
            _refuse(f"The export folder has no {presets.METADATA_FILE} (an interrupted or "
                    "foreign export); re-export it or remove it.", run_dir)
        export_meta = _read_json(meta_path)
        if list(export_meta.get("input_size") or []) != list(shape[:2]):
            _refuse(f"Inconsistent input size: the export folder's models take "
                    f"{export_meta.get('input_size')}, the run's model {shape[:2]}.", run_dir)
        exported_k = export_meta.get("num_keypoints")
        recorded = export_meta.get("keypoints") or {}
        exported_set = recorded.get("name")
        try:  # exports of keras-dpn 0.1 carry a part of the set's fields
            exported_spec = get_keypoint_spec(recorded) if "sigmas" in recorded else None
        except ValueError:
            exported_spec = None
        if exported_k != num_k or (exported_set is not None and exported_set != spec.name) or (
                exported_spec is not None and exported_spec != spec):
            differ = "" if exported_spec is None else " (fields that differ: " + ", ".join(
                k for k, v in spec.to_dict().items() if exported_spec.to_dict()[k] != v) + ")"
            _refuse(f"Inconsistent keypoint set: the export folder holds {exported_k} keypoints "
                    f"({exported_set}), the run {num_k} ({spec.name}){differ}.", run_dir)
    if not os.path.isfile(weights_file):
        _refuse(f"There are no weights to publish: {weights_file} does not exist (the run "
                "kept no best epoch: no evaluation ran or none was finite). Name a weights "
                "file with --weights.", run_dir)
    return variant, arguments, spec, export_dir if export_meta is not None else None


def build_and_verify(run_dir, variant, arguments, weights_file, run_config):
    """The run's model rebuilt from its config, checked against the run's own records."""
    from keras_dpn.models.registry import get_model
    from keras_dpn.training.precision import precision_policy
    from keras_dpn.training.run_folder import architecture_fingerprint, read_state

    kwargs = dict(arguments, input_shape=tuple(arguments["input_shape"]))
    with precision_policy("float32"):  # a preset holds float32 weights
        model = get_model(variant, **kwargs)
    fingerprint = architecture_fingerprint(model)
    recorded = [("run_config.json", (run_config.get("architecture") or {}))]
    state = read_state(run_dir) or {}
    recorded.append((STATE_FILE, state.get("architecture") or {}))
    for where, found in recorded:
        if found and (found.get("sha256_16") != fingerprint["sha256_16"]
                      or found.get("num_weights") != fingerprint["num_weights"]):
            _refuse(f"Inconsistent architecture: {where} records {found.get('name')} with "
                    f"{found.get('num_weights')} weights ({found.get('num_params')} values), but "
                    f"{variant}({_kwargs_text(arguments)}) has {fingerprint['num_weights']} "
                    f"({fingerprint['num_params']} values).", run_dir)
    try:
        weights_lib.verify_layout(model, weights_file, variant, arguments["num_keypoints"])
    except ValueError as e:
        _refuse(f"Inconsistent architecture: {e}", run_dir)
    model.load_weights(weights_file)
    return model


def _kwargs_text(arguments):
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}"
                     for k, v in sorted(arguments.items()))


def registry_entry(preset, tag, url, sha256):
    """The keyword arguments of :func:`keras_dpn.hub.weights.register` for a published archive."""
    arguments = preset.arguments
    metrics = {k: v for k, v in (preset.metadata.get("metrics") or {}).items()
               if isinstance(v, (int, float))}
    return {
        "arch": preset.variant, "tag": tag, "url": url, "sha256": sha256,
        "input_shape": list(arguments["input_shape"]),
        "num_keypoints": arguments["num_keypoints"], "keypoints": preset.keypoints,
        "config": {k: v for k, v in arguments.items() if k in weights_lib.ARCHITECTURE_ARGS},
        "metrics": metrics,
    }


def entry_code(entry):
    """``keras_dpn.hub.weights.register(...)`` source for an entry dict."""
    args = [f"{entry['arch']!r}, {entry['tag']!r}"]
    for key in ("url", "sha256", "input_shape", "num_keypoints", "keypoints", "config",
                "metrics"):
        value = entry[key]
        if key == "input_shape":
            value = tuple(value)
        args.append(f"{key}={value!r}")
    body = ",\n    ".join(args)
    return f"keras_dpn.hub.weights.register(\n    {body})"


def publish_run(run_dir, name, out_dir="presets", tag=None, url=None, weights=None,
                include_export=True, archive_format="tar.gz", overwrite=False):
    """Makes a preset and its archive from a training run.

    Args:
        run_dir: the run folder (``recipes/train_coco.py --output``, or a
            :class:`~keras_dpn.training.trainer.Trainer` ``output_dir``).
        name: the preset's name: the folder ``OUT_DIR/NAME/`` and the archive
            ``OUT_DIR/NAME.tar.gz``.
        out_dir: where they go.
        tag: the registry tag (default: the run's dataset, e.g. ``"coco"``).
        url: where the archive will be served (default: a placeholder to
            replace): an ``http(s)://`` URL of the archive (ending in
            ``.tar.gz`` / ``.zip`` as ``archive_format``), or of its folder
            ending in ``/`` (the archive's name is appended); ``file://``
            for local tests.
        weights: the weights file to publish (default: the run's
            ``best.weights.h5``).
        include_export: copy the run's ``export/`` folder into the preset.
        archive_format: ``"tar.gz"`` or ``"zip"``.
        overwrite: replace an existing preset and archive of that name.

    Returns:
        A dict: ``preset`` (folder), ``archive``, ``sha256``, ``entry``
        (register's arguments), ``registry_file`` and ``code`` (the
        ``register(...)`` call).

    Raises:
        ValueError: a bad name or URL, an output that cannot be written (a
            file where a folder goes or the reverse, a read-only folder), or
            a run whose config, weights, checkpoint state or export folder
            disagree (keypoint set, input size, architecture); nothing is
            written.
        FileExistsError: the preset exists and ``overwrite`` is False.
        OSError: a write failed (full disk): one line naming the output;
            what stood there before is unchanged.

    The folder, archive and registry file are made in a hidden
    ``OUT_DIR/.NAME.partial-*`` folder and moved into place last (the
    registry file last of all). A release without its registry file is
    incomplete (an interrupted publish) and a rerun replaces it; a rerun also
    removes what a killed publish left (``.NAME.partial-*`` of dead processes).
    """
    run_dir = os.path.abspath(os.fspath(run_dir))
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name.endswith(
            presets.ARCHIVE_SUFFIXES):
        raise ValueError("`name` must be a file name of letters, digits, '_', '.' and '-' "
                         f"(no folder, no archive suffix). Received: name={name!r}")
    if archive_format not in ("tar.gz", "zip"):
        raise ValueError(f"`archive_format` must be 'tar.gz' or 'zip'. "
                         f"Received: archive_format={archive_format!r}")
    if url is not None:
        weights_lib.check_url(url)
        if url.endswith("/"):
            url += f"{name}.{archive_format}"
        elif not weights_lib.url_path(url).endswith(f".{archive_format}"):
            raise ValueError(f"`url` must name the .{archive_format} archive, or a folder "
                             f"(ending in /). Received: url={url!r}")
    run_config = read_run_config(run_dir)
    # A run still training would be published half-way (its best weights may change).
    run_folder.check_not_locked(run_dir, action="publish it")
    weights_file = os.path.abspath(weights or os.path.join(run_dir, BEST_WEIGHTS))
    variant, arguments, spec, export_dir = check_run(run_dir, run_config, weights_file)
    out_dir = os.path.abspath(os.fspath(out_dir))
    folder = os.path.join(out_dir, name)
    archive = f"{folder}.{archive_format}"
    registry_file = f"{folder}.registry.json"
    _check_targets(out_dir, folder, archive, registry_file, overwrite)
    if tag is None:
        dataset = run_config.get("dataset")
        tag = (dataset.get("name") if isinstance(dataset, dict) else dataset) or spec.name
    tag = str(tag)
    if "." in tag or not NAME_PATTERN.match(tag):
        raise ValueError(f"`tag` must be letters, digits, '_' and '-' (no '.'). "
                         f"Received: tag={tag!r}")
    model = build_and_verify(run_dir, variant, arguments, weights_file, run_config)

    metadata = {"name": name, "tag": tag,
                "training": _training_section(run_dir, run_config, weights, weights_file)}
    metrics, note = _metrics(run_dir, run_config, weights)
    metadata["metrics"] = metrics
    if note:
        metadata["metrics_note"] = note
    epoch, last = _last_evaluation(run_dir)
    if last:
        metadata["last_evaluation"] = {"epoch": epoch, **last}
    if export_dir is not None and include_export:
        metadata["formats"] = _export_table(export_dir)
    for path in (folder, archive, registry_file):
        io_utils.remove_partial_leftovers(path)  # of a killed publish
    _check_free_space(out_dir, name, model, export_dir if include_export else None)
    stage = None
    try:
        os.makedirs(out_dir, exist_ok=True)
        stage = io_utils.make_partial_directory(folder)
        staged = os.path.join(stage, name)
        # Saved from the verified float32 model rather than copied: a run's best
        # weights file also holds the optimizer's state (twice the weights, for Adam).
        preset = presets.save_preset(model, staged, keypoints=spec, metadata=metadata,
                                     export_dir=export_dir if include_export else None,
                                     name=name)
        staged_archive, digest = presets.archive_preset(
            staged, os.path.join(stage, os.path.basename(archive)), archive_format)
        entry = registry_entry(preset, tag, url or URL_PLACEHOLDER.format(
            file=os.path.basename(archive)), digest)
        staged_registry = os.path.join(stage, os.path.basename(registry_file))
        with open(staged_registry, "w") as f:
            json.dump([entry], f, indent=2)
            f.write("\n")
        # Renames only from here; the registry file last: without it a
        # release is incomplete and a rerun replaces it.
        io_utils.replace_directory(staged, folder)
        os.replace(staged_archive, archive)
        os.replace(staged_registry, registry_file)
    except OSError as e:
        raise io_utils.write_error(e, out_dir, f"Cannot write the release {name!r} into") from e
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return {"preset": folder, "archive": archive, "sha256": digest, "entry": entry,
            "registry_file": registry_file, "code": entry_code(entry)}


def _check_targets(out_dir, folder, archive, registry_file, overwrite):
    """Refuses, before any work, outputs that cannot be written or that hold a release."""
    io_utils.check_output_folder(out_dir, "out_dir")
    for path, want_dir in ((folder, True), (archive, False), (registry_file, False)):
        if os.path.lexists(path) and os.path.isdir(path) != want_dir:
            found, wanted = ("A folder", "file") if not want_dir else ("A file", "folder")
            raise ValueError(f"{found} stands where the release's {wanted} goes; it is left "
                             f"as it is and nothing was written. Received: {path}")
    if overwrite or _incomplete_release(folder, registry_file):
        return
    for path in (folder, archive, registry_file):
        if os.path.exists(path):
            raise FileExistsError(f"{path} already exists. Pass overwrite=True (--overwrite) "
                                  "to replace the release; nothing was written.")


def _check_free_space(out_dir, name, model, export_dir):
    """Refuses a release that cannot fit: h5py crashes the process (segmentation fault)
    when the disk fills while it closes the weights file."""
    import errno

    size = model.count_params() * 4 + 2048 * len(model.weights)  # float32 + HDF5 headers
    if export_dir is not None:
        for dirpath, _, filenames in os.walk(export_dir):
            size += sum(os.path.getsize(os.path.join(dirpath, n)) for n in filenames)
    needed = 2 * size + (256 << 10)  # the folder and the archive (weights compress little)
    try:
        stat = os.statvfs(out_dir)
    except (AttributeError, OSError):  # no statvfs (Windows): the writes will tell
        return
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise OSError(errno.ENOSPC, f"Not enough free space for the release {name!r} in "
                                    f"{out_dir}: about {needed / 1e6:.1f} MB needed, "
                                    f"{free / 1e6:.1f} MB free; nothing was written")


def _incomplete_release(folder, registry_file):
    """True for what an interrupted publish left: a preset folder that publish wrote
    (its metadata.json records a registry tag) without its registry file."""
    if os.path.exists(registry_file) or not os.path.isdir(folder):
        return False
    try:
        with open(os.path.join(folder, presets.METADATA_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "tag" in meta and meta.get("name") == os.path.basename(
        folder)


def _training_section(run_dir, run_config, weights, weights_file):
    # Folder names only: a release should not carry the publisher's local paths.
    section = {"run": os.path.basename(run_dir), "weights": os.path.basename(weights_file)}
    for key in ("dataset", "training", "created", "updated"):
        if run_config.get(key) is not None:
            section[key] = run_config[key]
    state_path = os.path.join(run_dir, STATE_FILE)
    if os.path.isfile(state_path):
        state = _read_json(state_path)
        section["epochs_run"] = state.get("epoch")
        section["optimizer_steps"] = state.get("step")
    best_path = os.path.join(run_dir, BEST_JSON)
    if weights is None and os.path.isfile(best_path):
        section["best_epoch"] = _read_json(best_path).get("epoch")
    return section


def _metrics(run_dir, run_config, weights):
    """Metrics of the published weights (the best epoch's evaluation), and a caveat."""
    best_path = os.path.join(run_dir, BEST_JSON)
    metrics = {}
    if weights is None and os.path.isfile(best_path):
        best = _read_json(best_path)
        logs = best.get("logs") or {}
        metrics = {k: v for k, v in logs.items() if k.startswith("val_") and _finite(v)}
    note = None
    dataset = run_config.get("dataset")
    if isinstance(dataset, dict) and dataset.get("sample"):
        note = ("Measured on the bundled sample, on the images it was trained on: this shows "
                "memorization, not accuracy on unseen people.")
    return metrics, note
