"""Train a DPN (or any registered variant) on MPII, with PCKh@0.5 every epoch.

The same job as ``recipes/train_coco.py`` (strategies, checkpoints, resume,
best checkpoint by ``val_PCKh``, NaN guard, export) with the MPII defaults of
the paper: input 256x256, 16 joints, Adam 1e-3, x0.1 at epochs 90 and 120,
140 epochs. With no arguments it is a smoke run on the 5 bundled MPII people
(``sample_data/mpii``), scored against ``tests/data/mpii/gt_valid.mat``::

    python recipes/train_mpii.py                                   # sample smoke run
    python recipes/train_mpii.py --train-shards 'shards/mpii_train-*.tfrecord' \\
        --val-shards 'shards/mpii_val-*.tfrecord' --ground-truth gt_valid.mat \\
        --output runs/dpn4_32_mpii

Run ``python recipes/train_mpii.py --help`` for every option; ``keras-dpn
train --preset mpii_sample`` (or ``--ground-truth``) is the same job.
"""

import os
import runpy
import sys

# train_coco.py's main, read from its file (the recipes folder is not a package).
main = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "train_coco.py"))["main"]

if __name__ == "__main__":
    sys.exit(main(dataset="mpii"))
