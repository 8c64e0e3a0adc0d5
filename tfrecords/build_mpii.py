"""Build MPII TFRecord shards: `python tfrecords/build_mpii.py --help`.

Example:
    python tfrecords/build_mpii.py                      # the bundled sample
    python tfrecords/build_mpii.py --annotations ANN.json --images DIR \
        --output shards/mpii_train --num-shards 32
"""

import os
import runpy
import sys

if __name__ == "__main__":
    # build_coco.py's loader (the tfrecords folder is not a package).
    build = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "build_coco.py"))["build"]
    sys.exit(build("mpii"))
