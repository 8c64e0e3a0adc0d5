"""Train a DPN (or any registered variant) on COCO keypoints, with COCO AP every epoch.

With no arguments it runs the whole job on the bundled sample
(``sample_data/coco``): builds the shards if missing, trains a few short
epochs of DPN4_32 at 256x192, evaluates COCO AP after each epoch, exports
the model and prints where everything went. It is a smoke run of the real
pipeline (minutes on two CPU cores), not a way to get a good model.

With data it follows the paper's schedule: Adam 1e-3, x0.1 at epochs 90 and
120, 140 epochs, input 256x192, ``--batch-size`` per replica::

    python recipes/train_coco.py                                   # sample smoke run
    python recipes/train_coco.py --train-shards 'shards/coco_train-*.tfrecord' \\
        --val-shards 'shards/coco_val-*.tfrecord' \\
        --annotations annotations/person_keypoints_val2017.json \\
        --detections COCO_val2017_detections_AP_H_56_person.json --output runs/dpn4_32
    python recipes/train_coco.py ... --output runs/dpn4_32 --resume   # after a kill
    TF_CONFIG='{...}' python recipes/train_coco.py ... --strategy multi_worker

Exit status: 0 done, 2 bad input (nothing trained), 3 the loss diverged
(the last good checkpoint is kept).
"""

import argparse
import datetime
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE = {
    "coco": dict(annotations=os.path.join(REPO, "sample_data", "coco", "annotations",
                                          "person_keypoints_sample.json"),
                 images=os.path.join(REPO, "sample_data", "coco", "images"),
                 prefix=os.path.join(REPO, "tfrecords", "sample", "coco_sample"), shards=2),
    "mpii": dict(annotations=os.path.join(REPO, "sample_data", "mpii", "valid_sample.json"),
                 images=os.path.join(REPO, "sample_data", "mpii", "images"),
                 prefix=os.path.join(REPO, "tfrecords", "sample", "mpii_sample"), shards=1,
                 ground_truth=os.path.join(REPO, "tests", "data", "mpii", "gt_valid.mat")),
}
# The sample run: short enough for a few minutes on two CPU cores.
SAMPLE_RUN = dict(epochs=3, batch_size=8, steps_per_epoch=8,
                  export_formats=("saved_model", "tflite_fp32"))
# The paper's schedule, for real data.
PAPER_RUN = dict(epochs=140, batch_size=32, steps_per_epoch=None, export_formats=None)

DATASETS = {
    "coco": dict(input_size=(256, 192), num_joints=17),
    "mpii": dict(input_size=(256, 256), num_joints=16),
}


