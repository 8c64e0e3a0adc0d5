"""COCO AP of every exported file of one model, through PoseEstimator, on the bundled sample.

For size, AP, latency and throughput per format in one table, use
``keras-dpn benchmark`` (docs/guide/benchmark.md), which supersedes this script
except for what only it does: running QAT and pruning, scoring the end-to-end
``keypoints_fp32.tflite`` and the AP drop column (tests/test_export_accuracy.py
runs it; docs/benchmarks.md quotes its table).

Exports the model to every format (SavedModel, ONNX, TFLite fp32 / fp16 / int8
weights / full int8, QAT int8, pruned int8, the end-to-end keypoints file)
with :func:`keras_dpn.deploy.export.export_model`, then evaluates the Keras model
and each file with :func:`keras_dpn.deploy.export_eval.evaluate_export` (what
``keras-dpn export ... --evaluate`` prints): the sample's ground-truth boxes,
``PoseEstimator`` crops, the file's runtime, heatmap decoding, rescoring,
OKS-NMS and pycocotools. Prints a markdown table (size, AP, AP drop against
Keras, AP50, AP75, AR, latency of one model call on one crop) and writes it
as JSON.

Usage::

    # a recipes/train_coco.py run: its run_config.json and best.weights.h5
    python benchmarks/export_accuracy.py --run runs/sample
    # weights and the builder they belong to
    python benchmarks/export_accuracy.py --weights best.weights.h5 --model DPN4_32 \\
        --input-size 256 192
    # a saved model
    python benchmarks/export_accuracy.py --model-file model.keras

The flip test follows the run's recipe setting (``--flip-test`` /
``--no-flip-test`` to choose); the end-to-end keypoints file is always
evaluated without. The evaluation images are the training images of a
sample run: the table measures what each format keeps of what the model
learned, not how it generalizes. The int8 files are calibrated on the
package's default crops, which are cut from the same sample.

DPN4_32 at 256x192 with QAT and pruning: about 15-25 minutes on two busy cores.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data", "coco")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = parser.add_argument_group("model (one of)")
    src.add_argument("--run", help="a training run folder (run_config.json, best.weights.h5)")
    src.add_argument("--weights", help="a .weights.h5 file (with --model; with --run: instead "
                                       "of RUN/best.weights.h5)")
    src.add_argument("--model", help="variant name for --weights, e.g. DPN4_32")
    src.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                     help="for --model (default 256 192)")
    src.add_argument("--model-file", help="a .keras model")
    parser.add_argument("--annotations", default=os.path.join(
        SAMPLE, "annotations", "person_keypoints_sample.json"),
        help="COCO keypoint annotations (default: the bundled sample)")
    parser.add_argument("--images", default=os.path.join(SAMPLE, "images"),
                        help="their image folder (default: the bundled sample's)")
    parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction,
                        help="default: the run's recipe setting, else off")
    parser.add_argument("--no-qat", action="store_true", help="skip the QAT and pruned files")
    parser.add_argument("--qat-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="TFLite / ONNX Runtime threads (1; Keras and the SavedModel use "
                             "TensorFlow's own)")
    parser.add_argument("--out", help="keep the export here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the table and settings to this JSON file")
    return parser


def load_model(args):
    """``(float32 keras model, description, run's flip-test setting or None)``."""
    import keras

    import keras_dpn
    from keras_dpn.hub import publish
    from keras_dpn.training import trainer as training
    given = [name for name, v in (("--run", args.run), ("--model-file", args.model_file),
                                  ("--model", args.model)) if v]
    if len(given) != 1:
        raise ValueError(f"Give one of --run, --model-file, --model (with --weights). "
                         f"Received: {given or 'none'}")
    if args.model_file:
        if not os.path.isfile(args.model_file):
            raise ValueError(f"Model file not found. Received: --model-file={args.model_file!r}")
        return keras.saving.load_model(args.model_file, compile=False), args.model_file, None
    flip = None
    if args.run:
        config = publish.read_run_config(args.run)
        variant = config["model"]["variant"]
        kwargs = dict(config["model"]["arguments"])
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
        weights = args.weights or os.path.join(args.run, "best.weights.h5")
        flip = (config.get("recipe") or {}).get("flip_test")
    else:
        if not args.weights:
            raise ValueError("--model needs --weights. Received: --weights=None")
        variant = args.model
        h, w = args.input_size or (256, 192)
        kwargs = dict(input_shape=(h, w, 3))
        weights = args.weights
    if not os.path.isfile(weights):
        raise ValueError(f"Weights file not found. Received: weights={weights!r}")
    # Deployment files are float32 (a mixed-precision run's weights are float32 already).
    with training.precision_policy("float32"):
        model = keras_dpn.get_model(variant, **kwargs)
    model.load_weights(weights)
    return model, f"{variant} {kwargs['input_shape'][:2]} with {weights}", flip


def main(argv=None):
    args = build_parser().parse_args(argv)
    from keras_dpn.deploy import export
    from keras_dpn.deploy import export_eval
    # Every input is checked before the export's minutes.
    data = export_eval.evaluation_set(args.annotations, args.images)
    model, described, run_flip = load_model(args)
    flip = args.flip_test if args.flip_test is not None else bool(run_flip)
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="keras_dpn_export_accuracy_") as scratch:
        folder = args.out or os.path.join(scratch, "export")
        files = export.export_model(model, folder, qat=not args.no_qat, prune=not args.no_qat,
                                    qat_kwargs=dict(epochs=args.qat_epochs), overwrite=True)
        exported = time.time()
        rows = export_eval.evaluate_export(files, data, model=model, flip_test=flip,
                                           num_threads=args.threads)
        export_eval.write_report(os.path.join(folder, export_eval.REPORT_FILE), rows, data,
                                 flip_test=flip, threads=args.threads, model=described)
    finished = time.time()
    table = export_eval.format_table(rows)
    load_after = os.getloadavg()
    print(f"\nModel: {described}.\nEvaluated on {data.describe()}; flip test "
          f"{'on' if flip else 'off'} (never for tflite_keypoints); TFLite / ONNX Runtime "
          f"threads: {args.threads}.\n")
    print(table)
    print(f"\n(export {exported - started:.0f} s, evaluation {finished - exported:.0f} s; "
          f"load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at the end on "
          f"{os.cpu_count()} cores; 'AP drop' = Keras AP minus the file's, same flip setting; "
          "'ms / crop' = median of 10 model calls on one crop)")
    if args.json:
        from keras_dpn.core import io_utils
        with io_utils.atomic_file(args.json, "w") as f:
            json.dump(dict(model=described, flip_test=flip, threads=args.threads,
                           evaluated_on=data.describe(), load_average=[load_before, load_after],
                           rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileExistsError) as e:
        print(f"export_accuracy.py: error: {e}", file=sys.stderr)
        sys.exit(2)
