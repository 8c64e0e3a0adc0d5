"""Train a DPN (or any registered variant) on COCO keypoints, with COCO AP every epoch.

With no arguments it runs the whole job on the bundled sample
(``sample_data/coco``, 124 people): builds the shards if missing, trains
DPN4_32 until it has memorized the sample, evaluates COCO AP after each
epoch on the same images (so the AP measures memorization, not
generalization), exports the best weights, and draws the exported model's
predictions on a sample image. Under 10 minutes on two idle CPU cores.

The sample run's settings, and why: input 128x96 (a quarter of the paper's
pixels, so four times faster per step; still 32x24 heatmaps), batch 4 (31
optimizer steps per epoch on 124 people rather than 3), 50 epochs of Adam 1e-3,
x0.1 for the last 6 (AP about 0.75 on the sample in under 10 minutes), no
augmentation and no flip test (memorizing 124 fixed crops is the fastest
visible proof of learning; augmentation is for generalizing, and a model that
never saw a mirrored person predicts worse on one), mixed_bfloat16 on CPU.
Any of them can be overridden.

With data it follows the paper's schedule: Adam 1e-3, x0.1 at epochs 90 and
120, 140 epochs, input 256x192, the HRNet reference augmentation,
``--batch-size`` per replica::

    python recipes/train_coco.py                                   # the sample run
    python recipes/train_coco.py --train-shards 'shards/coco_train-*.tfrecord' \\
        --val-shards 'shards/coco_val-*.tfrecord' \\
        --annotations annotations/person_keypoints_val2017.json \\
        --detections COCO_val2017_detections_AP_H_56_person.json --output runs/dpn4_32
    python recipes/train_coco.py ... --output runs/dpn4_32 --resume   # after a kill
    TF_CONFIG='{...}' python recipes/train_coco.py ... --strategy multi_worker

Exit status: 0 done, 2 bad input (reported before anything is trained or
written), 3 the loss diverged (the last good checkpoint is kept).

The job is ``keras-dpn train`` (``keras_dpn/cli/train.py``) with the COCO
defaults; this script stays the documented entry point of a checkout.
"""

import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_package_file(*parts, name):
    """A module file of the installed keras_dpn, run without importing the package.

    Importing the package starts Keras (which reads KERAS_BACKEND once, so
    --backend must come first) and TensorFlow, which --help and a bad argument
    do not need; the command imports keras_dpn after parsing and checking.
    ``find_spec`` locates the package without running its ``__init__``.
    """
    spec = importlib.util.find_spec("keras_dpn")
    if spec is None:
        sys.exit("error: keras-dpn is not installed; from the checkout run: "
                 "python -m pip install -e . (see README.md)")
    where = os.path.join(spec.submodule_search_locations[0], *parts)
    loader = importlib.util.spec_from_file_location(name, where)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


train_command = load_package_file("cli", "train.py", name="keras_dpn_train_command")
SAMPLE, main = train_command.SAMPLE, train_command.main

if __name__ == "__main__":
    sys.exit(main(dataset="coco"))
