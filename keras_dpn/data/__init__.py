"""COCO / MPII TFRecord shards and the top-down tf.data input pipeline.

>>> from keras_dpn import data
>>> sorted(n for n in ("build_dataset", "build_coco_shards") if hasattr(data, n))
['build_coco_shards', 'build_dataset']
"""

from keras_dpn.data.coco import build_coco_shards, read_coco
from keras_dpn.data.decoder import decode_example, make_example
from keras_dpn.data.mpii import build_mpii_shards, read_mpii
from keras_dpn.data.parser import PersonParser
from keras_dpn.data.pipeline import (build_dataset, check_shards, load_detections,
                                     resolve_shards)
from keras_dpn.data.shards import SkipCounter, format_report, write_shards
