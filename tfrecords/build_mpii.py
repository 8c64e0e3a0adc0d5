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
    import importlib.util

    # The command-line file alone, not `keras_dpn.data.cli`: importing the
    # package starts Keras and TensorFlow (seconds, log lines), which --help
    # and a bad argument do not need; cli.main imports keras_dpn after parsing.
    where = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "keras_dpn", "data", "cli.py")
    loader = importlib.util.spec_from_file_location("keras_dpn_build_cli", where)
    cli = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(cli)
    sys.exit(cli.main("mpii"))
