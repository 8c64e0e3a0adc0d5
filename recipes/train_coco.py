"""Train a DPN (or any registered variant) on COCO keypoints, with COCO AP every epoch.

With no arguments it runs the whole job on the bundled sample
(``sample_data/coco``, 124 people): builds the shards if missing, trains
DPN4_32 until it has memorized the sample, evaluates COCO AP after each
epoch on the same images (so the AP measures memorization, not
generalization), exports the best weights, and draws the exported model's
predictions on a sample image. Under 10 minutes on two idle CPU cores.

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
``--batch-size`` per replica::

    python recipes/train_coco.py                                   # the sample run
    python recipes/train_coco.py --train-shards 'shards/coco_train-*.tfrecord' \\
        --val-shards 'shards/coco_val-*.tfrecord' \\
        --annotations annotations/person_keypoints_val2017.json \\
        --detections COCO_val2017_detections_AP_H_56_person.json --output runs/dpn4_32
    python recipes/train_coco.py ... --output runs/dpn4_32 --resume   # after a kill
    TF_CONFIG='{...}' python recipes/train_coco.py ... --strategy multi_worker

Exit status: 0 done, 2 bad input (reported before anything is trained or
written), 3 the loss diverged (the last good checkpoint is kept).
"""

import argparse
import datetime
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The bundled samples. Their shards are built on first use under
# --shards-dir (default: tfrecords/sample/, ignored by git) and reused.
SAMPLE = {
    "coco": dict(annotations=os.path.join(REPO, "sample_data", "coco", "annotations",
                                          "person_keypoints_sample.json"),
                 images=os.path.join(REPO, "sample_data", "coco", "images"),
                 name="coco_sample", shards=2),
    "mpii": dict(annotations=os.path.join(REPO, "sample_data", "mpii", "valid_sample.json"),
                 images=os.path.join(REPO, "sample_data", "mpii", "images"),
                 name="mpii_sample", shards=1,
                 ground_truth=os.path.join(REPO, "tests", "data", "mpii", "gt_valid.mat")),
}
DEFAULT_SHARDS_DIR = os.path.join(REPO, "tfrecords", "sample")
# The image the run draws its exported model's predictions on.
PREVIEW_IMAGE = {"coco": 40083, "mpii": 0}

# The sample run (see the module docstring for the reasons). Measured on the
# 2-core development machine: README, section "Training".
SAMPLE_RUN = dict(input_size={"coco": (128, 96), "mpii": (128, 128)}, epochs=50, batch_size=4,
                  lr=1e-3, lr_epochs=(44,), steps_per_epoch=None, augment="none",
                  mixed_precision=True, export_formats=("saved_model", "tflite_fp32"))
# The paper's schedule, for real data.
PAPER_RUN = dict(input_size={"coco": (256, 192), "mpii": (256, 256)}, epochs=140, batch_size=32,
                 lr=1e-3, lr_epochs=(90, 120), steps_per_epoch=None, augment="reference",
                 mixed_precision=False, export_formats=None)

# Training augmentation presets (keyword arguments of keras_dpn.data.build_dataset).
AUGMENT = {
    "none": dict(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0),
    "flip": dict(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.5, half_body_prob=0.0),
    "reference": {},  # the HRNet reference: build_dataset's defaults
}

BACKENDS = ("tensorflow", "jax", "torch")

# keras_dpn.export.FORMATS, spelled out so that --help needs no TensorFlow
# import (a test keeps the two equal).
EXPORT_FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8_dynamic",
                  "tflite_int8", "tflite_keypoints", "onnx")


def _default(key, dataset):
    paper, sample = PAPER_RUN[key], SAMPLE_RUN[key]
    if key == "input_size":
        paper, sample = "x".join(map(str, paper[dataset])), "x".join(map(str, sample[dataset]))
    elif isinstance(paper, tuple):
        paper, sample = " ".join(map(str, paper)), " ".join(map(str, sample))
    return f"default {paper} (sample run: {sample})"


