"""COCO / MPII TFRecord shards and the top-down tf.data input pipeline.

Modules: ``coco`` / ``mpii`` (annotation readers and checks), ``shards``
(parallel, atomic shard writer with skip counts), ``decoder`` (record layout,
``tf.train.Example`` -> dict of tensors), ``parser`` (per-person train / eval
transforms), ``pipeline`` (``build_dataset``, shard checks); those three need
TensorFlow. ``crops`` (:class:`PersonCrops`) reads the annotation file and the
images with OpenCV into a ``keras.utils.PyDataset``: training and evaluation
on any Keras backend, without TensorFlow.

Example:
>>> from keras_dpn import data
>>> data.build_coco_shards("sample_data/coco/annotations/person_keypoints_sample.json",
...                        "sample_data/coco/images", "/tmp/shards/coco", 2)  # doctest: +SKIP
>>> ds = data.build_dataset("/tmp/shards/coco-*.tfrecord", batch_size=32)  # doctest: +SKIP
>>> images, heatmaps, target_weight = next(iter(ds))  # doctest: +SKIP
"""

from keras_dpn import _optional
from keras_dpn.data.coco import build_coco_shards, read_coco
from keras_dpn.data.crops import PersonCrops
from keras_dpn.data.mpii import build_mpii_shards, read_mpii
from keras_dpn.data.shards import SkipCounter, format_report, write_shards

# The tf.data half needs TensorFlow: imported on first use, so that the
# readers and PersonCrops (numpy, any Keras backend) work without it.
__getattr__, _LAZY = _optional.lazy_exports(__name__, {
    "decoder": ("decode_example", "make_example"),
    "parser": ("PersonParser",),
    "pipeline": ("build_dataset", "check_shards", "load_detections", "resolve_shards"),
})
