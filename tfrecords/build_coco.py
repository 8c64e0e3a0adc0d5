"""Build COCO TFRecord shards: `python tfrecords/build_coco.py --help`.

Example:
    python tfrecords/build_coco.py                      # the bundled sample
    python tfrecords/build_coco.py --annotations ANN.json --images DIR \
        --output shards/coco_train --num-shards 32
"""

import importlib.util
import os
import sys


def build(dataset):
    """Runs the shard builder's command line for ``dataset`` ("coco" or "mpii").

    The command-line file alone, not `keras_dpn.data.cli`: importing the
    package starts Keras and TensorFlow (seconds, log lines), which --help
    and a bad argument do not need; cli.main imports keras_dpn after parsing.
    find_spec locates the installed package without running its __init__.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    package = importlib.util.find_spec("keras_dpn")
    if package is None:
        sys.exit("error: keras-dpn is not installed; from the checkout run: "
                 "python -m pip install -e . (see README.md)")
    where = os.path.join(package.submodule_search_locations[0], "data", "cli.py")
    loader = importlib.util.spec_from_file_location("keras_dpn_build_cli", where)
    cli = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(cli)
    return cli.main(dataset)


if __name__ == "__main__":
    sys.exit(build("coco"))
