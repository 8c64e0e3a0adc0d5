"""Build COCO TFRecord shards: `python tfrecords/build_coco.py --help`.

Example:
    python tfrecords/build_coco.py                      # the bundled sample
    python tfrecords/build_coco.py --annotations ANN.json --images DIR \
        --output shards/coco_train --num-shards 32
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_dpn.data.cli import main

    sys.exit(main("coco"))
