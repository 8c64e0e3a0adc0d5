"""Draws a batch of augmented training crops with skeletons and summed heatmaps.

Every panel is one example exactly as ``model.fit`` sees it: the crop (scale,
rotation, flip, half-body already applied), the sum of its Gaussian target
heatmaps upsampled and overlaid, and the skeleton drawn through the joints
decoded from those targets (so a misplaced target shows as a limb off the
body). Joints with target weight 0 are left out.

Usage::

    python benchmarks/draw_training_batch.py                 # -> docs/training_batch.png
    python benchmarks/draw_training_batch.py --dataset mpii --output /tmp/mpii_batch.png
"""

import argparse
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_COCO = os.path.join(REPO, "sample_data/coco/annotations/person_keypoints_sample.json")


def render_example(image, heatmaps, weights, spec, codec, scale=1):
    """One panel: uint8 RGB crop + heatmap overlay + skeleton."""
    from keras_dpn.core import transforms
    rgb = image * np.array(transforms.IMAGENET_STD) + np.array(transforms.IMAGENET_MEAN)
    rgb = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    total = np.clip(heatmaps.sum(-1), 0, 1)
    heat = cv2.resize(total, (w, h), interpolation=cv2.INTER_LINEAR)
    color = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    alpha = (0.6 * heat)[..., None]
    panel = (rgb * (1 - alpha) + color * alpha).astype(np.uint8)
    if scale != 1:
        panel = cv2.resize(panel, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    coords, _ = codec.decode(heatmaps[None])
    pts = coords[0] * codec.stride * scale
    ok = weights > 0
    for (a, b), c in zip(spec.skeleton, spec.limb_colors()):
        if ok[a] and ok[b]:
            cv2.line(panel, tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b]), c, 2,
                     cv2.LINE_AA)
    for j in np.nonzero(ok)[0]:
        cv2.circle(panel, tuple(int(v) for v in pts[j]), 3, (255, 255, 255), -1, cv2.LINE_AA)
    return panel


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="coco", choices=["coco", "mpii"])
    p.add_argument("--shards", default=None, help="shard glob (default: the bundled sample)")
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--columns", type=int, default=6)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--output", default=os.path.join(REPO, "docs", "training_batch.png"))
    args = p.parse_args(argv)
    from keras_dpn import data
    from keras_dpn.core import io_utils
    from keras_dpn.core.codec import HeatmapCodec
    from keras_dpn.core.keypoints import get_keypoint_spec
    spec = get_keypoint_spec(args.dataset)
    size = (256, 192) if args.dataset == "coco" else (256, 256)
    hm_size = (size[0] // 4, size[1] // 4)
    pattern, tmp = args.shards, None
    if pattern is None:
        tmp = tempfile.mkdtemp(prefix="dpn_draw_")
        if args.dataset == "coco":
            data.build_coco_shards(SAMPLE_COCO,
                                   os.path.join(REPO, "sample_data/coco/images"),
                                   os.path.join(tmp, "s"), 1, num_workers=1, progress=False,
                                   verbose=False)
        else:
            data.build_mpii_shards(os.path.join(REPO, "sample_data/mpii/valid_sample.json"),
                                   os.path.join(REPO, "sample_data/mpii/images"),
                                   os.path.join(tmp, "s"), 1, num_workers=1, progress=False,
                                   verbose=False)
        pattern = os.path.join(tmp, "s-*.tfrecord")
    try:
        ds = data.build_dataset(pattern, dataset=spec, batch_size=args.count, input_size=size,
                                heatmap_size=hm_size, seed=args.seed, deterministic=True,
                                repeat=True)
        images, heatmaps, weights = (t.numpy() for t in next(iter(ds)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    codec = HeatmapCodec(size, hm_size)
    panels = [render_example(images[i], heatmaps[i], weights[i], spec, codec)
              for i in range(args.count)]
    cols = args.columns
    rows = -(-len(panels) // cols)
    blank = np.full_like(panels[0], 255)
    panels += [blank] * (rows * cols - len(panels))
    def pad(im):
        return cv2.copyMakeBorder(im, 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=(255, 255, 255))

    grid = np.vstack([np.hstack([pad(x) for x in panels[r * cols:(r + 1) * cols]])
                      for r in range(rows)])
    ok, png = cv2.imencode(".png", grid[..., ::-1])
    with io_utils.atomic_file(args.output, "wb") as f:
        f.write(png.tobytes())
    print(f"Wrote {args.output} ({grid.shape[1]}x{grid.shape[0]}, {args.count} crops)")


if __name__ == "__main__":
    main()
