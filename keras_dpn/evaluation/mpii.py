"""MPII single-person PCKh, as the standard validation evaluation.

A joint is correct when its distance to the ground truth is at most
``threshold`` times the head size, where the head size is 0.6 times the
diagonal of the annotated head box (``SC_BIAS``). The scores are computed on
the 2958-person validation split (``gt_valid.mat``: ``dataset_joints``,
``jnt_missing``, ``pos_gt_src``, ``headboxes_src``) over the joints annotated
as present, per joint, and as the **mean without pelvis and thorax** pooled
over all those joints (each joint weighted by how many annotations it has:
the MPII toolkit's "avg full body" and the HRNet reference's ``Mean``).
``mean_unweighted`` is the plain mean of the 14 per-joint scores, which is
what bearpaw/pytorch-pose prints and publishes.

Coordinates: ``gt_valid.mat`` holds MATLAB 1-based pixel coordinates, and so
do the published prediction files (Tompson et al., Newell et al.'s
``valid-ours.h5``, bearpaw's ``preds_valid.mat``) and :func:`save_predictions`.
Keypoints predicted by this package are 0-based (the first pixel's centre is
``(0, 0)``): pass ``one_based=False`` (the default of :func:`pckh`) and they
are shifted by +1 before the comparison.

Command line (prints the per-joint table of each prediction file)::

    python -m keras_dpn.evaluation.mpii tests/data/mpii/gt_valid.mat \\
        tests/data/mpii/reference_preds/tompson.h5
"""

import dataclasses
import os
import sys
from typing import Dict, Tuple

import numpy as np

from keras_dpn.evaluation.predict import check_finite
from keras_dpn.core.io_utils import atomic_path

SC_BIAS = 0.6
# Joints left out of the mean, as in every published MPII table.
EXCLUDED_FROM_MEAN = ("pelv", "thor")
_GROUPS = (("Head", ("head",)), ("Shoulder", ("lsho", "rsho")), ("Elbow", ("lelb", "relb")),
           ("Wrist", ("lwri", "rwri")), ("Hip", ("lhip", "rhip")), ("Knee", ("lkne", "rkne")),
           ("Ankle", ("lank", "rank")))


def _loadmat(path):
    """``scipy.io.loadmat`` with a one-line ``ValueError`` naming the file."""
    from scipy.io import loadmat
    try:
        return loadmat(path)
    except Exception as e:  # noqa: BLE001 - MatReadError, ValueError, OSError, zlib errors alike
        text = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(f"Not a readable MATLAB .mat file ({type(e).__name__}: {text}). "
                         f"Received: path={path!r}") from None


def load_ground_truth(path):
    """Reads an MPII ``gt_valid.mat``.

    Returns:
        dict with ``joint_names`` (16 short names, e.g. ``"rank"``),
        ``missing`` bool ``(N, 16)``, ``joints`` float64 ``(N, 16, 2)`` (1-based)
        and ``headboxes`` float64 ``(N, 2, 2)`` (top-left, bottom-right; 1-based).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"MPII ground truth file not found. Received: path={path!r}")
    mat = _loadmat(path)
    needed = ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src")
    absent = [k for k in needed if k not in mat]
    if absent:
        raise ValueError(
            f"{path!r} is not an MPII gt_valid.mat: keys {absent} are missing. "
            f"Received: keys={sorted(k for k in mat if not k.startswith('__'))}")
    names = [str(np.asarray(n).reshape(-1)[0])
             for n in np.asarray(mat["dataset_joints"]).reshape(-1)]
    return {
        "joint_names": names,
        "missing": np.asarray(mat["jnt_missing"]).T.astype(bool),
        "joints": np.transpose(np.asarray(mat["pos_gt_src"], np.float64), (2, 0, 1)),
        "headboxes": np.transpose(np.asarray(mat["headboxes_src"], np.float64), (2, 0, 1)),
    }


def load_predictions(path, key="preds"):
    """Reads a prediction file as published (``.mat`` or ``.h5``, key ``preds``).

    Both layouts in use are accepted: ``(N, 16, 2)`` (Python tools) and
    ``(2, 16, N)`` (Torch/MATLAB tools). The coordinates are returned as stored
    (these files are 1-based by convention).

    Returns:
        float64 ``(N, 16, 2)``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Prediction file not found. Received: path={path!r}")
    if path.endswith((".h5", ".hdf5")):
        import h5py
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise ValueError(f"Not a readable HDF5 file ({str(e).splitlines()[0]}). "
                             f"Received: path={path!r}") from None
        with f:
            if key not in f:
                raise ValueError(
                    f"{path!r} has no dataset {key!r}. Received: keys={sorted(f.keys())}")
            preds = np.asarray(f[key], np.float64)
    elif path.endswith(".mat"):
        mat = _loadmat(path)
        if key not in mat:
            raise ValueError(
                f"{path!r} has no variable {key!r}. "
                f"Received: keys={sorted(k for k in mat if not k.startswith('__'))}")
        preds = np.asarray(mat[key], np.float64)
    else:
        raise ValueError(f"Prediction files must be .mat or .h5. Received: path={path!r}")
    if preds.ndim == 3 and preds.shape[0] == 2 and preds.shape[2] != 2:
        preds = np.transpose(preds, (2, 1, 0))
    if preds.ndim != 3 or preds.shape[2] != 2:
        raise ValueError(
            f"`{key}` must be (N, joints, 2) or (2, joints, N). Received: shape={preds.shape} "
            f"in {path!r}")
    return preds


