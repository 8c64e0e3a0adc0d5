"""Prints MPII PCKh of the published reference predictions in tests/data/mpii.

    python benchmarks/mpii_reference_pckh.py            # the docs/benchmarks.md table
    python benchmarks/mpii_reference_pckh.py --joints   # plus per-joint tables

Each file holds the validation-split predictions that its authors published
(1-based MATLAB coordinates, like gt_valid.mat). "Mean" is the standard mean
without pelvis and thorax, pooled over joints (MPII toolkit, HRNet);
"Mean(uw)" the unweighted mean of the 14 joints (bearpaw/pytorch-pose).
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parent.parent

from keras_dpn.evaluation import mpii  # noqa: E402

DATA = REPO / "tests" / "data" / "mpii"
FILES = ("tompson.h5", "newell.h5", "bearpaw-hg_s1_b1.mat", "bearpaw-hg_s2_b1.mat",
         "bearpaw-hg_s8_b1.mat")

if __name__ == "__main__":
    sys.exit(mpii.main([str(DATA / "gt_valid.mat")]
                       + [str(DATA / "reference_preds" / f) for f in FILES] + sys.argv[1:]))
