"""Keypoint metadata against its sources: OKS sigmas, flip pairs, counts."""

import numpy as np
import pytest

from keras_dpn.core.keypoints import COCO_17, MPII_16, get_keypoint_spec, validate_num_keypoints

# open-mmlab/mmpose configs/_base_/datasets/mpii.py (commit ba8cf337), `sigmas`,
# "adapted from COCO", in mmpose's MPII joint order (the order of MPII_16.names).
MMPOSE_MPII_SIGMAS = (0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026,
                      0.062, 0.072, 0.179, 0.179, 0.072, 0.062)
MMPOSE_MPII_NAMES = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee",
                     "left_ankle", "pelvis", "thorax", "upper_neck", "head_top", "right_wrist",
                     "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist")


def test_mpii_sigmas_are_mmpose_s():
    short = {"right": "r", "left": "l"}
    names = tuple("_".join([short.get(n.split("_")[0], n.split("_")[0])] + n.split("_")[1:])
                  for n in MMPOSE_MPII_NAMES)
    assert MPII_16.names == names
    assert MPII_16.sigmas == MMPOSE_MPII_SIGMAS


def test_coco_sigmas_are_cocoeval_s():
    from pycocotools.cocoeval import Params
    np.testing.assert_allclose(COCO_17.sigmas, Params(iouType="keypoints").kpt_oks_sigmas,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", [COCO_17, MPII_16])
def test_left_and_right_share_their_sigma_and_weight(spec):
    for a, b in spec.flip_pairs:
        assert spec.sigmas[a] == spec.sigmas[b]
        assert spec.weights[a] == spec.weights[b]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "17", None])
def test_validate_num_keypoints(value):
    with pytest.raises(ValueError, match=f"Received: num_keypoints={value!r}"):
        validate_num_keypoints(value)
    assert validate_num_keypoints(16) == 16


def test_unknown_keypoint_set():
    assert get_keypoint_spec("mpii") is MPII_16
    with pytest.raises(ValueError, match="Expected one of \\['coco', 'mpii'\\]"):
        get_keypoint_spec("crowdpose")


# ------------------------------------------------------------ the keypoint-set file

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

from keras_dpn.core.keypoints import (KeypointSpec, check_keypoint_count,  # noqa: E402
                                 load_keypoint_spec)

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                       "examples", "body12.json")
HAND5 = {"name": "hand5", "names": ["palm", "l_finger", "r_finger", "l_tip", "r_tip"],
         "flip_pairs": [[1, 2], [3, 4]], "skeleton": [[0, 1], [0, 2], [1, 3], [2, 4]],
         "sigmas": [0.05, 0.04, 0.04, 0.03, 0.03]}


@pytest.mark.parametrize("spec", [COCO_17, MPII_16], ids=["coco", "mpii"])
def test_builtin_sets_round_trip_through_a_file(spec, tmp_path):
    data = spec.to_dict()
    assert set(data) == {"name", "names", "flip_pairs", "skeleton", "sigmas", "upper_body",
                         "lower_body", "joint_weights", "colors"}
    path = tmp_path / f"{spec.name}.json"
    path.write_text(json.dumps(data))
    back = load_keypoint_spec(path)
    assert back == spec and back is not spec and hash(back) == hash(spec)
    assert get_keypoint_spec(str(path)) == spec and get_keypoint_spec(data) == spec


def test_custom_set_round_trip_every_field(tmp_path):
    spec = KeypointSpec.from_dict(dict(HAND5, upper_body=[0, 1, 2], lower_body=[3, 4],
                                       joint_weights=[1, 1, 1, 2, 0.5],
                                       colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]]))
    path = tmp_path / "hand5.json"
    path.write_text(json.dumps(spec.to_dict()))
    back = get_keypoint_spec(str(path))
    assert back == spec
    # Independent of to_dict: the values written by hand come back as given.
    assert back.sigmas == (0.05, 0.04, 0.04, 0.03, 0.03)
    assert back.flip_pairs == ((1, 2), (3, 4)) and list(back.flip_index) == [0, 2, 1, 4, 3]
    assert back.joint_weights == (1.0, 1.0, 1.0, 2.0, 0.5) and back.colors[3] == (1, 2, 3)
    # Optional fields left out: no half body, unit weights, the hue wheel.
    plain = KeypointSpec.from_dict(HAND5)
    assert plain.upper_body == () and list(plain.weights) == [1.0] * 5
    assert len(plain.limb_colors()) == 4


def test_example_file_is_coco_body_without_face():
    spec = get_keypoint_spec(EXAMPLE)
    assert spec.num_keypoints == 12 and len(spec.flip_pairs) == 6
    assert spec.sigmas == COCO_17.sigmas[5:]
    for a, b in spec.flip_pairs:  # l_x / r_x
        assert spec.names[a] == "l" + spec.names[b][1:]


def _bad(**changes):
    fields = dict(HAND5, **changes)
    return {k: v for k, v in fields.items() if v is not _DROP}


