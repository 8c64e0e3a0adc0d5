"""``keras-dpn train``: train a DPN (or any registered variant), evaluated every epoch.

With no data arguments it runs the whole job on the bundled COCO sample (124
people; from ``sample_data/coco`` in a checkout, else the copy installed with
the package): builds the shards if missing, trains DPN4_32 until it has
memorized the sample, evaluates COCO AP after each epoch on the same images
(so the AP measures memorization, not generalization), exports the best
weights, and draws the exported model's predictions on a sample image. Under
10 minutes on two idle CPU cores.

The sample run's settings, and why: input 128x96 (a quarter of the paper's
pixels, so four times faster per step; still 32x24 heatmaps), batch 4 (31
optimizer steps per epoch on 124 people rather than 3), 50 epochs of Adam 1e-3,
x0.1 for the last 6 (AP about 0.75 on the sample in under 10 minutes), no
augmentation and no flip test (memorizing 124 fixed crops is the fastest
visible proof of learning; augmentation is for generalizing, and a model that
never saw a mirrored person predicts worse on one), mixed_bfloat16 on CPU.
Any of them can be overridden.

With data it follows the paper's schedule: Adam 1e-3, x0.1 at epochs 90 and
120, 140 epochs, input 256x192, the HRNet reference augmentation,
``--batch-size`` per replica. The keypoint set is ``--keypoints
coco|mpii|FILE.json``, else the one the shards' manifest records::

    keras-dpn train                                                # the sample run
    keras-dpn train --train-shards 'shards/coco_train-*.tfrecord' \\
        --val-shards 'shards/coco_val-*.tfrecord' \\
        --annotations annotations/person_keypoints_val2017.json \\
        --detections COCO_val2017_detections_AP_H_56_person.json --output runs/dpn4_32
    keras-dpn train ... --output runs/dpn4_32 --resume                # after a kill
    keras-dpn train --keypoints body12.json --train-shards 'shards/body12-*.tfrecord' \\
        --val-shards 'shards/body12-*.tfrecord' --annotations body12.json
    TF_CONFIG='{...}' keras-dpn train ... --strategy multi_worker

``python recipes/train_coco.py`` and ``recipes/train_mpii.py`` are this
command with the COCO and MPII defaults.

Exit status: 0 done; 2 a one-line error: bad input (reported before anything is
trained or written) or a run folder that cannot be written (read-only, full
disk: the epoch's checkpoint and history row are not kept, earlier ones are);
3 the loss diverged (the last good checkpoint is kept).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

# keras_dpn/, two folders up from keras_dpn/cli/train.py.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkout_root():
    """The repository around the package (sample_data/, tfrecords/), or None when installed."""
    root = os.path.dirname(PACKAGE_DIR)
    marker = os.path.join(root, "sample_data", "coco", "annotations",
                          "person_keypoints_sample.json")
    return root if os.path.isfile(marker) and os.path.isdir(os.path.join(root, "tfrecords")) \
        else None


REPO = _checkout_root()
# An installed package carries the samples as package data (setup.py copies
# them into keras_dpn/core/assets/sample_data/ when it builds).
SAMPLE_DATA = (os.path.join(REPO, "sample_data") if REPO
               else os.path.join(PACKAGE_DIR, "core", "assets", "sample_data"))

# The bundled samples. Their shards are built on first use under
# --shards-dir (default: tfrecords/sample/ in a checkout, else the Keras cache).
SAMPLE = {
    "coco": dict(annotations=os.path.join(SAMPLE_DATA, "coco", "annotations",
                                          "person_keypoints_sample.json"),
                 images=os.path.join(SAMPLE_DATA, "coco", "images"),
                 name="coco_sample", shards=2),
    "mpii": dict(annotations=os.path.join(SAMPLE_DATA, "mpii", "valid_sample.json"),
                 images=os.path.join(SAMPLE_DATA, "mpii", "images"),
                 name="mpii_sample", shards=1,
                 ground_truth=(os.path.join(REPO, "tests", "data", "mpii", "gt_valid.mat")
                               if REPO else os.path.join(SAMPLE_DATA, "mpii", "gt_valid.mat"))),
}
# The image the run draws its exported model's predictions on.
PREVIEW_IMAGE = {"coco": 40083, "mpii": 0}

# Run presets: the defaults each kind of run starts from; any flag overrides.
# `sample` names the bundled sample the preset trains on (None: your shards),
# `evaluation` the metric (COCO AP from COCO-format annotations, or MPII
# PCKh), `keypoints` the set (None: --keypoints, else the shards' own).
# The sample schedule is measured on the 2-core development machine (docs/benchmarks.md);
# the others are the paper's.
_SAMPLE_SCHEDULE = dict(epochs=50, batch_size=4, lr=1e-3, lr_epochs=(44,), augment="none",
                        mixed_precision=True, export_formats=("saved_model", "tflite_fp32"))
_PAPER_SCHEDULE = dict(epochs=140, batch_size=32, lr=1e-3, lr_epochs=(90, 120),
                       augment="reference", mixed_precision=False, export_formats=None)
RUN_PRESETS = {
    "sample": dict(sample="coco", evaluation="coco", keypoints="coco", input_size=(128, 96),
                   **_SAMPLE_SCHEDULE),
    "mpii_sample": dict(sample="mpii", evaluation="mpii", keypoints="mpii",
                        input_size=(128, 128), **_SAMPLE_SCHEDULE),
    "coco": dict(sample=None, evaluation="coco", keypoints="coco", input_size=(256, 192),
                 **_PAPER_SCHEDULE),
    "mpii": dict(sample=None, evaluation="mpii", keypoints="mpii", input_size=(256, 256),
                 **_PAPER_SCHEDULE),
    "custom": dict(sample=None, evaluation="coco", keypoints=None, input_size=(256, 192),
                   **_PAPER_SCHEDULE),
}
# The flags a preset fills in when they are not given.
PRESET_FLAGS = ("input_size", "epochs", "batch_size", "lr", "lr_epochs", "augment",
                "mixed_precision")

# Training augmentation presets (fields of keras_dpn.data.AugmentConfig; plain
# dicts, so that --help imports nothing of the data package).
AUGMENT = {
    "none": dict(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0),
    "flip": dict(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.5, half_body_prob=0.0),
    "reference": {},  # the HRNet reference: AugmentConfig's defaults
}

BACKENDS = ("tensorflow", "jax", "torch")

# keras_dpn.deploy.export.FORMATS, spelled out so that --help needs no TensorFlow
# import (a test keeps the two equal).
EXPORT_FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8_dynamic",
                  "tflite_int8", "tflite_keypoints", "onnx")

_DATA_FLAGS = ("train_shards", "val_shards", "annotations", "detections", "ground_truth")


# --------------------------------------------------------------------------- command line
def _default(key, dataset):
    if dataset is None:  # keras-dpn train: every preset
        return "default: the run preset's (--preset)"
    paper, sample = RUN_PRESETS[dataset][key], RUN_PRESETS[_sample_preset(dataset)][key]
    if isinstance(paper, tuple):
        sep = "x" if key == "input_size" else " "
        paper, sample = sep.join(map(str, paper)), sep.join(map(str, sample))
    return f"default {paper} (sample run: {sample})"


def _sample_preset(dataset):
    return "mpii_sample" if dataset == "mpii" else "sample"


def _description(dataset):
    paragraphs = __doc__.split("\n\n")
    first = {"coco": "Train a DPN (or any registered variant) on COCO keypoints, with COCO AP "
                     "every epoch.",
             "mpii": "Train a DPN on MPII, with PCKh@0.5 every epoch.",
             None: "Train" + paragraphs[0].split(": train", 1)[1]}[dataset]
    return "\n\n".join([first] + paragraphs[1:3])


def add_arguments(p, dataset=None):
    """The training flags, on parser ``p``.

    Args:
        p: an ``argparse.ArgumentParser`` (or a ``keras-dpn`` subparser).
        dataset: ``"coco"`` / ``"mpii"``: the recipes' flags and defaults;
            None: ``keras-dpn train`` (both kinds of evaluation, ``--preset``).
    """
    data = p.add_argument_group("data (none given: the bundled sample)")
    data.add_argument("--train-shards", help="training shard glob, e.g. 'shards/train-*.tfrecord'")
    data.add_argument("--val-shards", help="evaluation shard glob")
    if dataset in ("coco", None):
        data.add_argument("--annotations",
                          help="COCO keypoint ground truth of the evaluation images (COCO "
                               "format, also for your own keypoint set)")
        data.add_argument("--detections",
                          help="person detections (COCO results json) for evaluation; "
                               "default: ground-truth boxes")
    if dataset in ("mpii", None):
        data.add_argument("--ground-truth", help="MPII gt_valid.mat of the evaluation split")
    data.add_argument("--keypoints", metavar="SET",
                      help="keypoint set: coco, mpii or a keypoint-set FILE.json "
                           "(docs/keypoints.md); the model's head gets its joint count. "
                           "Default: the set the shards record (the sample: "
                           f"{'mpii' if dataset == 'mpii' else 'coco'})")
    data.add_argument("--sample", action="store_true",
                      help="force the sample run (the default when no data is given)")
    if dataset is None:
        data.add_argument("--preset", choices=tuple(RUN_PRESETS),
                          help="run preset (the defaults below): sample (the bundled COCO "
                               "sample), mpii_sample, coco, mpii (the paper's schedules), "
                               "custom (your keypoint set, COCO-format annotations). Default: "
                               "sample without data, mpii with --ground-truth, custom with a "
                               "--keypoints file, else coco")
    data.add_argument("--shards-dir",
                      help="sample run only: where the sample's shards are built (once) and "
                           "read; default tfrecords/sample/ in the repository (installed: "
                           "$KERAS_HOME/keras_dpn/sample_shards)")

    model = p.add_argument_group("model and schedule (the paper's defaults, and the sample "
                                 "run's)")
    model.add_argument("--model", default="DPN4_32", help="any registered variant "
                       "(keras_dpn.MODELS: DPN1_32 ... DPN4_64, HRNetW32, DPN2_HRNet); "
                       "default DPN4_32")
    model.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                       help=_default("input_size", dataset))
    model.add_argument("--epochs", type=int, help=_default("epochs", dataset))
    model.add_argument("--batch-size", type=int,
                       help="per replica; " + _default("batch_size", dataset))
    model.add_argument("--lr", type=float,
                       help="initial Adam learning rate; " + _default("lr", dataset))
    model.add_argument("--lr-epochs", type=int, nargs="*",
                       help="epochs at which the rate is multiplied by --lr-factor; "
                            + _default("lr_epochs", dataset))
    model.add_argument("--lr-factor", type=float, default=0.1, help="default 0.1")
    model.add_argument("--steps-per-epoch", type=int,
                       help="default: people in the training shards / global batch")
    model.add_argument("--augment", choices=tuple(AUGMENT),
                       help="training augmentation: reference (HRNet: scale, rotation, flip, "
                            "half body), flip only, or none; " + _default("augment", dataset))
    model.add_argument("--weights", help="initial weights (registered tag or file); "
                       "default: from scratch")

    run = p.add_argument_group("run")
    run.add_argument("--strategy", choices=("mirrored", "multi_worker", "default"),
                     default="mirrored", help="mirrored (default): all local GPUs (or the "
                     "CPU); multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG")
    run.add_argument("--backend", choices=BACKENDS,
                     help="Keras backend (default: KERAS_BACKEND, else tensorflow). jax and "
                          "torch train through model.fit with .weights.h5 checkpoints "
                          "(mirrored: all local devices on JAX, one on PyTorch; no "
                          "multi_worker) and export a .keras file")
    run.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction,
                     help="mixed_float16 on GPU, mixed_bfloat16 on CPU; default off (sample "
                          "run: on)")
    run.add_argument("--xla", action="store_true",
                     help="compile the training step: XLA on TensorFlow (JAX always "
                          "compiles), torch.compile on PyTorch")
    run.add_argument("--seed", type=int)
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic TF ops and input order (needs --seed)")
    run.add_argument("--output", help="run folder (default: runs/<dataset>_<model>_<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --output from its last checkpoint")
    run.add_argument("--eval-every", type=int, default=1,
                     help="evaluate every k epochs (default 1)")
    run.add_argument("--flip-test", action=argparse.BooleanOptionalAction,
                     help="average with the mirrored crop's heatmaps when evaluating; "
                          "default: on when the training augmentation flips, off with "
                          "--augment none (a model that never saw a mirrored person "
                          "predicts worse on one)")
    run.add_argument("--export-formats", nargs="*", metavar="FORMAT",
                     help="formats written from the best weights (keras_dpn.deploy.export.FORMATS: "
                          f"{', '.join(EXPORT_FORMATS)}), or all, or none (also: the flag "
                          "alone); default all (sample run: saved_model tflite_fp32)")
    run.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                     help="0 silent, 1 progress bars, 2 one line per epoch")
    return p


def _one_line_error_parser():
    """``keras_dpn.core.errors.ArgumentParser`` (one-line usage errors).

    The recipes load this file without the package (importing it starts Keras
    and TensorFlow, before --backend is applied): then core/errors.py, which
    needs only the standard library, is loaded the same way.
    """
    if "keras_dpn" in sys.modules:
        from keras_dpn.core.errors import ArgumentParser
        return ArgumentParser
    import importlib.util
    loader = importlib.util.spec_from_file_location(
        "keras_dpn_cli_errors", os.path.join(PACKAGE_DIR, "core", "errors.py"))
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.ArgumentParser


def build_parser(dataset="coco", prog=None):
    """The command line; ``dataset`` ("coco", "mpii" or None for every preset) picks the
    defaults and the evaluation flags."""
    p = _one_line_error_parser()(
        prog=prog or (f"train_{dataset}.py" if dataset else "keras-dpn train"),
        description=_description(dataset), formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(p, dataset)


# --------------------------------------------------------------------------- checks
def _die(message):
    raise ValueError(message)


def _backend_mismatch(name):
    """The loaded Keras backend when it is not ``name`` (Keras reads KERAS_BACKEND once)."""
    loaded = sys.modules.get("keras")
    if name is None or loaded is None or loaded.backend.backend() == name:
        return None
    return loaded.backend.backend()


def _check_installed(name):
    import importlib.util
    try:
        found = importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: blocked
        found = False
    if not found:
        _die(f"--backend {name}: {name} is not installed (pip install "
             f"{'jax[cpu]' if name == 'jax' else name}). Received: backend={name!r}")


def select_backend(name):
    """``--backend`` -> ``KERAS_BACKEND``, or a one-line error when Keras runs another."""
    if name is None:
        return
    _check_installed(name)
    loaded = _backend_mismatch(name)
    if loaded is not None:
        _die(f"--backend {name}: Keras is already imported here with the {loaded} backend; "
             f"start a new process. Received: backend={name!r}")
    os.environ["KERAS_BACKEND"] = name


def _export_formats():
    try:
        from keras_dpn.deploy.export import FORMATS
    except ImportError:  # no export extra: a .keras file only
        return ()
    return tuple(FORMATS)


def default_shards_dir():
    """Where the sample's shards are built: tfrecords/sample/ of a checkout, else the cache."""
    if REPO:
        return os.path.join(REPO, "tfrecords", "sample")
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras_dpn", "sample_shards")