def save_predictions(path, preds, one_based=False, person_id=None):
    """Writes ``preds`` ``(N, 16, 2)`` to a ``.mat`` file (key ``preds``) in the 1-based convention.

    Args:
        path: output ``.mat`` path (written atomically).
        preds: keypoints in image pixels.
        one_based: whether ``preds`` already are 1-based; 0-based ones get +1.
        person_id: optional ``(N,)`` ground-truth rows, stored as ``person_id``.

    Returns:
        ``path``.
    """
    from scipy.io import savemat

    preds = np.asarray(preds, np.float64)[..., :2] + (0.0 if one_based else 1.0)
    content = {"preds": preds}
    if person_id is not None:
        content["person_id"] = np.asarray(person_id, np.int64).reshape(-1)
    with atomic_path(path) as tmp:
        savemat(tmp, content)
    return path


@dataclasses.dataclass
class PCKhResult:
    """PCKh scores (percent).

    Attributes:
        joint_names: the ground truth's 16 joint names.
        per_joint: ``{threshold: (16,) array}`` (NaN for a joint never annotated).
        mean: ``{threshold: float}``, pooled over joints without pelvis and thorax.
        mean_unweighted: ``{threshold: float}``, plain mean of those 14 joints.
        counts: ``(16,)`` number of annotated (not missing) joints.
        num_people: number of people scored.
    """

    joint_names: Tuple[str, ...]
    per_joint: Dict[float, np.ndarray]
    mean: Dict[float, float]
    mean_unweighted: Dict[float, float]
    counts: np.ndarray
    num_people: int = 0

    def grouped(self, threshold=0.5):
        """``{"Head": ..., "Shoulder": ..., "Ankle": ..., "Mean": ...}``, left/right averaged."""
        idx = {n: i for i, n in enumerate(self.joint_names)}
        pck = self.per_joint[threshold]
        out = {g: float(np.mean([pck[idx[n]] for n in names])) for g, names in _GROUPS}
        out["Mean"] = self.mean[threshold]
        return out

    def table(self, name="", thresholds=None):
        """The published table layout as text: one row per threshold.

        Example output::

            Model       PCKh  Head Shoulder Elbow Wrist   Hip  Knee Ankle  Mean
            tompson     @0.5 95.75    94.26 ...
        """
        thresholds = sorted(self.per_joint, reverse=True) if thresholds is None else thresholds
        cols = [g for g, _ in _GROUPS] + ["Mean", "Mean(uw)"]
        header = f"{'Model':<20s} {'PCKh':>5s} " + " ".join(f"{c:>8s}" for c in cols)
        lines = [header]
        for t in thresholds:
            g = self.grouped(t)
            vals = [g[c] for c, _ in _GROUPS] + [g["Mean"], self.mean_unweighted[t]]
            lines.append(f"{name[:20]:<20s} {'@' + format(t, 'g'):>5s} "
                         + " ".join(f"{v:8.2f}" for v in vals))
        return "\n".join(lines)

    def joint_table(self, thresholds=None):
        """Per-joint scores, one line per joint (and the annotation count)."""
        thresholds = sorted(self.per_joint, reverse=True) if thresholds is None else thresholds
        lines = [f"{'joint':<6s} {'count':>6s} " + " ".join(f"{'@' + format(t, 'g'):>7s}"
                                                          for t in thresholds)]
        for j, n in enumerate(self.joint_names):
            lines.append(f"{n:<6s} {int(self.counts[j]):6d} "
                         + " ".join(f"{self.per_joint[t][j]:7.2f}" for t in thresholds))
        return "\n".join(lines)


