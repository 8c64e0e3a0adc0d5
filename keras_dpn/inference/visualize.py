"""Drawing: skeletons on images, heatmaps over crops.

Everything reads the keypoint metadata (:class:`keras_dpn.KeypointSpec`):
limbs are its ``skeleton`` in its ``limb_colors()``; nothing here knows a
joint count. Images are RGB uint8 numpy arrays in and out (OpenCV draws; the
caller converts to BGR only to write files).

Example:
>>> import numpy as np
>>> from keras_dpn.inference import visualize
>>> kp = np.zeros((17, 3), np.float32); kp[:, 2] = 1; kp[:, 0] = np.arange(17) * 5
>>> out = visualize.draw_skeleton(np.zeros((100, 100, 3), np.uint8), kp, "coco")
>>> out.shape, out.dtype.name
((100, 100, 3), 'uint8')
"""

import os

import numpy as np

from keras_dpn.core.keypoints import get_keypoint_spec


def _as_people(keypoints):
    """A (K, 3) array, (N, K, 3) array or list of PoseEstimator dicts -> (N, K, 3)."""
    if isinstance(keypoints, dict):
        keypoints = [keypoints]
    if isinstance(keypoints, (list, tuple)) and keypoints and isinstance(keypoints[0], dict):
        keypoints = [p["keypoints"] for p in keypoints]
    if isinstance(keypoints, (list, tuple)) and len(keypoints) == 0:
        return np.zeros((0, 0, 3), np.float32)
    kp = np.asarray(keypoints, np.float32)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[-1] not in (2, 3):
        raise ValueError("`keypoints` must be (K, 3), (N, K, 3) or a list of dicts with a "
                         f"'keypoints' entry. Received: keypoints with shape {kp.shape!r}")
    if kp.shape[-1] == 2:
        kp = np.concatenate([kp, np.ones(kp.shape[:-1] + (1,), np.float32)], axis=-1)
    return kp


def _joint_colors(spec):
    # A joint takes the colour of the first limb that ends in it.
    colors = [(255, 255, 255)] * spec.num_keypoints
    for (a, b), color in zip(reversed(spec.skeleton), reversed(spec.limb_colors())):
        colors[a] = colors[b] = tuple(int(c) for c in color)
    return colors


