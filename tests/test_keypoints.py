"""Keypoint metadata against its sources: OKS sigmas, flip pairs, counts."""

import numpy as np
import pytest

from keras_dpn.keypoints import COCO_17, MPII_16, get_keypoint_spec, validate_num_keypoints

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
