"""COCO / MPII TFRecord shards and the top-down tf.data input pipeline.

Modules: ``coco`` / ``mpii`` (annotation readers and checks), ``shards``
(parallel, atomic shard writer with skip counts), ``augment`` (the training
augmentation: :class:`AugmentConfig`, its rule and its TensorFlow and numpy
executors), ``decoder`` (record layout,
``tf.train.Example`` -> dict of tensors), ``parser`` (per-person train / eval
transforms), ``pipeline`` (``build_dataset``, shard checks); those three need
TensorFlow. ``crops`` (:class:`PersonCrops`) reads the annotation file and the
images with OpenCV into a ``keras.utils.PyDataset``: training and evaluation
on any Keras backend, without TensorFlow.

Example (the bundled sample; shards in a temporary folder):
>>> import os, tempfile
>>> from keras_dpn import data
>>> with tempfile.TemporaryDirectory() as d:
...     manifest = data.build_coco_shards(
...         "sample_data/coco/annotations/person_keypoints_sample.json",
...         "sample_data/coco/images", os.path.join(d, "coco"), 2, progress=False,
...         verbose=False)
...     ds = data.build_dataset(os.path.join(d, "coco-*.tfrecord"), batch_size=8,
...                             input_size=(64, 48), heatmap_size=(16, 12), verbose=False)
...     images, heatmaps, target_weight = next(iter(ds))
>>> images.shape, heatmaps.shape, target_weight.shape
(TensorShape([8, 64, 48, 3]), TensorShape([8, 16, 12, 17]), TensorShape([8, 17]))
"""

from keras_dpn.core import optional as _optional
from keras_dpn.data.augment import AugmentConfig
from keras_dpn.data.coco import build_coco_shards, read_coco
from keras_dpn.data.crops import PersonCrops
from keras_dpn.data.mpii import build_mpii_shards, read_mpii
from keras_dpn.data.shards import SkipCounter, format_report, write_shards

# The tf.data half needs TensorFlow: imported on first use, so that the
# readers and PersonCrops (numpy, any Keras backend) work without it.
__getattr__, _LAZY = _optional.lazy_exports(__name__, {
    "decoder": ("decode_example", "make_example"),
    "parser": ("PersonParser",),
    "pipeline": ("Detections", "PipelineOptions", "build_dataset", "check_shards",
                 "load_detections", "resolve_shards", "shard_keypoint_spec"),
})