def draw_skeleton(image, keypoints, spec="coco", score_threshold=0.3, radius=None,
                  thickness=None, boxes=None, labels=None):
    """Draws people's joints and limbs on a copy of an RGB image.

    Args:
        image: ``(H, W, 3)`` RGB uint8 array.
        keypoints: ``(K, 3)`` or ``(N, K, 3)`` x, y, score in image pixels, or
            the list returned by :meth:`keras_dpn.PoseEstimator.predict`.
        spec: keypoint set name or :class:`~keras_dpn.KeypointSpec`.
        score_threshold: joints scoring below it (and limbs touching them) are
            not drawn.
        radius: joint radius in pixels (default: from the image size).
        thickness: limb thickness (default: from the image size).
        boxes: optional ``(N, 4)`` xywh boxes drawn in grey.
        labels: optional text per person (e.g. track ids), written above its
            box when ``boxes`` are given, else above its highest seen joint.

    Returns:
        The annotated ``(H, W, 3)`` uint8 RGB image (the input is untouched).

    Example:
    >>> import numpy as np
    >>> kp = np.array([[10, 10, 1.0]] * 17, np.float32)
    >>> bool(draw_skeleton(np.zeros((64, 48, 3), np.uint8), kp).max() > 0)
    True
    """
    import cv2
    spec = get_keypoint_spec(spec)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.size == 0:
        raise ValueError(f"`image` must be a non-empty (H, W, 3) RGB array. "
                         f"Received: image with shape {image.shape!r}")
    out = np.ascontiguousarray(image.astype(np.uint8).copy())
    people = _as_people(keypoints)
    if people.shape[0] and people.shape[1] != spec.num_keypoints:
        raise ValueError(f"Keypoint set {spec.name!r} has {spec.num_keypoints} joints. "
                         f"Received: keypoints with {people.shape[1]} joints")
    size = max(out.shape[:2])
    radius = radius or max(2, int(round(size / 160)))
    thickness = thickness or max(1, int(round(size / 240)))
    if boxes is not None:
        for x, y, w, h in np.asarray(boxes, np.float32).reshape(-1, 4):
            cv2.rectangle(out, (int(x), int(y)), (int(x + w), int(y + h)), (160, 160, 160),
                          max(1, thickness // 2), cv2.LINE_AA)
    joint_colors = _joint_colors(spec)
    for kp in people:
        visible = kp[:, 2] >= score_threshold
        for (a, b), color in zip(spec.skeleton, spec.limb_colors()):
            if visible[a] and visible[b]:
                pa = (int(round(kp[a, 0])), int(round(kp[a, 1])))
                pb = (int(round(kp[b, 0])), int(round(kp[b, 1])))
                cv2.line(out, pa, pb, tuple(int(c) for c in color), thickness, cv2.LINE_AA)
        for j in np.flatnonzero(visible):
            p = (int(round(kp[j, 0])), int(round(kp[j, 1])))
            cv2.circle(out, p, radius, joint_colors[j], -1, cv2.LINE_AA)
            cv2.circle(out, p, radius, (0, 0, 0), 1, cv2.LINE_AA)
    if labels is not None:
        _draw_labels(out, people, boxes, labels, score_threshold, thickness)
    return out


def _draw_labels(out, people, boxes, labels, score_threshold, thickness):
    import cv2
    labels = [str(label) for label in labels]
    if len(labels) != len(people):
        raise ValueError(f"`labels` needs one entry per person ({len(people)}). "
                         f"Received: {len(labels)} labels")
    boxes = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    font_scale = max(0.35, max(out.shape[:2]) / 900)
    for i, (kp, label) in enumerate(zip(people, labels)):
        if boxes is not None:
            x, y = boxes[i, 0], boxes[i, 1]
        else:
            seen = kp[kp[:, 2] >= score_threshold]
            if not len(seen):
                continue
            x, y = seen[:, 0].min(), seen[:, 1].min()
        org = (int(round(x)), max(int(round(y)) - 4, 10))
        # Dark outline under light text: readable on any background.
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                    thickness + 2, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)


def heatmap_overlay(crop, heatmap, alpha=0.55):
    """One heatmap (h, w) resized over an RGB crop in the JET colour map."""
    import cv2
    crop = np.asarray(crop, np.uint8)
    hm = np.asarray(heatmap, np.float32)
    hm = cv2.resize(hm, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    hm = np.clip(hm, 0.0, None)
    peak = hm.max()
    hm = hm / peak if peak > 0 else hm
    colored = cv2.applyColorMap((hm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (crop * (1 - alpha) + colored * alpha).astype(np.uint8)


def draw_heatmaps(crop, heatmaps, spec="coco", columns=6, alpha=0.55):
    """A grid: the crop, then one overlay per joint labelled with its name.

    Args:
        crop: ``(H, W, 3)`` RGB uint8 network-input crop.
        heatmaps: ``(h, w, K)`` heatmaps of that crop.
        spec: keypoint set name or spec (for the labels).
        columns: tiles per row.
        alpha: heatmap opacity.

    Returns:
        An RGB uint8 image.

    Example:
    >>> import numpy as np
    >>> grid = draw_heatmaps(np.zeros((64, 48, 3), np.uint8), np.zeros((16, 12, 17)))
    >>> grid.shape
    (192, 288, 3)
    """
    import cv2
    spec = get_keypoint_spec(spec)
    crop = np.asarray(crop, np.uint8)
    heatmaps = np.asarray(heatmaps, np.float32)
    if heatmaps.ndim != 3 or heatmaps.shape[-1] != spec.num_keypoints:
        raise ValueError(f"`heatmaps` must be (h, w, {spec.num_keypoints}). "
                         f"Received: heatmaps with shape {heatmaps.shape!r}")
    tiles = [crop.copy()]
    for j in range(spec.num_keypoints):
        tile = heatmap_overlay(crop, heatmaps[..., j], alpha)
        cv2.putText(tile, spec.names[j][:12], (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    rows = -(-len(tiles) // columns)
    h, w = crop.shape[:2]
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return grid


def plot_history(history_csv, out_path, metrics=("val_AP", "val_PCKh")):
    """Draws the training curves of a run: loss, and each evaluation metric present.

    Args:
        history_csv: the run's ``history.csv`` (one row per epoch; written by
            :class:`keras_dpn.training.trainer.Trainer`).
        out_path: PNG to write (atomically).
        metrics: epoch-log keys drawn on a second axis when the file has them.

    Returns:
        ``out_path``.

    Example, on a three-epoch history written here (a run folder has its own):

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with open(os.path.join(d, "history.csv"), "w") as f:
    ...         for row in ("epoch,loss,val_AP", "1,0.004,0.1", "2,0.002,0.3", "3,0.001,0.5"):
    ...             print(row, file=f)
    ...     png = plot_history(os.path.join(d, "history.csv"), os.path.join(d, "curves.png"))
    ...     with open(png, "rb") as f:
    ...         f.read(4)[1:]
    b'PNG'
    """
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from keras_dpn.core import io_utils

    if not os.path.isfile(history_csv):
        raise ValueError(f"No training history at that path. Received: history_csv={history_csv!r}")
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "loss" not in rows[0]:
        raise ValueError(
            f"The history has no rows or no `loss` column. Received: history_csv={history_csv!r}")

    def column(key):
        return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]

    epochs = [int(float(r.get("epoch", i))) for i, r in enumerate(rows)]
    if epochs[0] == 0:  # a history of keras-dpn 0.1, numbered from 0
        epochs = [e + 1 for e in epochs]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(epochs, column("loss"), "o-", color="tab:blue", label="loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    ax.set_yscale("log")
    present = [m for m in metrics if m in rows[0]]
    if present:
        ax2 = ax.twinx()
        for m, color in zip(present, ("tab:red", "tab:green")):
            # Evaluation may run every k epochs: connect the epochs that have it.
            values = np.asarray(column(m))
            keep = ~np.isnan(values)
            ax2.plot(np.asarray(epochs)[keep], values[keep], "s-", color=color, label=m)
        ax2.set_ylabel(" / ".join(present), color="tab:red")
        ax2.set_ylim(bottom=0)
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(history_csv))), fontsize=9)
    fig.legend(loc="upper center", ncol=1 + len(present), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.9))
    fig.tight_layout()
    with io_utils.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_path