def build_parser(dataset="coco"):
    """The recipe's command line; ``dataset`` picks the defaults (COCO or MPII)."""
    d = DATASETS[dataset]
    p = argparse.ArgumentParser(
        prog=f"train_{dataset}.py",
        description=__doc__.split("\n\n")[0] if dataset == "coco" else
        "Train a DPN on MPII, with PCKh every epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
                      help="force the sample smoke run (the default when no data is given)")

    model = p.add_argument_group("model and schedule (paper defaults)")
    model.add_argument("--model", default="DPN4_32", help="any registered variant "
                       "(keras_dpn.MODELS: DPN1_32 ... DPN4_64, HRNetW32, DPN2_HRNet)")
    model.add_argument("--input-size", type=int, nargs=2, default=d["input_size"],
                       metavar=("H", "W"))
    model.add_argument("--epochs", type=int,
                       help=f"default {PAPER_RUN['epochs']} (sample: {SAMPLE_RUN['epochs']})")
    model.add_argument("--batch-size", type=int,
                       help=f"per replica; default {PAPER_RUN['batch_size']} "
                            f"(sample: {SAMPLE_RUN['batch_size']})")
    model.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate")
    model.add_argument("--lr-epochs", type=int, nargs="*", default=(90, 120),
                       help="epochs at which the rate is multiplied by --lr-factor")
    model.add_argument("--lr-factor", type=float, default=0.1)
    model.add_argument("--steps-per-epoch", type=int,
                       help="default: people in the training shards / global batch "
                            f"(sample: {SAMPLE_RUN['steps_per_epoch']})")
    model.add_argument("--weights", help="initial weights (registered tag or file); "
                       "default: from scratch")

    run = p.add_argument_group("run")
    run.add_argument("--strategy", choices=("mirrored", "multi_worker", "default"),
                     default="mirrored", help="mirrored: all local GPUs (or the CPU); "
                     "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG")
    run.add_argument("--mixed-precision", action="store_true",
                     help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    run.add_argument("--xla", action="store_true", help="XLA-compile the training step")
    run.add_argument("--seed", type=int)
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic TF ops and input order (needs --seed)")
    run.add_argument("--output", help="run folder (default: runs/<dataset>_<model>_<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --output from its last checkpoint")
    run.add_argument("--eval-every", type=int, default=1, help="evaluate every k epochs")
    run.add_argument("--no-flip-test", action="store_true")
    run.add_argument("--export-formats", nargs="*",
                     help="keras_dpn.export formats (default: all; sample: saved_model "
                          "tflite_fp32); none: skip the export")
    run.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    return p


def _die(message):
    raise ValueError(message)


def _sample_shards(dataset):
    """The sample's shards, built under tfrecords/sample/ when missing."""
    import glob

    from keras_dpn import data
    s = SAMPLE[dataset]
    pattern = s["prefix"] + "-*.tfrecord"
    if not glob.glob(pattern) or not os.path.exists(s["prefix"] + "-manifest.json"):
        print(f"Building the sample shards {pattern} ...", flush=True)
        build = data.build_coco_shards if dataset == "coco" else data.build_mpii_shards
        build(s["annotations"], s["images"], s["prefix"], s["shards"], progress=False,
              verbose=False)
    return pattern


def resolve_config(args, dataset):
    """Fills in the sample defaults and checks the data arguments (no TF work)."""
    explicit = {k: getattr(args, k, None) for k in
                ("train_shards", "val_shards", "annotations", "detections", "ground_truth")}
    given = {k: v for k, v in explicit.items() if v is not None}
    args.sample = args.sample or not given
    if args.sample:
        if given:
            _die(f"--sample uses the bundled sample; drop the data arguments. Received: {given!r}")
    else:
        missing = [f"--{k.replace('_', '-')}" for k in
                   (("train_shards", "val_shards", "annotations") if dataset == "coco"
                    else ("train_shards", "val_shards", "ground_truth"))
                   if explicit.get(k) is None]
        if missing:
            _die(f"Training on your data needs {', '.join(missing)} as well (or no data "
                 f"argument at all for the sample run). Received: {given!r}")
        for k in ("annotations", "detections", "ground_truth"):
            path = explicit.get(k)
            if path is not None and not os.path.isfile(path):
                _die(f"--{k.replace('_', '-')} is not a file. Received: {k}={path!r}")
    for key, value in (SAMPLE_RUN if args.sample else PAPER_RUN).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for k in ("epochs", "batch_size", "eval_every"):
        if getattr(args, k) < 1:
            _die(f"--{k.replace('_', '-')} must be >= 1. Received: {k}={getattr(args, k)!r}")
    if args.deterministic and args.seed is None:
        _die("--deterministic needs --seed. Received: seed=None")
    if args.resume and not args.output:
        _die("--resume continues the run in --output; name it. Received: output=None")
    if not args.output:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        kind = f"{dataset}_sample" if args.sample else dataset
        args.output = os.path.join(REPO, "runs", f"{kind}_{args.model}_{stamp}")
    args.output = os.path.abspath(args.output)
    return args


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
    if args.model not in keras_dpn.MODELS:
        _die(f"Unknown --model. Expected one of {sorted(keras_dpn.MODELS)}. "
             f"Received: model={args.model!r}")
    chief = training.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas

    if args.sample:
        train_pattern = val_pattern = _sample_shards(dataset)
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
                             deterministic=args.deterministic)
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
                flip_test=not args.no_flip_test, output_dir=eval_dir,
                results_name="keypoints_val_results_{epoch:03d}.json",
                verbose=1 if args.verbose else 0)
            cb.evaluator.coco  # loads the ground truth now: keypoint count, path
        else:
            cb = dpn_callbacks.MPIIEvaluationCallback(
                eval_ds, ground_truth, every=args.eval_every, keypoint_spec=spec,
                flip_test=not args.no_flip_test, output_dir=eval_dir,
                results_name="pred_valid_{epoch:03d}.mat", verbose=1 if args.verbose else 0)
        callbacks.append(cb)

    def model_fn():
        model = keras_dpn.get_model(args.model, num_keypoints=spec.num_keypoints,
                                    input_shape=(*args.input_size, 3), weights=args.weights)
        if args.weights is None:
            training.reference_head_init(model, seed=args.seed)
        return model

    trainer = training.Trainer(
        model_fn, output_dir=args.output, strategy=strategy, learning_rate=args.lr,
        lr_boundaries=tuple(args.lr_epochs), lr_factor=args.lr_factor, epochs=args.epochs,
        steps_per_epoch=steps, jit_compile=args.xla, mixed_precision=args.mixed_precision,
        monitor=monitor, verbose=args.verbose, seed=args.seed, deterministic=args.deterministic)

    if chief:
        mode = ("SAMPLE SMOKE RUN on the bundled sample (a check of the whole pipeline, not a "
                "useful model)" if args.sample else "training")
        print(f"{mode}: {args.model} {args.input_size[0]}x{args.input_size[1]}, {dataset} "
              f"({spec.num_keypoints} joints), {people} people, {replicas} replica(s) x batch "
              f"{args.batch_size}, {steps} steps x {args.epochs} epochs, "
              f"lr {args.lr:g} x{args.lr_factor:g} at epochs {list(args.lr_epochs)}, "
              f"strategy {args.strategy}, loop {trainer.loop}, precision {trainer.precision}"
              f"{', XLA' if args.xla else ''}.\nOutput: {args.output}", flush=True)
    try:
        trainer.fit(train_ds, callbacks=callbacks, resume=args.resume)
    except training.TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3

    written = {"run folder": args.output,
               "checkpoints (resume with --resume)": trainer.checkpoint_dir,
               "TensorBoard logs": os.path.join(args.output, training.LOG_DIR),
               "history": os.path.join(args.output, training.HISTORY_CSV),
               "evaluation results": eval_dir}
    if os.path.exists(trainer.best_weights_path):
        written[f"best weights (by {monitor})"] = trainer.best_weights_path
    formats = args.export_formats
    if chief and formats != []:
        model = trainer.model
        if os.path.exists(trainer.best_weights_path):
            model.load_weights(trainer.best_weights_path)
        export_dir = os.path.join(args.output, "export")
        try:
            from keras_dpn import export
        except ImportError:  # no export extra: keep a .keras file
            export = None
        if export is not None and hasattr(export, "export_model"):
            kwargs = {} if formats is None else {"formats": tuple(formats)}
            export.export_model(model, export_dir, keypoints=spec, overwrite=True,
                                verbose=args.verbose > 0, **kwargs)
        else:
            os.makedirs(export_dir, exist_ok=True)
            model.save(os.path.join(export_dir, f"{args.model}.keras"))
        written["export (best weights)" if os.path.exists(trainer.best_weights_path)
                else "export"] = export_dir
    if chief:
        history = os.path.join(args.output, training.HISTORY_CSV)
        if os.path.isfile(history):
            from keras_dpn import visualize
            written["training curves"] = visualize.plot_history(
                history, os.path.join(args.output, "curves.png"), metrics=(monitor,))
        state = training.read_state(args.output) or {}
        print("\nDone" + (" (sample smoke run)" if args.sample else "") +
              f": {state.get('epoch', '?')} epoch(s), best {monitor} "
              f"{state.get('best')!s}. Outputs:")
        for what, path in written.items():
            print(f"  {what:38s} {path}")
    return 0


def main(argv=None, dataset="coco"):
    args = build_parser(dataset).parse_args(argv)
    try:
        resolve_config(args, dataset)
        return run(args, dataset)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
