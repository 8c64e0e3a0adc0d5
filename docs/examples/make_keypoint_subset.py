"""Make a custom keypoint set and its COCO-format annotations from the bundled COCO sample.

The worked example of ``docs/custom_keypoints.md``: a set of some of COCO's
17 joints (default: the 12 body joints 5-16, no face), written as

- ``OUT/NAME_keypoints.json``: the keypoint-set file every command reads
  (``--keypoints``): names, flip pairs, skeleton, OKS sigmas, upper/lower
  body, joint weights, all taken over from COCO's set for the chosen joints;
- ``OUT/NAME_annotations.json``: the sample's annotations with only those
  joints (COCO format: what ``tfrecords/build_coco.py --keypoints`` and the
  COCO AP of ``keras-dpn train --annotations`` read).

Your own data needs only the two files in these formats::

    python docs/examples/make_keypoint_subset.py                 # body12 in custom_keypoints/
    python docs/examples/make_keypoint_subset.py --name arms5 --joints 5 7 0 6 8 --out work
"""

import argparse
import copy
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, "sample_data", "coco", "annotations", "person_keypoints_sample.json")


def subset_spec(name, joints, names=None):
    """COCO's set restricted to ``joints`` (COCO indices, in the new order).

    A flip pair or limb is kept when both of its joints are; a joint whose
    mirror image is left out has no flip partner.
    """
    from keras_dpn.core.keypoints import COCO_17, KeypointSpec
    new = {old: i for i, old in enumerate(joints)}

    def pairs(old_pairs):
        return tuple((new[a], new[b]) for a, b in old_pairs if a in new and b in new)

    return KeypointSpec(
        name=name,
        names=tuple(names) if names else tuple(COCO_17.names[j] for j in joints),
        flip_pairs=pairs(COCO_17.flip_pairs),
        skeleton=pairs(COCO_17.skeleton),
        sigmas=tuple(COCO_17.sigmas[j] for j in joints),
        upper_body=tuple(new[j] for j in COCO_17.upper_body if j in new),
        lower_body=tuple(new[j] for j in COCO_17.lower_body if j in new),
        joint_weights=tuple(COCO_17.joint_weights[j] for j in joints))


def subset_annotations(coco, spec, joints):
    """The COCO annotation dict with only ``joints`` of each person, in the set's order."""
    out = copy.deepcopy(coco)
    for category in out["categories"]:
        if category.get("keypoints"):
            category["keypoints"] = list(spec.names)
            category["skeleton"] = [[a + 1, b + 1] for a, b in spec.skeleton]  # 1-based
    for person in out["annotations"]:
        if not person.get("keypoints"):
            continue
        kp = person["keypoints"]
        person["keypoints"] = [v for j in joints for v in kp[3 * j:3 * j + 3]]
        person["num_keypoints"] = sum(1 for j in joints if kp[3 * j + 2] > 0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="body12", help="the set's name (default body12)")
    p.add_argument("--joints", type=int, nargs="+", default=list(range(5, 17)),
                   help="COCO joint indices 0-16, in the new set's order (default 5 ... 16)")
    p.add_argument("--names", nargs="+", help="the joints' new names (default COCO's)")
    p.add_argument("--annotations", default=SAMPLE,
                   help="COCO keypoint annotations to take the people from (default: the "
                        "bundled sample)")
    p.add_argument("--out", default="custom_keypoints", help="output folder")
    args = p.parse_args(argv)
    if not args.joints or len(set(args.joints)) != len(args.joints) or not all(
            0 <= j < 17 for j in args.joints):
        p.error(f"--joints takes distinct COCO joint indices 0-16. Received: {args.joints}")
    if args.names and len(args.names) != len(args.joints):
        p.error(f"--names needs one name per joint ({len(args.joints)}). "
                f"Received: {args.names}")
    if not os.path.isfile(args.annotations):
        p.error(f"--annotations is not a file. Received: {args.annotations!r}")

    from keras_dpn.core import io_utils
    from keras_dpn.core.keypoints import save_keypoint_spec
    spec = subset_spec(args.name, args.joints, args.names)
    with open(args.annotations) as f:
        coco = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    spec_path = os.path.join(args.out, f"{args.name}_keypoints.json")
    ann_path = os.path.join(args.out, f"{args.name}_annotations.json")
    save_keypoint_spec(spec, spec_path)
    with io_utils.atomic_file(ann_path, "w") as f:
        json.dump(subset_annotations(coco, spec, args.joints), f)
    print(f"{spec.name}: {spec.num_keypoints} joints {list(spec.names)}, flip pairs "
          f"{[list(p) for p in spec.flip_pairs]}, {len(spec.skeleton)} limbs\n"
          f"  keypoint set  {spec_path}\n  annotations   {ann_path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
