"""COCOEvaluator: equality with pycocotools, rescoring, OKS-NMS, bad input."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from keras_dpn.evaluation import coco as coco_eval
from keras_dpn.evaluation.coco import METRIC_NAMES, COCOEvaluator, oks_iou, oks_nms, rescore
from keras_dpn.keypoints import COCO_17


@pytest.fixture(scope="module")
def ann_file(test_data_dir):
    return test_data_dir / "coco" / "test_coco.json"


@pytest.fixture(scope="module")
def preds(test_data_dir):
    with open(test_data_dir / "coco" / "example_coco_preds.json") as f:
        return json.load(f)


def pycocotools_stats(ann_file, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_raw_results_equal_pycocotools(ann_file, preds, tmp_path):
    assert len(preds) == 73
    before = copy.deepcopy(preds)
    expected = pycocotools_stats(ann_file, preds)
    ev = COCOEvaluator(ann_file, output_dir=tmp_path)
    got = ev.evaluate_results(preds)
    assert [got[k] for k in METRIC_NAMES] == expected.tolist()
    assert preds == before  # loadRes got a copy
    assert json.loads((tmp_path / "keypoints_results.json").read_text()) == preds


def test_collected_batches_without_postprocessing_equal_pycocotools(ann_file, preds):
    # The per-batch path with rescoring and NMS off gives the same numbers.
    expected = pycocotools_stats(ann_file, preds)
    ev = COCOEvaluator(ann_file, rescore=False, nms_threshold=None)
    for start in range(0, len(preds), 16):
        chunk = preds[start:start + 16]
        ev.update([p["image_id"] for p in chunk],
                  np.array([p["keypoints"] for p in chunk]).reshape(-1, 17, 3),
                  [p["center"] for p in chunk], [p["scale"] for p in chunk],
                  [p["score"] for p in chunk])
    assert len(ev) == 73
    got = ev.evaluate()
    assert [got[k] for k in METRIC_NAMES] == expected.tolist()
    assert 0.0 < got["AP"] <= 1.0


def test_default_postprocessing_runs(ann_file, preds, tmp_path):
    ev = COCOEvaluator(ann_file, output_dir=tmp_path, results_name="r.json")
    ev.add_results(preds)
    got = ev.evaluate()
    written = json.loads((tmp_path / "r.json").read_text())
    assert 0 < len(written) <= 73
    assert set(got) == set(METRIC_NAMES)


def test_rescore():
    kp = np.zeros((3, 4, 3))
    kp[0, :, 2] = [0.9, 0.1, 0.5, 0.2]  # 0.2 is not above the threshold
    kp[1, :, 2] = [0.1, 0.1, 0.0, 0.2]  # nothing above: score 0
    kp[2, :, 2] = 1.0
    np.testing.assert_allclose(rescore(kp, [0.8, 0.9, 0.5]), [0.8 * 0.7, 0.0, 0.5])


def test_oks_iou_formula():
    sigmas = np.array(COCO_17.sigmas)
    g = np.zeros((17, 3))
    g[:, 0] = np.arange(17) * 10.0
    g[:, 2] = 1.0
    d = g.copy()
    d[:, 1] += 3.0
    area_g, area_d = 900.0, 1100.0
    expected = np.mean(np.exp(-9.0 / (2 * sigmas) ** 2 / ((area_g + area_d) / 2) / 2))
    np.testing.assert_allclose(oks_iou(g, d[None], area_g, [area_d], sigmas), [expected])
    # With a visibility threshold only joints confident in both poses count.
    d[5:, 2] = 0.0
    expected_vis = np.mean(np.exp(-9.0 / (2 * sigmas[:5]) ** 2 / 1000.0 / 2))
    np.testing.assert_allclose(oks_iou(g, d[None], area_g, [area_d], sigmas, 0.2),
                               [expected_vis])


def test_oks_nms_keeps_best_of_duplicates():
    rng = np.random.default_rng(0)
    base = np.concatenate([rng.uniform(100, 200, (17, 2)), np.ones((17, 1))], axis=1)
    near = base.copy()
    near[:, :2] += 0.5            # OKS ~ 1: a duplicate
    far = base.copy()
    far[:, :2] += 60.0            # another person
    kp = np.stack([near, base, far])
    keep = oks_nms(kp, [0.7, 0.9, 0.8], [10000.0] * 3, threshold=0.9)
    assert keep == [1, 2]
    # OKS exactly at the threshold is kept, above it is suppressed.
    ovr = oks_iou(base, near[None], 10000.0, [10000.0], COCO_17.sigmas)[0]
    assert oks_nms(kp[:2], [0.7, 0.9], [1e4] * 2, threshold=ovr) == [1, 0]


def test_evaluator_nms_is_per_image(ann_file, preds):
    ev = COCOEvaluator(ann_file, rescore=False)
    p = copy.deepcopy(preds[0])
    q = copy.deepcopy(p)
    q["score"] = p["score"] / 2
    other = copy.deepcopy(p)
    other["image_id"] = next(x["image_id"] for x in preds if x["image_id"] != p["image_id"])
    ev.add_results([p, q, other])
    out = ev.postprocess()
    assert [(r["image_id"], r["score"]) for r in out] == [
        (p["image_id"], p["score"]), (other["image_id"], other["score"])]
    # Rescoring on: box score times the mean keypoint score above 0.2.
    ev2 = COCOEvaluator(ann_file, nms_threshold=None)
    ev2.add_results([p])
    s = np.array(p["keypoints"]).reshape(17, 3)[:, 2]
    assert ev2.postprocess()[0]["score"] == pytest.approx(p["score"] * s[s > 0.2].mean())


def test_unknown_image_ids_are_named(ann_file, preds):
    bad = copy.deepcopy(preds[:3])
    bad[1]["image_id"] = 123456789
    ev = COCOEvaluator(ann_file)
    with pytest.raises(ValueError, match="123456789"):
        ev.evaluate_results(bad)
    ev.add_results(bad)
    with pytest.raises(ValueError, match="not in the annotation file"):
        ev.evaluate()


def test_empty_results_warn_and_score_zero(ann_file, tmp_path):
    ev = COCOEvaluator(ann_file, output_dir=tmp_path)
    with pytest.warns(UserWarning, match="no predictions"):
        got = ev.evaluate()
    assert got == {k: 0.0 for k in METRIC_NAMES}
    assert json.loads((tmp_path / "keypoints_results.json").read_text()) == []


def test_bad_arguments(ann_file, tmp_path):
    with pytest.raises(ValueError, match="annotation_file"):
        COCOEvaluator(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="nms_threshold"):
        COCOEvaluator(ann_file, nms_threshold=1.5)
    ev = COCOEvaluator(ann_file)
    with pytest.raises(ValueError, match="keypoints.shape"):
        ev.update([1], np.zeros((1, 16, 3)), [[0, 0]], [[1, 1]], [1.0])
    # An MPII spec against COCO annotations: the keypoint counts differ.
    ev = COCOEvaluator(ann_file, keypoint_spec="mpii")
    with pytest.raises(ValueError, match="17 keypoints"):
        ev.coco


def test_results_file_is_atomic(ann_file, preds, tmp_path, monkeypatch):
    ev = COCOEvaluator(ann_file, output_dir=tmp_path)
    ev.evaluate_results(preds[:5])
    good = (tmp_path / "keypoints_results.json").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(coco_eval.json, "dump", boom)
    with pytest.raises(RuntimeError):
        ev.evaluate_results(preds)
    assert (tmp_path / "keypoints_results.json").read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keypoints_results.json"]