def build_parser(dataset="coco"):
    """The recipe's command line; ``dataset`` picks the defaults (COCO or MPII)."""
    p = argparse.ArgumentParser(
        prog=f"train_{dataset}.py",
        description="\n\n".join(
            [__doc__.split("\n\n")[0] if dataset == "coco" else
             "Train a DPN on MPII, with PCKh@0.5 every epoch."] + __doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (none given: the bundled sample)")
    data.add_argument("--train-shards", help="training shard glob, e.g. 'shards/train-*.tfrecord'")
    data.add_argument("--val-shards", help="evaluation shard glob")
    if dataset == "coco":
        data.add_argument("--annotations",
                          help="COCO keypoint ground truth of the evaluation images")
        data.add_argument("--detections",
                          help="person detections (COCO results json) for evaluation; "
                               "default: ground-truth boxes")
    else:
        data.add_argument("--ground-truth", help="MPII gt_valid.mat of the evaluation split")
    data.add_argument("--sample", action="store_true",
                      help="force the sample run (the default when no data is given)")
    data.add_argument("--shards-dir",
                      help="sample run only: where the sample's shards are built (once) and "
                           "read; default tfrecords/sample/ in the repository")

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
                     help="formats written from the best weights (keras_dpn.export.FORMATS: "
                          f"{', '.join(EXPORT_FORMATS)}), or all, or none (also: the flag "
                          "alone); default all (sample run: saved_model tflite_fp32)")
    run.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    return p


def _die(message):
    raise ValueError(message)


def select_backend(name):
    """``--backend`` -> ``KERAS_BACKEND``, before anything imports Keras (which reads it once)."""
    import importlib.util
    if name is None:
        return
    loaded = sys.modules.get("keras")
    if loaded is not None:  # main() called in a process that already imported Keras
        if loaded.backend.backend() != name:
            _die(f"--backend {name}: Keras is already imported here with the "
                 f"{loaded.backend.backend()} backend; start a new process. "
                 f"Received: backend={name!r}")
        return
    if importlib.util.find_spec(name) is None:
        _die(f"--backend {name}: {name} is not installed (pip install "
             f"{'jax[cpu]' if name == 'jax' else name}). Received: backend={name!r}")
    os.environ["KERAS_BACKEND"] = name


def _export_formats():
    try:
        from keras_dpn.export import FORMATS
    except ImportError:  # no export extra: a .keras file only
        return ()
    return tuple(FORMATS)


def _sample_prefix(dataset, shards_dir):
    return os.path.join(shards_dir, SAMPLE[dataset]["name"])


def _sample_shards(dataset, shards_dir=DEFAULT_SHARDS_DIR):
    """The sample's shard pattern, built under ``shards_dir`` when missing."""
    import glob

    from keras_dpn import data
    s = SAMPLE[dataset]
    prefix = _sample_prefix(dataset, shards_dir)
    pattern = prefix + "-*.tfrecord"
    if not glob.glob(pattern) or not os.path.exists(prefix + "-manifest.json"):
        print(f"Building the sample shards {pattern} ...", flush=True)
        build = data.build_coco_shards if dataset == "coco" else data.build_mpii_shards
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


def resolve_config(args, dataset):
    """Fills in the defaults and checks every argument and path (no TF work).

    Raises ``ValueError`` with a one-line message on anything the run would
    trip over later: data files, the output folder, export formats, the model.
    """
    import keras_dpn
    from keras_dpn import training

    explicit = {k: getattr(args, k, None) for k in
                ("train_shards", "val_shards", "annotations", "detections", "ground_truth")}
    given = {k: v for k, v in explicit.items() if v is not None}
    args.sample = args.sample or not given
    if args.sample:
        if given:
            _die(f"--sample uses the bundled sample; drop the data arguments. Received: {given!r}")
        args.shards_dir = os.path.abspath(args.shards_dir or DEFAULT_SHARDS_DIR)
        _check_writable_folder(args.shards_dir, "--shards-dir")
        _check_readable_file(SAMPLE[dataset]["annotations"], "The sample's annotation file")
    else:
        if args.shards_dir is not None:
            _die("--shards-dir is where the sample run builds its shards; with your data, "
                 f"name the shards with --train-shards/--val-shards. Received: "
                 f"shards_dir={args.shards_dir!r}")
        missing = [f"--{k.replace('_', '-')}" for k in
                   (("train_shards", "val_shards", "annotations") if dataset == "coco"
                    else ("train_shards", "val_shards", "ground_truth"))
                   if explicit.get(k) is None]
        if missing:
            _die(f"Training on your data needs {', '.join(missing)} as well (or no data "
                 f"argument at all for the sample run). Received: {given!r}")
        for k in ("annotations", "detections", "ground_truth"):
            if explicit.get(k) is not None:
                _check_readable_file(explicit[k], f"--{k.replace('_', '-')}")
    defaults = SAMPLE_RUN if args.sample else PAPER_RUN
    for key, value in defaults.items():
        if key == "export_formats":
            continue
        if getattr(args, key) is None:
            setattr(args, key, value[dataset] if key == "input_size" else value)
    args.export_formats = _resolve_export_formats(args.export_formats, defaults["export_formats"])
    if args.flip_test is None:
        args.flip_test = AUGMENT[args.augment].get("flip_prob", 0.5) > 0

    if args.model not in keras_dpn.MODELS:
        _die(f"Unknown --model. Expected one of {sorted(keras_dpn.MODELS)}. "
             f"Received: model={args.model!r}")
    if args.weights is not None and (os.sep in args.weights or args.weights.endswith(
            (".h5", ".keras"))):  # a file, not a registered tag
        _check_readable_file(args.weights, "--weights")
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

    if args.resume and not args.output:
        _die("--resume continues the run in --output; name it. Received: output=None")
    if not args.output:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        kind = f"{dataset}_sample" if args.sample else dataset
        args.output = os.path.join(REPO, "runs", f"{kind}_{args.model}_{stamp}")
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
    return args


def _preview_people(dataset):
    """The preview image's path and its people's boxes (x, y, w, h), from the sample."""
    s = SAMPLE[dataset]
    with open(s["annotations"]) as f:
        ann = json.load(f)
    if dataset == "coco":
        image = next(im for im in ann["images"] if im["id"] == PREVIEW_IMAGE["coco"])
        boxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == image["id"]
                 and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
        return os.path.join(s["images"], image["file_name"]), boxes
    # MPII: the person's window is 200 * scale pixels around its center.
    person = ann[PREVIEW_IMAGE["mpii"]]
    (cx, cy), size = person["center"], 200.0 * person["scale"]
    return os.path.join(s["images"], person["image"]), [[cx - size / 2, cy - size / 2, size,
                                                         size]]


def draw_prediction(model_path, dataset, out_path):
    """Draws what an exported model predicts on the bundled preview image.

    Goes through :class:`keras_dpn.PoseEstimator` (the deployment path: crop
    from the person boxes, the exported file, heatmap decoding) and
    :func:`keras_dpn.visualize.draw_skeleton`. Returns ``out_path``.
    """
    import cv2

    import keras_dpn
    from keras_dpn import io_utils, visualize

    image_path, boxes = _preview_people(dataset)
    estimator = keras_dpn.PoseEstimator(model_path, keypoints=dataset)
    image = keras_dpn.inference.read_image(image_path)
    people = estimator.predict(image, boxes=boxes)
    drawn = visualize.draw_skeleton(image, people, spec=dataset, boxes=boxes)
    ok, jpeg = cv2.imencode(".jpg", drawn[..., ::-1])
    if not ok:
        raise OSError(f"Could not encode the prediction picture {out_path}")
    with io_utils.atomic_file(out_path) as f:
        f.write(jpeg.tobytes())
    return out_path


def run(args, dataset="coco"):
    """The training job. Returns the process exit status."""
    # The strategy first: a multi-worker strategy must configure collective
    # ops before any other TensorFlow work (datasets, seeding, models).
    from keras_dpn import training
    strategy = training.get_strategy(args.strategy)

    import keras_dpn
    from keras_dpn import callbacks as dpn_callbacks
    from keras_dpn.data import build_dataset, resolve_shards
    from keras_dpn.keypoints import get_keypoint_spec

    spec = get_keypoint_spec(dataset)
    chief = training.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas

    if args.sample:
        train_pattern = val_pattern = _sample_shards(dataset, args.shards_dir)
        annotations = SAMPLE[dataset]["annotations"]
        ground_truth = SAMPLE[dataset].get("ground_truth")
        detections = None
    else:
        train_pattern, val_pattern = args.train_shards, args.val_shards
        annotations = getattr(args, "annotations", None)
        ground_truth = getattr(args, "ground_truth", None)
        detections = getattr(args, "detections", None)

    # Everything that can be wrong with the data fails here, before training.
    train_set = resolve_shards(train_pattern, spec.num_keypoints)
    people = sum(p for p in train_set.people if p is not None)
    if args.steps_per_epoch:
        steps = args.steps_per_epoch
    elif people:
        steps = max(1, people // global_batch)
    else:
        _die(f"Cannot tell how many people the training shards hold (no manifest); pass "
             f"--steps-per-epoch. Received: train_shards={train_pattern!r}")
    # Every registered variant predicts heatmaps at 1/4 of the input.
    heatmap_size = (args.input_size[0] // 4, args.input_size[1] // 4)
    train_ds = build_dataset(train_pattern, dataset=dataset, training=True,
                             batch_size=global_batch, input_size=tuple(args.input_size),
                             heatmap_size=heatmap_size, repeat=True, seed=args.seed,
                             deterministic=args.deterministic, **AUGMENT[args.augment])
    eval_ds = build_dataset(val_pattern, dataset=dataset, training=False,
                            batch_size=max(args.batch_size, 32), input_size=tuple(args.input_size),
                            heatmap_size=heatmap_size, detections=detections,
                            deterministic=True, verbose=chief and args.verbose > 0)

    callbacks = []
    eval_dir = os.path.join(args.output, "eval")
    monitor = "val_AP" if dataset == "coco" else "val_PCKh"
    # Evaluation runs on the chief only: one results file, and the other
    # workers do not wait on predictions they would throw away.
    if chief:
        if dataset == "coco":
            cb = dpn_callbacks.COCOEvaluationCallback(
                eval_ds, annotations, every=args.eval_every, keypoint_spec=spec,
                flip_test=args.flip_test, output_dir=eval_dir,
                results_name="keypoints_val_results_{epoch:03d}.json",
                verbose=1 if args.verbose else 0)
            cb.evaluator.coco  # loads the ground truth now: keypoint count, path
        else:
            cb = dpn_callbacks.MPIIEvaluationCallback(
                eval_ds, ground_truth, every=args.eval_every, keypoint_spec=spec,
                flip_test=args.flip_test, output_dir=eval_dir,
                results_name="pred_valid_{epoch:03d}.mat", verbose=1 if args.verbose else 0)
        callbacks.append(cb)

    def model_fn():
        # From scratch, the builders start the heatmap head at the HRNet
        # reference's N(0, 0.001) (their default head_initializer).
        return keras_dpn.get_model(args.model, num_keypoints=spec.num_keypoints,
                                   input_shape=(*args.input_size, 3), weights=args.weights)

    trainer = training.Trainer(
        model_fn, output_dir=args.output, strategy=strategy, learning_rate=args.lr,
        lr_boundaries=tuple(args.lr_epochs), lr_factor=args.lr_factor, epochs=args.epochs,
        steps_per_epoch=steps, jit_compile=True if args.xla else "auto",
        mixed_precision=bool(args.mixed_precision),
        monitor=monitor, verbose=args.verbose, seed=args.seed, deterministic=args.deterministic,
        # Recorded in OUTPUT/run_config.json, which `keras-dpn publish` reads.
        run_info=dict(keypoints=spec.name, recipe=vars(args), dataset=dict(
            name=f"{dataset}_sample" if args.sample else dataset, sample=args.sample,
            train=train_pattern, val=val_pattern, people=people)))

    if chief:
        mode = ("SAMPLE RUN: trains on the bundled sample and evaluates on the same images "
                "(memorization, not generalization)" if args.sample else "training")
        print(f"{mode}: {args.model} {args.input_size[0]}x{args.input_size[1]}, {dataset} "
              f"({spec.num_keypoints} joints), {people} people, {replicas} replica(s) x batch "
              f"{args.batch_size}, {steps} steps x {args.epochs} epochs, "
              f"lr {args.lr:g} x{args.lr_factor:g} at epochs {list(args.lr_epochs)}, "
              f"augmentation {args.augment}, flip test {'on' if args.flip_test else 'off'}, "
              f"strategy {args.strategy}, loop {trainer.loop}, precision {trainer.precision}"
              f"{', XLA' if args.xla else ''}.\nOutput: {args.output}", flush=True)
    try:
        trainer.fit(train_ds, callbacks=callbacks, resume=args.resume)
    except training.TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if not chief:
        return 0

    written = {"run folder": args.output,
               "checkpoints (resume with --resume)": trainer.checkpoint_dir,
               "TensorBoard logs": os.path.join(args.output, training.LOG_DIR),
               "history": os.path.join(args.output, training.HISTORY_CSV),
               "evaluation results": eval_dir}
    best = os.path.exists(trainer.best_weights_path)
    if best:
        written[f"best weights (by {monitor})"] = trainer.best_weights_path
    history = os.path.join(args.output, training.HISTORY_CSV)
    if os.path.isfile(history):
        from keras_dpn import visualize
        written["training curves"] = visualize.plot_history(
            history, os.path.join(args.output, "curves.png"), metrics=(monitor,))
    if args.export_formats != ():
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
        export_dir = os.path.join(args.output, "export")
        # The exporters trace TensorFlow graphs: on JAX / PyTorch the run keeps a
        # .keras file (keras-dpn export converts it in a TensorFlow process).
        if _export_formats() and trainer.backend == "tensorflow":
            from keras_dpn import export
            kwargs = {} if args.export_formats is None else {"formats": args.export_formats}
            files = export.export_model(model, export_dir, keypoints=spec, overwrite=True,
                                        verbose=args.verbose > 0, **kwargs)
        else:  # no export extra, or not TensorFlow: keep a .keras file
            os.makedirs(export_dir, exist_ok=True)
            files = {"keras": os.path.join(export_dir, f"{args.model}.keras")}
            model.save(files["keras"])
        written["export (best weights)" if best else "export"] = export_dir
        # The picture comes from an exported file through PoseEstimator, the
        # way a deployed model is used; the fp32 TFLite file is what phones run.
        source = next((files[f] for f in ("tflite_fp32", "saved_model", "onnx", "tflite_fp16",
                                           "keras") if f in files), None)
        if source is not None:
            written[f"prediction ({os.path.basename(source)})"] = draw_prediction(
                source, dataset, os.path.join(args.output, "prediction.jpg"))
    state = training.read_state(args.output) or {}
    where = " on the training images" if args.sample else ""
    score = state.get("best")
    print("\nDone" + (" (sample run)" if args.sample else "") +
          f": {state.get('epoch', '?')} epoch(s), best {monitor}{where} "
          f"{'none' if score is None else f'{score:.4f}'}. Outputs:")
    for what, path in written.items():
        print(f"  {what:38s} {path}")
    return 0


def main(argv=None, dataset="coco"):
    args = build_parser(dataset).parse_args(argv)
    try:
        select_backend(args.backend)
        resolve_config(args, dataset)
        return run(args, dataset)
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
    sys.exit(main())
