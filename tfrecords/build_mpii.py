"""Build MPII TFRecord shards: `python tfrecords/build_mpii.py --help`.

Example:
    python tfrecords/build_mpii.py                      # the bundled sample
    python tfrecords/build_mpii.py --annotations ANN.json --images DIR \
        --output shards/mpii_train --num-shards 32
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_dpn.data.cli import main

    sys.exit(main("mpii"))