def sample_shards(sample, shards_dir=None):
    """The shard pattern of bundled sample ``sample`` ("coco" / "mpii"), built when missing."""
    import glob

    from keras_dpn import data
    s = SAMPLE[sample]
    prefix = os.path.join(shards_dir or default_shards_dir(), s["name"])
    pattern = prefix + "-*.tfrecord"
    if not glob.glob(pattern) or not os.path.exists(prefix + "-manifest.json"):
        print(f"Building the sample shards {pattern} ...", flush=True)
        build = data.build_coco_shards if sample == "coco" else data.build_mpii_shards
        build(s["annotations"], s["images"], prefix, s["shards"], progress=False, verbose=False)
    return pattern


def _check_writable_folder(path, flag):
    """A folder that exists or can be created, and can be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        _die(f"{flag} is a file, not a folder. Received: {path!r}")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        _die(f"{flag} cannot be created: {existing} is a file, not a folder. Received: {path!r}")
    if not os.access(existing, os.W_OK | os.X_OK):
        _die(f"{flag} is not writable ({existing} refuses writes). Received: {path!r}")


def _check_readable_file(path, flag):
    if not os.path.isfile(path):
        _die(f"{flag} is not a file. Received: {path!r}")
    if not os.access(path, os.R_OK):
        _die(f"{flag} is not readable. Received: {path!r}")


def _resolve_export_formats(values, default):
    """``--export-formats`` -> a tuple of formats, () for none, None for all."""
    if values is None:
        return default
    names = [v for value in values for v in value.replace(",", " ").split()]
    if not names or names == ["none"]:
        return ()
    if names == ["all"]:
        return None
    known = _export_formats()
    unknown = [n for n in names if n not in known]
    if unknown or len(names) != len(set(names)):
        _die(f"--export-formats takes formats of {list(known)}, or 'all', or 'none' alone"
             f"{'' if known else ' (the export extra is not installed: none only)'}. "
             f"Received: export_formats={values!r}")
    return tuple(names)


def _choose_preset(args, dataset, given):
    """The run preset: --preset, else from the recipe and the data flags."""
    if getattr(args, "preset", None):
        name = args.preset
        if RUN_PRESETS[name]["sample"] and given:
            _die(f"--preset {name} trains on the bundled sample; drop the data arguments. "
                 f"Received: {given!r}")
        if args.sample and not RUN_PRESETS[name]["sample"]:
            _die(f"--sample runs a sample preset (sample, mpii_sample). Received: preset={name!r}")
        return name
    if args.sample or not given:
        family = dataset or ("mpii" if args.keypoints == "mpii" else "coco")
        return _sample_preset(family)
    if dataset == "mpii" or "ground_truth" in given:
        return "mpii"
    if args.keypoints in (None, "coco"):
        return "coco"
    return "custom"


def _check_data_flags(args, preset, explicit, given):
    if preset["sample"]:
        if given:
            _die(f"--sample uses the bundled sample; drop the data arguments. Received: {given!r}")
        args.shards_dir = os.path.abspath(args.shards_dir or default_shards_dir())
        _check_writable_folder(args.shards_dir, "--shards-dir")
        _check_readable_file(SAMPLE[preset["sample"]]["annotations"],
                             "The sample's annotation file (pass your data with "
                             "--train-shards/--val-shards/--annotations)")
        return
    if args.shards_dir is not None:
        _die("--shards-dir is where the sample run builds its shards; with your data, "
             f"name the shards with --train-shards/--val-shards. Received: "
             f"shards_dir={args.shards_dir!r}")
    needed = ("train_shards", "val_shards",
              "annotations" if preset["evaluation"] == "coco" else "ground_truth")
    missing = [f"--{k.replace('_', '-')}" for k in needed if explicit.get(k) is None]
    if missing:
        _die(f"Training on your data needs {', '.join(missing)} as well (or no data "
             f"argument at all for the sample run). Received: {given!r}")
    other = "ground_truth" if preset["evaluation"] == "coco" else "annotations"
    if explicit.get(other) is not None:
        _die(f"--{other.replace('_', '-')} belongs to the other evaluation (COCO: --annotations, "
             f"MPII: --ground-truth). Received: {given!r}")
    for k in ("annotations", "detections", "ground_truth"):
        if explicit.get(k) is not None:
            _check_readable_file(explicit[k], f"--{k.replace('_', '-')}")


def _resolve_keypoints(args, preset):
    """--keypoints (checked now: a bad file fails before any work) -> KeypointSpec.

    None for your data without --keypoints: the shards' own set, read with them.
    """
    from keras_dpn.core.keypoints import get_keypoint_spec
    if args.keypoints is None:
        return get_keypoint_spec(preset["keypoints"]) if preset["sample"] else None
    try:
        return get_keypoint_spec(args.keypoints)
    except ValueError as e:
        _die(f"--keypoints: {e}")


def _check_numbers(args):
    for k in ("epochs", "batch_size", "eval_every", "steps_per_epoch"):
        value = getattr(args, k)
        if value is not None and value < 1:
            _die(f"--{k.replace('_', '-')} must be >= 1. Received: {k}={value!r}")
    h, w = args.input_size
    if min(h, w) < 32 or h % 4 or w % 4:
        _die("--input-size must be at least 32x32 and a multiple of 4 (the heatmaps are a "
             f"quarter of it). Received: input_size={h} {w}")
    if not args.lr > 0 or not args.lr_factor > 0:
        _die(f"--lr and --lr-factor must be > 0. Received: lr={args.lr!r}, "
             f"lr_factor={args.lr_factor!r}")
    if list(args.lr_epochs) != sorted(args.lr_epochs) or any(e < 0 for e in args.lr_epochs):
        _die(f"--lr-epochs must be increasing epochs >= 0. Received: lr_epochs={args.lr_epochs!r}")
    if args.deterministic and args.seed is None:
        _die("--deterministic needs --seed. Received: seed=None")


def _resolve_output(args):
    from keras_dpn.training import trainer as training
    if args.resume and not args.output:
        _die("--resume continues the run in --output; name it. Received: output=None")
    if not args.output:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.output = os.path.join(REPO or os.getcwd(), "runs",
                                   f"{args.run_name}_{args.model}_{stamp}")
    args.output = os.path.abspath(args.output)
    _check_writable_folder(args.output, "--output")
    if args.resume:
        if not os.path.isdir(args.output):
            _die("--resume: there is no run to resume, the folder does not exist (drop "
                 f"--resume to start one). Received: output={args.output!r}")
        if training.read_state(args.output) is None and not os.path.exists(
                os.path.join(args.output, training.CHECKPOINT_DIR, "checkpoint")):
            _die("--resume: the folder holds no checkpoint to resume from (drop --resume to "
                 f"start a run there). Received: output={args.output!r}")


def resolve_config(args, dataset="coco"):
    """Picks the run preset, fills in its defaults and checks every argument and path.

    No TensorFlow work. Sets ``args.preset``, ``args.dataset`` (the
    evaluation: "coco" or "mpii"), ``args.sample``, ``args.run_name`` and
    ``args.keypoint_spec`` (None: the shards' own set).

    Raises:
        ValueError: one line on anything the run would trip over later: data
            files, the keypoint set, the output folder, export formats, the model.
    """
    import keras_dpn

    explicit = {k: getattr(args, k, None) for k in _DATA_FLAGS}
    given = {k: v for k, v in explicit.items() if v is not None}
    args.preset = _choose_preset(args, dataset, given)
    preset = RUN_PRESETS[args.preset]
    args.sample = bool(preset["sample"])
    args.dataset = preset["evaluation"]
    _check_data_flags(args, preset, explicit, given)
    args.keypoint_spec = _resolve_keypoints(args, preset)
    for key in PRESET_FLAGS:
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.export_formats = _resolve_export_formats(args.export_formats, preset["export_formats"])
    if args.flip_test is None:
        args.flip_test = AUGMENT[args.augment].get("flip_prob", 0.5) > 0

    if args.model not in keras_dpn.MODELS:
        _die(f"Unknown --model. Expected one of {sorted(keras_dpn.MODELS)}. "
             f"Received: model={args.model!r}")
    if args.weights is not None and (os.sep in args.weights or args.weights.endswith(
            (".h5", ".keras"))):  # a file, not a registered tag
        _check_readable_file(args.weights, "--weights")
    _check_numbers(args)
    if args.sample:
        args.run_name = SAMPLE[preset["sample"]]["name"]
    else:  # the output folder's name: the set when it is known now
        args.run_name = (args.keypoint_spec or argparse.Namespace(name=args.dataset)).name
    _resolve_output(args)
    return args


# --------------------------------------------------------------------------- the run
def _first_difference(a, b):
    mine, theirs = a.to_dict(), b.to_dict()
    return next((f for f in mine if mine[f] != theirs.get(f)), "name")


def shards_keypoint_set(args, patterns):
    """The run's keypoint set: --keypoints (or the sample's), else the shards' own.

    Every shard set that records its keypoint set must record this one.

    Raises:
        ValueError: one line naming the shards, both sets and the first field
            that differs.
    """
    from keras_dpn.data import shard_keypoint_spec
    from keras_dpn.core.keypoints import get_keypoint_spec
    recorded = [(p, shard_keypoint_spec(p)) for p in dict.fromkeys(patterns)]
    spec, source = args.keypoint_spec, None
    if spec is None:
        source, spec = next(((p, s) for p, s in recorded if s is not None), (None, None))
        if spec is None:  # no manifest says: the preset's set
            spec = get_keypoint_spec(RUN_PRESETS[args.preset]["keypoints"] or "coco")
    for pattern, theirs in recorded:
        if theirs is None or theirs == spec:
            continue
        field = _first_difference(spec, theirs)
        if source is None:
            _die(f"Keypoint set mismatch: --keypoints {args.keypoints or spec.name} is the set "
                 f"{spec.name!r} ({spec.num_keypoints} keypoints), the shards {pattern} record "
                 f"{theirs.name!r} ({theirs.num_keypoints} keypoints); they differ in `{field}`. "
                 "Build the shards with this set, or leave --keypoints out to use the shards' "
                 "own.")
        _die(f"Keypoint set mismatch: the shards {source} record the set {spec.name!r} "
             f"({spec.num_keypoints} keypoints), the shards {pattern} record {theirs.name!r} "
             f"({theirs.num_keypoints} keypoints); they differ in `{field}`. Train and "
             "evaluate on shards of one keypoint set.")
    return spec


def build_data(args, strategy, chief):
    """Shards -> (keypoint set, people, steps, training and evaluation datasets).

    Everything that can be wrong with the data fails here, before training.
    """
    from keras_dpn.data import AugmentConfig, build_dataset, resolve_shards

    if args.sample:
        sample = RUN_PRESETS[args.preset]["sample"]
        train_pattern = val_pattern = sample_shards(sample, args.shards_dir)
        annotations = SAMPLE[sample]["annotations"] if args.dataset == "coco" else None
        ground_truth, detections = SAMPLE[sample].get("ground_truth"), None
    else:
        train_pattern, val_pattern = args.train_shards, args.val_shards
        annotations = getattr(args, "annotations", None)
        ground_truth = getattr(args, "ground_truth", None)
        detections = getattr(args, "detections", None)

    spec = shards_keypoint_set(args, (train_pattern, val_pattern))
    train_set = resolve_shards(train_pattern, spec.num_keypoints, spec_name=spec.name)
    people = sum(p for p in train_set.people if p is not None)
    global_batch = args.batch_size * strategy.num_replicas_in_sync
    if args.steps_per_epoch:
        steps = args.steps_per_epoch
    elif people:
        steps = max(1, people // global_batch)
    else:
        _die(f"Cannot tell how many people the training shards hold (no manifest); pass "
             f"--steps-per-epoch. Received: train_shards={train_pattern!r}")
    train_ds = build_dataset(train_pattern, dataset=spec, training=True,
                             batch_size=global_batch, input_size=tuple(args.input_size),
                             repeat=True, seed=args.seed, deterministic=args.deterministic,
                             augment=AugmentConfig(**AUGMENT[args.augment]))
    eval_ds = build_dataset(val_pattern, dataset=spec, training=False,
                            batch_size=max(args.batch_size, 32), input_size=tuple(args.input_size),
                            detections=detections, deterministic=True,
                            verbose=chief and args.verbose > 0)
    return dict(spec=spec, people=people, steps=steps, train=train_pattern, val=val_pattern,
                annotations=annotations, ground_truth=ground_truth, train_ds=train_ds,
                eval_ds=eval_ds)


def evaluation_callback(args, data):
    """COCO AP (the set's own sigmas) or MPII PCKh after every --eval-every epochs."""
    from keras_dpn.training import callbacks as dpn_callbacks
    eval_dir = os.path.join(args.output, "eval")
    # verbose 2 (one line per epoch) keeps the prediction progress bar to one line too.
    if args.dataset == "coco":
        cb = dpn_callbacks.COCOEvaluationCallback(
            data["eval_ds"], data["annotations"], every=args.eval_every,
            keypoint_spec=data["spec"], flip_test=args.flip_test, output_dir=eval_dir,
            results_name="keypoints_val_results_{epoch:03d}.json", verbose=args.verbose)
        cb.evaluator.coco  # loads the ground truth now: keypoint count, path
    else:
        cb = dpn_callbacks.MPIIEvaluationCallback(
            data["eval_ds"], data["ground_truth"], every=args.eval_every,
            keypoint_spec=data["spec"], flip_test=args.flip_test, output_dir=eval_dir,
            results_name="pred_valid_{epoch:03d}.mat", verbose=args.verbose)
    return cb


def _monitor(args):
    return "val_AP" if args.dataset == "coco" else "val_PCKh"


def make_trainer(args, data, strategy):
    import keras_dpn
    from keras_dpn.training import trainer as training
    spec = data["spec"]

    def model_fn():
        # From scratch, the builders start the heatmap head at the HRNet
        # reference's N(0, 0.001) (their default head_initializer).
        return keras_dpn.get_model(args.model, num_keypoints=spec.num_keypoints,
                                   input_shape=(*args.input_size, 3), weights=args.weights)

    recipe = {k: v for k, v in vars(args).items() if k != "keypoint_spec"}
    return training.Trainer(
        model_fn, output_dir=args.output, strategy=strategy, learning_rate=args.lr,
        lr_boundaries=tuple(args.lr_epochs), lr_factor=args.lr_factor, epochs=args.epochs,
        steps_per_epoch=data["steps"], jit_compile=True if args.xla else "auto",
        mixed_precision=bool(args.mixed_precision),
        monitor=_monitor(args), verbose=args.verbose, seed=args.seed,
        deterministic=args.deterministic,
        # Recorded in OUTPUT/run_config.json (the set as data), which
        # `keras-dpn publish` reads.
        run_info=dict(keypoints=spec, recipe=recipe, dataset=dict(
            name=args.run_name if args.sample else spec.name,
            sample=args.sample, train=data["train"], val=data["val"], people=data["people"])))


def _announce(args, data, trainer, replicas):
    mode = ("SAMPLE RUN: trains on the bundled sample and evaluates on the same images "
            "(memorization, not generalization)" if args.sample else "training")
    spec = data["spec"]
    print(f"{mode}: {args.model} {args.input_size[0]}x{args.input_size[1]}, {spec.name} "
          f"({spec.num_keypoints} joints), {data['people']} people, {replicas} replica(s) x "
          f"batch {args.batch_size}, {data['steps']} steps x {args.epochs} epochs, "
          f"lr {args.lr:g} x{args.lr_factor:g} at epochs {list(args.lr_epochs)}, "
          f"augmentation {args.augment}, flip test {'on' if args.flip_test else 'off'}, "
          f"strategy {args.strategy}, loop {trainer.loop}, precision {trainer.precision}"
          f"{', XLA' if args.xla else ''}.\nOutput: {args.output}", flush=True)


def plot_curves(args):
    """OUTPUT/curves.png from history.csv, or None."""
    from keras_dpn.training import trainer as training
    history = os.path.join(args.output, training.HISTORY_CSV)
    if not os.path.isfile(history):
        return None
    from keras_dpn.inference import visualize
    return visualize.plot_history(history, os.path.join(args.output, "curves.png"),
                                  metrics=(_monitor(args),))


def deployment_model(args, trainer, spec, best):
    """The float32 model with the best weights (or the last ones)."""
    import keras_dpn
    from keras_dpn.training import trainer as training
    model = trainer.model
    if trainer.precision != "float32":
        # Deployment files are float32: TFLite has no bfloat16 kernels and
        # float16 belongs to its own quantized format. The weights of a
        # mixed-precision model are float32 already.
        with training.precision_policy("float32"):
            model = keras_dpn.get_model(args.model, num_keypoints=spec.num_keypoints,
                                        input_shape=(*args.input_size, 3))
        model.set_weights(trainer.model.get_weights())
    if best:
        model.load_weights(trainer.best_weights_path)
    return model


def export_files(args, model, spec, backend):
    """OUTPUT/export/: the --export-formats files (or a .keras file); returns {format: path}."""
    export_dir = os.path.join(args.output, "export")
    # The exporters trace TensorFlow graphs: on JAX / PyTorch the run keeps a
    # .keras file (keras-dpn export converts it in a TensorFlow process).
    if _export_formats() and backend == "tensorflow":
        from keras_dpn.deploy import export
        kwargs = {} if args.export_formats is None else {"formats": args.export_formats}
        return export.export_model(model, export_dir, keypoints=spec, overwrite=True,
                                   verbose=args.verbose > 0, **kwargs)
    os.makedirs(export_dir, exist_ok=True)  # no export extra, or not TensorFlow
    path = os.path.join(export_dir, f"{args.model}.keras")
    model.save(path)
    return {"keras": path}


def _preview_people(sample):
    """The preview image's path and its people's boxes (x, y, w, h), from the sample."""
    s = SAMPLE[sample]
    with open(s["annotations"]) as f:
        ann = json.load(f)
    if sample == "coco":
        image = next(im for im in ann["images"] if im["id"] == PREVIEW_IMAGE["coco"])
        boxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == image["id"]
                 and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
        return os.path.join(s["images"], image["file_name"]), boxes
    # MPII: the person's window is 200 * scale pixels around its center.
    person = ann[PREVIEW_IMAGE["mpii"]]
    (cx, cy), size = person["center"], 200.0 * person["scale"]
    return os.path.join(s["images"], person["image"]), [[cx - size / 2, cy - size / 2, size,
                                                         size]]


def draw_prediction(model_path, sample, out_path, keypoints=None):
    """Draws what an exported model predicts on the bundled preview image.

    Goes through :class:`keras_dpn.PoseEstimator` (the deployment path: crop
    from the person boxes, the exported file, heatmap decoding) and
    :func:`keras_dpn.inference.visualize.draw_skeleton` (the set's own skeleton).

    Args:
        model_path: an exported file or folder.
        sample: whose preview image: "coco" or "mpii".
        out_path: the JPEG written.
        keypoints: the model's keypoint set (default: the sample's).

    Returns:
        ``out_path``.
    """
    import cv2

    import keras_dpn
    from keras_dpn.core import io_utils
    from keras_dpn.inference import visualize

    spec = keras_dpn.get_keypoint_spec(keypoints or sample)
    image_path, boxes = _preview_people(sample)
    estimator = keras_dpn.PoseEstimator(model_path, keypoints=spec)
    image = keras_dpn.inference.estimator.read_image(image_path)
    people = estimator.predict(image, boxes=boxes)
    drawn = visualize.draw_skeleton(image, people, spec=spec, boxes=boxes)
    ok, jpeg = cv2.imencode(".jpg", drawn[..., ::-1])
    if not ok:
        raise OSError(f"Could not encode the prediction picture {out_path}")
    with io_utils.atomic_file(out_path) as f:
        f.write(jpeg.tobytes())
    return out_path


def _deploy(args, trainer, spec, written):
    """Export and the prediction picture, after training (chief only)."""
    best = os.path.exists(trainer.best_weights_path)
    model = deployment_model(args, trainer, spec, best)
    files = export_files(args, model, spec, trainer.backend)
    written["export (best weights)" if best else "export"] = os.path.join(args.output, "export")
    # The picture comes from an exported file through PoseEstimator, the way
    # a deployed model is used; the fp32 TFLite file is what phones run.
    source = next((files[f] for f in ("tflite_fp32", "saved_model", "onnx", "tflite_fp16",
                                       "keras") if f in files), None)
    sample = RUN_PRESETS[args.preset]["sample"] or args.dataset
    if source is not None and os.path.isfile(SAMPLE[sample]["annotations"]):
        written[f"prediction ({os.path.basename(source)})"] = draw_prediction(
            source, sample, os.path.join(args.output, "prediction.jpg"), keypoints=spec)


def _report(args, trainer, written):
    from keras_dpn.training import trainer as training
    state = training.read_state(args.output) or {}
    where = " on the training images" if args.sample else ""
    score = state.get("best")
    print("\nDone" + (" (sample run)" if args.sample else "") +
          f": {state.get('epoch', '?')} epoch(s), best {_monitor(args)}{where} "
          f"{'none' if score is None else f'{score:.4f}'}. Outputs:")
    for what, path in written.items():
        print(f"  {what:38s} {path}")


def run(args):
    """The training job of resolved ``args`` (:func:`resolve_config`); returns the exit status."""
    # The strategy first: a multi-worker strategy must configure collective
    # ops before any other TensorFlow work (datasets, seeding, models).
    from keras_dpn.training import trainer as training
    strategy = training.get_strategy(args.strategy)
    chief = training.is_chief(strategy)
    data = build_data(args, strategy, chief)
    # Evaluation runs on the chief only: one results file, and the other
    # workers do not wait on predictions they would throw away.
    callbacks = [evaluation_callback(args, data)] if chief else []
    trainer = make_trainer(args, data, strategy)
    if chief:
        _announce(args, data, trainer, strategy.num_replicas_in_sync)
    try:
        trainer.fit(data["train_ds"], callbacks=callbacks, resume=args.resume)
    except training.TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if not chief:
        return 0

    written = {"run folder": args.output,
               "checkpoints (resume with --resume)": trainer.checkpoint_dir,
               "TensorBoard logs": os.path.join(args.output, training.LOG_DIR),
               "history": os.path.join(args.output, training.HISTORY_CSV),
               "evaluation results": os.path.join(args.output, "eval")}
    if os.path.exists(trainer.best_weights_path):
        written[f"best weights (by {_monitor(args)})"] = trainer.best_weights_path
    curves = plot_curves(args)
    if curves:
        written["training curves"] = curves
    if args.export_formats != ():
        _deploy(args, trainer, data["spec"], written)
    _report(args, trainer, written)
    return 0


def _respawn(argv, dataset, backend):
    """Runs the command again in a process whose Keras starts on ``backend``."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.call([sys.executable, "-m", "keras_dpn.cli.train",
                            dataset or "any", *argv], env=env)


def main(argv=None, dataset="coco", prog=None, respawn=False):
    """Parses ``argv``, checks it, trains; returns the exit status.

    Args:
        argv: the flags (default ``sys.argv[1:]``).
        dataset: "coco" / "mpii" (the recipes' defaults and flags) or None
            (``keras-dpn train``: every preset).
        prog: the program name in ``--help`` and usage errors.
        respawn: a process entry point: ``--backend`` other than the loaded
            Keras backend reruns the command in a new process (Keras reads
            the backend once, and importing keras_dpn imports Keras).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(dataset, prog).parse_args(argv)
    try:
        if respawn and _backend_mismatch(args.backend):
            _check_installed(args.backend)
            return _respawn(argv, dataset, args.backend)
        select_backend(args.backend)
        resolve_config(args, dataset)
        return run(args)
    except (ValueError, FileExistsError, ImportError) as e:
        if isinstance(e, ImportError) and type(e).__name__ != "MissingDependencyError":
            raise  # a broken install, not a missing optional package: keep the traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # A bad shard met while training or evaluating: the line that names it,
        # not TensorFlow's graph trace around it.
        line = None
        if "keras_dpn.data.pipeline" in sys.modules:
            line = sys.modules["keras_dpn.data.pipeline"].shard_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # python -m keras_dpn.cli.train coco|mpii|any [flags]: the respawned process.
    family = sys.argv[1] if len(sys.argv) > 1 else "any"
    sys.exit(main(sys.argv[2:], dataset=None if family == "any" else family,
                  prog=None if family == "any" else f"train_{family}.py"))
