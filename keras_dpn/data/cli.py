"""Command lines of the shard builders (``tfrecords/build_coco.py``, ``build_mpii.py``).

Nothing of keras_dpn is imported before the arguments are parsed: the
scripts load this file on its own, so ``--help`` and argument errors come
without Keras' and TensorFlow's start-up (seconds, and log lines).
"""

import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PACKAGE_DIR)
SAMPLE = os.path.join(REPO, "sample_data")


def _one_line_error_parser():
    """``keras_dpn.core.errors.ArgumentParser`` (one-line usage errors).

    The scripts load this file without the package (see the module docstring):
    then core/errors.py, which needs only the standard library, is loaded the
    same way.
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


def load_spec(value):
    """``coco`` / ``mpii``, or a keypoint-set json file (docs/keypoints.md)."""
    from keras_dpn.core.keypoints import get_keypoint_spec
    return get_keypoint_spec(value)


def _parser(kind):
    defaults = {
        "coco": (os.path.join(SAMPLE, "coco", "annotations", "person_keypoints_sample.json"),
                 os.path.join(SAMPLE, "coco", "images"), "tfrecords/sample/coco_sample", 2),
        "mpii": (os.path.join(SAMPLE, "mpii", "valid_sample.json"),
                 os.path.join(SAMPLE, "mpii", "images"), "tfrecords/sample/mpii_sample", 1),
    }[kind]
    p = _one_line_error_parser()(
        description=f"Build {kind.upper()} TFRecord shards (one record per image with all its "
                    "people). With no arguments, builds the bundled sample.")
    p.add_argument("--annotations", default=defaults[0],
                   help="annotation json (COCO person_keypoints_*.json / MPII train.json, "
                        "valid.json). Default: the bundled sample.")
    p.add_argument("--images", default=defaults[1], help="image folder")
    p.add_argument("--output", default=defaults[2],
                   help="shard prefix: PREFIX-00000-of-000NN.tfrecord + PREFIX-manifest.json")
    p.add_argument("--num-shards", type=int, default=defaults[3])
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="parallel writer processes (default: 2)")
    p.add_argument("--keypoints", "--dataset", dest="keypoints", default=kind,
                   metavar="SET", help=f"keypoint set: coco, mpii or a keypoint-set FILE.json "
                   f"(docs/keypoints.md); the manifest records it whole. Default: {kind}. "
                   "--dataset is the old name")
    p.add_argument("--drop-empty-images", action="store_true",
                   help="drop images left without usable people (fine for training shards; "
                        "evaluation with detections needs them)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a complete shard set already under --output (of any "
                        "--num-shards); the old set stays until the new one is complete")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(kind, argv=None):
    args = _parser(kind).parse_args(argv)
    from keras_dpn import data
    from keras_dpn.data.shards import ShardWriteError, WorkerDiedError
    build = data.build_coco_shards if kind == "coco" else data.build_mpii_shards
    try:
        spec = load_spec(args.keypoints)
        build(args.annotations, args.images, args.output, args.num_shards, dataset=spec,
              num_workers=args.num_workers, keep_empty_images=not args.drop_empty_images,
              progress=not args.no_progress, overwrite=args.overwrite)
    except (ValueError, WorkerDiedError, ShardWriteError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Shards: {os.path.abspath(args.output)}-*-of-{args.num_shards:05d}.tfrecord")
    return 0