_DROP = object()
BAD_FILES = {
    "missing_sigmas": (_bad(sigmas=_DROP), "sigmas"),
    "missing_flip_pairs": (_bad(flip_pairs=_DROP), "flip_pairs"),
    "unknown_field": (_bad(sigma=[0.1] * 5), "sigma"),
    "names_not_unique": (_bad(names=["a", "b", "c", "d", "a"]), "names"),
    "names_empty": (_bad(names=[]), "names"),
    "name_empty_string": (_bad(names=["a", "", "c", "d", "e"]), "names"),
    "names_not_strings": (_bad(names=["a", "b", "c", "d", 5]), "names"),
    "name_not_string": (_bad(name=12), "name"),
    "flip_pair_out_of_range": (_bad(flip_pairs=[[1, 2], [3, 5]]), "flip_pairs"),
    "flip_pair_negative": (_bad(flip_pairs=[[-1, 2]]), "flip_pairs"),
    "flip_pair_with_itself": (_bad(flip_pairs=[[1, 2], [3, 3]]), "flip_pairs"),
    "flip_pair_twice": (_bad(flip_pairs=[[1, 2], [2, 1]]), "flip_pairs"),
    "joint_in_two_flip_pairs": (_bad(flip_pairs=[[1, 2], [1, 3]]), "flip_pairs"),
    "flip_pair_not_a_pair": (_bad(flip_pairs=[[1, 2, 3]]), "flip_pairs"),
    "flip_pair_float_index": (_bad(flip_pairs=[[1.0, 2]]), "flip_pairs"),
    "skeleton_out_of_range": (_bad(skeleton=[[0, 1], [4, 9]]), "skeleton"),
    "skeleton_not_a_list": (_bad(skeleton="0-1"), "skeleton"),
    "sigma_zero": (_bad(sigmas=[0.05, 0.0, 0.04, 0.03, 0.03]), "sigmas"),
    "sigma_negative": (_bad(sigmas=[0.05, -0.04, 0.04, 0.03, 0.03]), "sigmas"),
    "sigma_nan": (_bad(sigmas=[0.05, math.nan, 0.04, 0.03, 0.03]), "sigmas"),
    "sigma_inf": (_bad(sigmas=[0.05, math.inf, 0.04, 0.03, 0.03]), "sigmas"),
    "sigma_string": (_bad(sigmas=[0.05, "0.04", 0.04, 0.03, 0.03]), "sigmas"),
    "sigma_bool": (_bad(sigmas=[0.05, True, 0.04, 0.03, 0.03]), "sigmas"),
    "sigmas_not_one_per_joint": (_bad(sigmas=[0.05] * 4), "sigmas"),
    "joint_weights_not_one_per_joint": (_bad(joint_weights=[1.0] * 6), "joint_weights"),
    "joint_weight_negative": (_bad(joint_weights=[1, 1, -1, 1, 1]), "joint_weights"),
    "joint_weight_nan": (_bad(joint_weights=[1, 1, math.nan, 1, 1]), "joint_weights"),
    "upper_body_out_of_range": (_bad(upper_body=[0, 99]), "upper_body"),
    "upper_body_duplicated": (_bad(upper_body=[0, 1, 0]), "upper_body"),
    "lower_body_out_of_range": (_bad(lower_body=[3, 5]), "lower_body"),
    "lower_body_not_ints": (_bad(lower_body=["3"]), "lower_body"),
    "colors_not_one_per_limb": (_bad(colors=[[1, 2, 3]]), "colors"),
    "color_over_255": (_bad(colors=[[1, 2, 3]] * 3 + [[0, 0, 256]]), "colors"),
    "color_not_rgb": (_bad(colors=[[1, 2, 3]] * 3 + [[0, 0]]), "colors"),
    "builtin_name_other_set": (_bad(name="coco"), "name"),
}


@pytest.mark.parametrize("fields,field", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_keypoint_set_file_one_line_naming_file_and_field(fields, field, tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps(fields))  # NaN / Infinity as JSON's extension, as json writes
    with pytest.raises(ValueError) as info:
        get_keypoint_spec(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Keypoint set file {path}")
    assert f"`{field}`" in message or repr(field) in message
    # The same dict passed directly names the field too.
    with pytest.raises(ValueError, match=field):
        get_keypoint_spec(fields)


def test_keypoint_set_file_not_found_or_not_json(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=f"Keypoint set file not found: {missing}"):
        get_keypoint_spec(str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "name": "x",\n  "names": ["a" "b"]\n}\n')
    with pytest.raises(ValueError) as info:
        get_keypoint_spec(str(broken))
    assert f"Keypoint set file {broken} is not valid JSON" in str(info.value)
    assert "line 3" in str(info.value) and "\n" not in str(info.value)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"Keypoint set file {listed}: a keypoint set must be"):
        get_keypoint_spec(str(listed))


def test_constructor_checks_the_same_fields():
    with pytest.raises(ValueError, match="`flip_pairs` puts joint 1"):
        KeypointSpec(name="x", names=("a", "b", "c"), flip_pairs=((1, 2), (0, 1)),
                     skeleton=(), sigmas=(0.1,) * 3)
    with pytest.raises(ValueError, match="`sigmas` entry 0"):
        KeypointSpec(name="x", names=("a",), flip_pairs=(), skeleton=(), sigmas=(0.0,))


def test_keypoint_count_mismatch_names_both_sides():
    with pytest.raises(ValueError) as info:
        check_keypoint_count(get_keypoint_spec(EXAMPLE), 17, "the model DPN4_32",
                             f"from {EXAMPLE}")
    message = str(info.value)
    assert "'body12'" in message and "12 joints" in message and EXAMPLE in message
    assert "the model DPN4_32 has 17" in message
    assert check_keypoint_count(COCO_17, 17, "x") is COCO_17
