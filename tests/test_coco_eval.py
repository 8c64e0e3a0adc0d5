"""COCOEvaluator: equality with pycocotools, rescoring, OKS-NMS, bad input."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from keras_dpn.evaluation import coco as coco_eval
from keras_dpn.evaluation.coco import METRIC_NAMES, COCOEvaluator, oks_iou, oks_nms, rescore
from keras_dpn.core.keypoints import COCO_17


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


# The HRNet reference's OKS-NMS (lib/nms/nms.py, oks_iou / oks_nms), transcribed
# with its defaults (no visibility threshold); sigmas passed in.
def reference_oks_iou(g, d, a_g, a_d, sigmas):
    variances = (sigmas * 2) ** 2
    xg, yg = g[0::3], g[1::3]
    ious = np.zeros((d.shape[0]))
    for n_d in range(0, d.shape[0]):
        dx, dy = d[n_d, 0::3] - xg, d[n_d, 1::3] - yg
        e = (dx ** 2 + dy ** 2) / variances / ((a_g + a_d[n_d]) / 2 + np.spacing(1)) / 2
        ious[n_d] = np.sum(np.exp(-e)) / e.shape[0] if e.shape[0] != 0 else 0.0
    return ious


def reference_oks_nms(kpts_db, thresh, sigmas):
    scores = np.array([k["score"] for k in kpts_db])
    kpts = np.array([np.asarray(k["keypoints"]).flatten() for k in kpts_db])
    areas = np.array([k["area"] for k in kpts_db])
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        ovr = reference_oks_iou(kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], sigmas)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def reference_postprocess(preds, in_vis_thre=0.2, oks_thre=0.9):
    """The reference's COCODataset.evaluate (lib/dataset/coco.py) before loadRes:
    rescoring by the mean keypoint score above 0.2, then OKS-NMS 0.9 per image.
    Area is scale[0] * scale[1]: our scales are in pixels (the reference's x 200)."""
    by_image = {}
    for p in copy.deepcopy(preds):
        kp = np.asarray(p["keypoints"], np.float64).reshape(17, 3)
        confident = [s for s in kp[:, 2] if s > in_vis_thre]
        p["score"] = p["score"] * (sum(confident) / len(confident) if confident else 0)
        p["area"] = p["scale"][0] * p["scale"][1]
        by_image.setdefault(p["image_id"], []).append(p)
    out = []
    for people in by_image.values():
        keep = reference_oks_nms(people, oks_thre, np.array(COCO_17.sigmas))
        out += [people[i] for i in keep]
    for p in out:
        del p["area"]
    return out


def test_default_postprocessing_equals_the_reference(ann_file, preds, tmp_path):
    """Default rescoring + OKS-NMS: the kept poses, their scores and the AP equal the
    reference's pipeline (transcribed above) fed to pycocotools directly."""
    # The file's scales are the reference's (pixels / 200); ours are pixels. Every
    # fifth pose gets a lower-scored near-duplicate for OKS-NMS to drop (not those that
    # rescore to 0: the tie's order is the sort's, undefined in the reference).
    preds = copy.deepcopy(preds)
    for p in preds:
        p["scale"] = [s * 200.0 for s in p["scale"]]
    dups = copy.deepcopy([p for p in preds[::5] if max(p["keypoints"][2::3]) > 0.2])
    for d in dups:
        d["score"] *= 0.9
        d["keypoints"] = [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(d["keypoints"])]
    preds = preds + dups
    ev = COCOEvaluator(ann_file, output_dir=tmp_path, results_name="r.json")
    ev.add_results(preds)
    got = ev.evaluate()
    written = json.loads((tmp_path / "r.json").read_text())
    expected = reference_postprocess(preds)
    assert 0 < len(expected) < len(preds)  # NMS dropped poses: the test exercises it
    key = lambda r: (r["image_id"], -r["score"], r["keypoints"])  # noqa: E731
    assert len(written) == len(expected)
    for w, e in zip(sorted(written, key=key), sorted(expected, key=key)):
        assert w["image_id"] == e["image_id"]
        assert w["score"] == pytest.approx(e["score"], rel=1e-12)
        np.testing.assert_allclose(w["keypoints"], e["keypoints"], rtol=0, atol=1e-9)
    stats = pycocotools_stats(ann_file, expected)
    np.testing.assert_allclose([got[k] for k in METRIC_NAMES], stats, rtol=0, atol=1e-12)
    # Not the raw numbers: rescoring and NMS change the AP of this file.
    assert got["AP"] != pycocotools_stats(ann_file, preds)[0]


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


def _poisoned(preds, case):
    """A copy of ``preds`` with NaN / inf put in as a diverged model would."""
    bad = copy.deepcopy(preds)
    if case == "all_keypoints_nan":
        hit = list(range(len(bad)))
    elif case == "half_keypoints_nan":
        hit = list(range(0, len(bad), 2))
    elif case == "one_score_nan":
        hit = [5]
    else:  # one_keypoint_inf
        hit = [3]
    for i in hit:
        if case == "one_score_nan":
            bad[i]["score"] = float("nan")
        elif case == "one_keypoint_inf":
            bad[i]["keypoints"][7] = float("inf")
        else:
            bad[i]["keypoints"] = [float("nan")] * len(bad[i]["keypoints"])
    return bad, hit


NON_FINITE_CASES = ("all_keypoints_nan", "half_keypoints_nan", "one_score_nan",
                    "one_keypoint_inf")


@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_non_finite_results_are_refused(ann_file, preds, tmp_path, case):
    # Before the check, pycocotools scored these: AP 1.0 for all-NaN keypoints,
    # 0.91 for half of them, and a NaN score changed the AP.
    from keras_dpn.evaluation import NonFinitePredictionError
    bad, hit = _poisoned(preds, case)
    ids = list(dict.fromkeys(bad[i]["image_id"] for i in hit))
    ev = COCOEvaluator(ann_file, output_dir=tmp_path)
    pattern = rf"^{len(hit)} of 73 results hold NaN or infinite values on image id\(s\) " + \
        ", ".join(str(i) for i in ids) + r"\."
    with pytest.raises(NonFinitePredictionError, match=pattern):
        ev.evaluate_results(bad)
    assert not (tmp_path / "keypoints_results.json").exists()  # nothing written
    # The per-batch path (rescoring and OKS-NMS first) refuses them as they arrive.
    with pytest.raises(ValueError, match=rf"^{len(hit)} of 73 predictions given to COCOEvaluator"):
        ev.add_results(bad)
    assert len(ev) == 0
    # Predictions stored before a bad batch stay; the bad batch is not added.
    ev.add_results(preds[:10])
    with pytest.raises(ValueError, match="NaN or infinite"):
        ev.update([bad[hit[0]]["image_id"]],
                  np.array(bad[hit[0]]["keypoints"], np.float64).reshape(1, 17, 3),
                  [bad[hit[0]]["center"]], [bad[hit[0]]["scale"]], [bad[hit[0]]["score"]])
    assert len(ev) == 10


def test_non_finite_center_or_scale_is_refused(ann_file, preds):
    ev = COCOEvaluator(ann_file)
    kp = np.array(preds[0]["keypoints"]).reshape(1, 17, 3)
    with pytest.raises(ValueError, match=r"on image id\(s\) 42\..*non-finite scales"):
        ev.update([42], kp, [[10.0, 10.0]], [[np.inf, 5.0]], [1.0])


def test_results_json_is_valid_json(ann_file, preds, tmp_path):
    # Bare NaN is not JSON: a stray NaN in any field fails instead of writing one.
    ev = COCOEvaluator(ann_file, output_dir=tmp_path)
    ev.evaluate_results(preds[:5])
    good = (tmp_path / "keypoints_results.json").read_text()
    json.loads(good)
    bad = copy.deepcopy(preds[:5])
    bad[0]["center"] = [float("nan"), 1.0]
    with pytest.raises(ValueError, match="JSON compliant"):
        ev.evaluate_results(bad)
    assert (tmp_path / "keypoints_results.json").read_text() == good


def test_postprocess_groups_by_image_in_first_seen_order(ann_file, preds):
    # Grouping with one sort (not one scan per image) keeps the same output.
    ev = COCOEvaluator(ann_file, rescore=False, nms_threshold=None)
    shuffled = [preds[i] for i in np.random.default_rng(0).permutation(len(preds))]
    ev.add_results(shuffled)
    out = ev.postprocess()
    first_seen = list(dict.fromkeys(p["image_id"] for p in shuffled))
    expected = [p for image_id in first_seen for p in shuffled if p["image_id"] == image_id]
    assert [(r["image_id"], r["score"], r["keypoints"]) for r in out] == \
        [(p["image_id"], p["score"], p["keypoints"]) for p in expected]


def test_subset_of_images_equals_pycocotools_img_ids(ann_file, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    subset = [p for p in preds if p["image_id"] in (785, 40083)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ref = COCOeval(gt, gt.loadRes(copy.deepcopy(subset)), "keypoints")
        ref.params.imgIds = [785, 40083]
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    ev = COCOEvaluator(ann_file)
    got = ev.evaluate_results(subset, image_ids=[40083, 785, 785])
    assert [got[k] for k in METRIC_NAMES] == ref.stats.tolist()
    # On every image, the two images left out count their people as missed.
    assert ev.evaluate_results(subset)["AR"] < got["AR"]
    with pytest.raises(ValueError, match="image_ids"):
        ev.evaluate_results(subset, image_ids=[785, 123456789])


@pytest.mark.parametrize("vis_threshold", [None, 0.2])
def test_oks_nms_equals_the_greedy_loop(vis_threshold):
    # The reference's loop (one oks_iou per kept pose) against the pairwise-matrix pass.
    def loop_nms(kp, scores, areas, threshold):
        order, keep = np.argsort(-scores, kind="stable"), []
        while order.size:
            i, rest = order[0], order[1:]
            keep.append(int(i))
            ovr = oks_iou(kp[i], kp[rest], areas[i], areas[rest], COCO_17.sigmas, vis_threshold)
            order = rest[ovr <= threshold]
        return keep

    rng = np.random.default_rng(1)
    for trial in range(20):
        people = rng.uniform(50, 500, (rng.integers(1, 6), 17, 2))
        boxes = people[rng.integers(0, len(people), rng.integers(1, 40))]
        kp = np.concatenate([boxes + rng.normal(0, rng.choice([0.5, 3.0, 15.0]), boxes.shape),
                             rng.uniform(0, 1, boxes.shape[:2] + (1,))], axis=-1)
        scores = rng.uniform(0, 1, len(kp))
        scores[rng.integers(0, len(kp))] = scores[0]  # a tie
        areas = rng.uniform(2e3, 3e4, len(kp))
        for threshold in (0.3, 0.9, 1.0):
            assert oks_nms(kp, scores, areas, threshold, vis_threshold=vis_threshold) == \
                loop_nms(kp, scores, areas, threshold), (trial, threshold)


def _set(key, value):
    def change(r):
        r[key] = value
    return change


MALFORMED_RESULTS = {
    # case: (how result 4 is broken, what the one-line error must say)
    "no_score": (lambda r: r.pop("score"), r"^Result 4 has no score "),
    "no_category": (lambda r: r.pop("category_id"), r"^Result 4 has no category_id "),
    "not_a_dict": (None, r"^Result 4 has no image_id, category_id, keypoints, score "),
    "string_score": (_set("score", "0.9"), r"^Result 4's `score` must be a number\. "
                                           r"Received: score='0\.9'$"),
    "bool_score": (_set("score", True), r"^Result 4's `score` must be a number"),
    "string_image_id": (_set("image_id", "785"), r"^Result 4's `image_id` must be an integer"
                                                 r".*Received: image_id='785'$"),
    "float_image_id": (_set("image_id", 785.0), r"Received: image_id=785\.0$"),
    "fractional_image_id": (_set("image_id", 785.7), r"Received: image_id=785\.7$"),
    "other_category": (_set("category_id", 2), r"^1 of 73 results have a `category_id` other "
                                               r"than the evaluated category 1 .*AP 0"),
    "short_keypoints": (lambda r: r["keypoints"].pop(), r"needs 51 keypoint values .*"
                                                         r"len\(keypoints\)=50"),
    "null_keypoints": (_set("keypoints", None), r"needs 51 keypoint values .*keypoints=None"),
    "string_keypoint": (lambda r: r["keypoints"].__setitem__(3, "1.5"),
                        r"^Every result's `keypoints` must be numbers\. Received: result 4 "),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_RESULTS))
def test_malformed_results_are_refused_in_one_line_before_writing(ann_file, preds, tmp_path,
                                                                   case):
    # Before: KeyError / TypeError tracebacks from pycocotools, an AssertionError after
    # the results file was written (string or fractional ids), AP 0.0 without a word
    # (another category), or a silently accepted 785.0 / True.
    bad = copy.deepcopy(preds)
    change, pattern = MALFORMED_RESULTS[case]
    if change is None:
        bad[4] = 5
    else:
        change(bad[4])
    ev = COCOEvaluator(ann_file, output_dir=tmp_path)
    with pytest.raises(ValueError, match=pattern) as info:
        ev.evaluate_results(bad)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_category_of_the_evaluator_must_be_in_the_annotation_file(ann_file, preds):
    bad = copy.deepcopy(preds)
    for r in bad:
        r["category_id"] = 3
    with pytest.raises(ValueError, match=r"has no category 3 \(its categories: \[1\]\)"):
        COCOEvaluator(ann_file, category_id=3).evaluate_results(bad)


def test_numpy_ids_and_scores_are_accepted(ann_file, preds):
    expected = pycocotools_stats(ann_file, preds)
    mixed = copy.deepcopy(preds)
    for r in mixed:
        r["image_id"], r["score"] = np.int64(r["image_id"]), np.float32(r["score"])
    got = COCOEvaluator(ann_file).evaluate_results(mixed)
    assert got["AP"] == pytest.approx(expected[0], abs=1e-6)


def test_results_file_path_and_its_json_errors(ann_file, preds, tmp_path):
    good = tmp_path / "results.json"
    good.write_text(json.dumps(preds))
    ev = COCOEvaluator(ann_file)
    assert ev.evaluate_results(good)["AP"] == pycocotools_stats(ann_file, preds)[0]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 785,\n  "score": oops}]')
    with pytest.raises(ValueError, match=r"not valid JSON: .* at line 2, column 12\. "
                                         r"Received: results='.*broken\.json'$"):
        ev.evaluate_results(broken)
    with pytest.raises(ValueError, match=r"Could not read the results file .*missing\.json"):
        ev.evaluate_results(tmp_path / "missing.json")


def test_annotation_json_errors_name_the_file(tmp_path):
    broken = tmp_path / "ann.json"
    broken.write_text('{"images": [\n  }')
    ev = COCOEvaluator(broken)
    with pytest.raises(ValueError, match=r"line 2 column 3 .*annotation_file='.*ann\.json'"):
        ev.coco


def test_output_dir_with_a_file_in_the_way(ann_file, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^Cannot write into .*file/sub: .*file is a file, "
                                         r"not a folder\. Received: output_dir="):
        COCOEvaluator(ann_file, output_dir=tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_results_file_is_one_line(ann_file, preds, tmp_path, monkeypatch):
    # As root a chmod'ed folder stays writable: fail the temporary file as a
    # read-only disk would.
    import errno
    import os

    ev = COCOEvaluator(ann_file, output_dir=tmp_path / "out")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(ValueError, match=r"^Could not write the results JSON \(Read-only file "
                                         r"system\)\. Received: path='.*keypoints_results"):
        ev.evaluate_results(preds)