def pckh(preds, ground_truth, thresholds=(0.5, 0.1), one_based=False, sc_bias=SC_BIAS,
         indices=None):
    """PCKh of predictions against MPII ground truth.

    Args:
        preds: ``(N, 16, 2)`` (or ``(N, 16, 3)``, scores ignored) keypoints in
            original image pixels, in the validation split's order.
        ground_truth: a ``gt_valid.mat`` path or the dict of
            :func:`load_ground_truth`.
        thresholds: fractions of the head size.
        one_based: whether ``preds`` use the MATLAB 1-based convention of the
            ground truth (published files do; this package's predictions do not).
        sc_bias: head size factor on the head box diagonal (0.6, standard).
        indices: ground-truth rows that ``preds`` belong to (the eval meta's
            ``person_id``), to score a part of the split (e.g. the bundled
            sample); ``None``: ``preds`` cover the whole split, in order.

    Returns:
        :class:`PCKhResult`.

    Raises:
        ValueError: shapes or rows that do not match the ground truth;
            ``NonFinitePredictionError`` (a ``ValueError``) for NaN or
            infinite predictions, naming how many and their rows. (A method
            that leaves a joint out on purpose can put it far outside the
            image, e.g. ``-1e6``: a miss.)

    Example:
    >>> gt = load_ground_truth("tests/data/mpii/gt_valid.mat")
    >>> res = pckh(load_predictions("tests/data/mpii/reference_preds/tompson.h5"), gt,
    ...            one_based=True)
    >>> round(res.mean[0.5], 2)  # Tompson et al. CVPR'15 publish 82.34
    82.34
    """
    gt = ground_truth if isinstance(ground_truth, dict) else load_ground_truth(ground_truth)
    joints, missing, boxes = gt["joints"], gt["missing"], gt["headboxes"]
    if indices is not None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(joints)):
            raise ValueError(
                f"`indices` must be ground-truth rows in 0..{len(joints) - 1}. "
                f"Received: indices with min {indices.min()} and max {indices.max()}")
        if len(np.unique(indices)) != len(indices):
            raise ValueError("`indices` must not repeat a person. Received: duplicated indices")
        joints, missing, boxes = joints[indices], missing[indices], boxes[indices]
    preds = np.asarray(preds, np.float64)
    if preds.ndim != 3 or preds.shape[1:2] != joints.shape[1:2] or preds.shape[2] < 2:
        raise ValueError(
            f"`preds` must be (N, {joints.shape[1]}, 2). Received: preds.shape={preds.shape}")
    if preds.shape[0] != joints.shape[0]:
        raise ValueError(
            f"`preds` has {preds.shape[0]} people but the ground truth has {joints.shape[0]} "
            "(the MPII validation split): predictions for another split or order? "
            f"Received: preds.shape={preds.shape}")
    # A NaN joint would count as a miss (the MATLAB toolkit's rule), which
    # lets a diverged model through with a low score instead of an error.
    rows = indices if indices is not None else np.arange(len(preds))
    check_finite(rows, preds[..., :2], what="MPII predictions", id_name="ground-truth row(s)")
    xy = preds[..., :2] + (0.0 if one_based else 1.0)
    visible = ~missing
    head = sc_bias * np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=-1)  # (N,)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.linalg.norm(xy - joints, axis=-1) / head[:, None]
    counts = visible.sum(axis=0)
    names = tuple(gt["joint_names"])
    keep = np.array([n not in EXCLUDED_FROM_MEAN for n in names])
    per_joint, mean, mean_uw = {}, {}, {}
    for t in thresholds:
        t = float(t)
        correct = (err <= t) & visible
        with np.errstate(invalid="ignore", divide="ignore"):
            pj = 100.0 * correct.sum(axis=0) / counts
        per_joint[t] = pj
        total = counts[keep].sum()
        mean[t] = float(100.0 * correct[:, keep].sum() / total) if total else float("nan")
        scored = pj[keep][counts[keep] > 0]
        mean_uw[t] = float(scored.mean()) if scored.size else float("nan")
    return PCKhResult(joint_names=names, per_joint=per_joint, mean=mean,
                      mean_unweighted=mean_uw, counts=counts, num_people=len(joints))


def evaluate_file(pred_file, gt_file, thresholds=(0.5, 0.1), one_based=True):
    """PCKh of a published-style prediction file (1-based by default)."""
    return pckh(load_predictions(pred_file), gt_file, thresholds, one_based=one_based)


def main(argv=None):
    from keras_dpn.core.errors import ArgumentParser  # one-line usage errors
    parser = ArgumentParser(
        prog="python -m keras_dpn.evaluation.mpii",
        description="MPII PCKh@0.5 and @0.1 of prediction files (.mat/.h5, key 'preds').")
    parser.add_argument("gt", help="gt_valid.mat")
    parser.add_argument("preds", nargs="+", help="prediction files")
    parser.add_argument("--zero-based", action="store_true",
                        help="the files hold 0-based coordinates (default: 1-based, MATLAB)")
    parser.add_argument("--joints", action="store_true", help="also print per-joint tables")
    args = parser.parse_args(argv)
    try:
        return _print_tables(args)
    except (ValueError, OSError) as e:
        # The messages name the file and what is wrong: one line, not a traceback.
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


def _print_tables(args):
    gt = load_ground_truth(args.gt)
    for i, path in enumerate(args.preds):
        res = pckh(load_predictions(path), gt, one_based=not args.zero_based)
        lines = res.table(os.path.splitext(os.path.basename(path))[0]).splitlines()
        # One header for the whole table unless per-joint tables come in between.
        print("\n".join(lines if (i == 0 or args.joints) else lines[1:]))
        if args.joints:
            print(res.joint_table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
