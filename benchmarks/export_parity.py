"""Parity of every exported form against the Keras model, on real sample crops.

Trains (or loads from ``--model-dir``) the tiny DPN1_32 at 128x96 of
``tests/deploy_helpers.py`` (random weights make quantized agreement
meaningless), exports every format plus QAT and pruning, and prints a
markdown table: file size, largest heatmap difference and mean decoded
keypoint error in crop pixels against Keras, on the 32 training crops and on
the other (held-out) sample crops.

Usage::

    python benchmarks/export_parity.py [--qat-epochs 3] [--no-qat]

Takes about 10 minutes on two busy cores (4 of them training, unless
``--model-dir`` already holds the model).
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def _test_helper(name):
    """``tests/<name>.py``, loaded by file path: the tests folder is no package."""
    where = os.path.join(ROOT, "tests", name + ".py")
    spec = importlib.util.spec_from_file_location(name, where)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--no-qat", action="store_true", help="skip QAT and pruning")
    parser.add_argument("--model-dir", help="keep the trained model here and reuse it "
                                            "(default: a temporary folder)")
    args = parser.parse_args(argv)

    dh = _test_helper("deploy_helpers")
    from keras_dpn.deploy import export
    from keras_dpn.core.codec import HeatmapCodec
    from keras_dpn.inference.estimator import PoseEstimator
    from keras_dpn.core.transforms import normalize_image

    started = time.time()
    scratch = tempfile.TemporaryDirectory(prefix="keras_dpn_parity_")
    model, path = dh.trained_tiny_dpn(args.model_dir or scratch.name)
    crops, _, _, kps = dh.sample_training_set()
    n = dh.TRAIN_PEOPLE
    x = normalize_image(crops)
    ref_hm = np.asarray(model.predict(x, verbose=0))
    codec = HeatmapCodec(dh.INPUT_SIZE, dh.HEATMAP_SIZE)
    ref_kp = codec.decode(ref_hm)[0] * codec.stride
    truth_err = dh.mean_keypoint_error(ref_kp[:n], kps[:n], kps[:n, :, 2])

    rows = []
    with scratch:
        folder = os.path.join(scratch.name, "tiny")
        files = export.export_model(model, folder, representative_data=crops,
                                    qat=not args.no_qat, prune=not args.no_qat,
                                    qat_kwargs=dict(epochs=args.qat_epochs), verbose=False)
        for fmt in ("saved_model", "onnx", "tflite_fp32", "tflite_fp16", "tflite_int8_dynamic",
                    "tflite_int8", "tflite_qat", "tflite_pruned", "tflite_keypoints"):
            if fmt not in files:
                continue
            target = files[fmt]
            est = PoseEstimator(target)
            if est.backend.end_to_end:
                # Keypoints straight from the file, in crop pixels.
                kp = np.concatenate([est.backend.run(crops[i:i + 1]) for i in range(len(crops))])
                hm_diff = None
            else:
                hm = est.predict_heatmaps(crops)
                hm_diff = float(np.abs(hm - ref_hm).max())
                kp = codec.decode(hm)[0] * codec.stride
            size = (sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(target)
                        for f in fs) if os.path.isdir(target) else os.path.getsize(target))
            rows.append((fmt, os.path.basename(target), size / 1e6, hm_diff,
                         dh.mean_keypoint_error(kp[:n, :, :2], ref_kp[:n]),
                         dh.mean_keypoint_error(kp[n:, :, :2], ref_kp[n:])))

    print()
    print(f"Model: DPN1_32 at 128x96 trained on {n} COCO sample crops ({path}); its own "
          f"mean error against the labels on those crops: {truth_err:.2f} px. "
          f"{len(crops) - n} held-out crops.")
    print()
    print("| format | file | MB | max heatmap diff | kp error px (train crops) "
          "| kp error px (held-out) |")
    print("|---|---|---:|---:|---:|---:|")
    for fmt, name, mb, diff, e_train, e_held in rows:
        d = f"{diff:.2e}" if diff is not None else "-"
        print(f"| {fmt} | {name} | {mb:.2f} | {d} | {e_train:.3f} | {e_held:.3f} |")
    print(f"\n(total {time.time() - started:.0f} s; errors are mean Euclidean distances "
          "between decoded keypoints, in 128x96 crop pixels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
