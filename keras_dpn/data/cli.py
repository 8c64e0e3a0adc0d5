"""Command lines of the shard builders (``tfrecords/build_coco.py``, ``build_mpii.py``)."""

import argparse
import json
import os
import sys

from keras_dpn.keypoints import KeypointSpec, get_keypoint_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, "sample_data")


def load_spec(value):
    """``coco`` / ``mpii``, or a json file with the ``KeypointSpec`` fields."""
    if value.endswith(".json"):
        with open(value) as f:
            fields = json.load(f)
        tuples = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                  if isinstance(v, list) else v for k, v in fields.items()}
        return KeypointSpec(**tuples)
    return get_keypoint_spec(value)


def _parser(kind):
    defaults = {
        "coco": (os.path.join(SAMPLE, "coco", "annotations", "person_keypoints_sample.json"),
                 os.path.join(SAMPLE, "coco", "images"), "tfrecords/sample/coco_sample", 2),
        "mpii": (os.path.join(SAMPLE, "mpii", "valid_sample.json"),
                 os.path.join(SAMPLE, "mpii", "images"), "tfrecords/sample/mpii_sample", 1),
    }[kind]
    p = argparse.ArgumentParser(
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
    p.add_argument("--dataset", default=kind,
                   help="keypoint set: coco, mpii, or a json file with KeypointSpec fields")
    p.add_argument("--drop-empty-images", action="store_true",
                   help="drop images left without usable people (fine for training shards; "
                        "evaluation with detections needs them)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(kind, argv=None):
    args = _parser(kind).parse_args(argv)
    from keras_dpn import data
    from keras_dpn.data.shards import WorkerDiedError
    build = data.build_coco_shards if kind == "coco" else data.build_mpii_shards
    try:
        spec = load_spec(args.dataset)
        build(args.annotations, args.images, args.output, args.num_shards, dataset=spec,
              num_workers=args.num_workers, keep_empty_images=not args.drop_empty_images,
              progress=not args.no_progress)
    except (ValueError, WorkerDiedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Shards: {os.path.abspath(args.output)}-*-of-{args.num_shards:05d}.tfrecord")
    return 0
