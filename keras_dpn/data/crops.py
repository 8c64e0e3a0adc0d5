"""Person crops as a ``keras.utils.PyDataset``: OpenCV and numpy, no TensorFlow.

:class:`PersonCrops` reads a COCO (or MPII) annotation file and its images
with OpenCV and yields the batches that ``build_dataset`` yields from
TFRecord shards, so that ``model.fit`` and the evaluation callbacks work on
any Keras backend (JAX, PyTorch) without TensorFlow installed:

* ``training=True``: ``(images, heatmaps, target_weight)`` with the HRNet
  reference augmentation of :mod:`keras_dpn.data.augment` (half body, scale
  +-30%, rotation ``clip(N(0, 40), -80, 80)`` with probability 0.6,
  horizontal flip) drawn by its numpy executor, one ``cv2.warpAffine`` per
  person, Gaussian targets from
  :class:`keras_dpn.core.codec.HeatmapCodec`;
* ``training=False``: ``(images, meta)`` of the unaugmented ground-truth-box
  crops, in a fixed order, for :class:`keras_dpn.COCOEvaluationCallback`
  and :func:`keras_dpn.evaluation.predict_coco`.

The rule is the one :class:`keras_dpn.data.PersonParser` runs (written once
in :mod:`keras_dpn.data.augment`); the random draws are not the same numbers
(numpy here, TF stateless ops there). Each batch decodes its images from
disk: the TFRecord pipeline (which decodes only the crop windows) is the fast
path for large runs.

Example:
>>> crops = PersonCrops("sample_data/coco/annotations/person_keypoints_sample.json",
...                     "sample_data/coco/images", batch_size=4, input_size=(64, 48),
...                     heatmap_size=(16, 12))
>>> images, heatmaps, weight = crops[0]
>>> images.shape, heatmaps.shape, weight.shape
((4, 64, 48, 3), (4, 16, 12, 17), (4, 17))
"""

import cv2
import keras
import numpy as np

from keras_dpn.core import transforms
from keras_dpn.core.codec import HeatmapCodec
from keras_dpn.core.keypoints import get_keypoint_spec
from keras_dpn.data.augment import NumpyAugment, reject_loose_settings


def _read_rgb(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"Could not read the image file. Received: {path!r}")
    return np.ascontiguousarray(bgr[..., ::-1])


class PersonCrops(keras.utils.PyDataset):
    """Batches of person crops read from an annotation file and its images.

    Args:
        annotation_file: COCO keypoint json (``dataset="coco"`` or a custom
            ``KeypointSpec``) or MPII json (``dataset="mpii"``), as read by
            :func:`keras_dpn.data.read_coco` / :func:`~keras_dpn.data.read_mpii`.
        image_dir: folder of the images the annotations name.
        dataset: ``"coco"``, ``"mpii"`` or a ``KeypointSpec``.
        training: augmented ``(images, heatmaps, target_weight)`` batches,
            reshuffled every epoch (True) or ``(images, meta)`` evaluation
            batches in annotation order (False).
        batch_size: people per batch. Training drops the last partial batch
            (one batch shape: one compiled step); evaluation keeps it.
        input_size: ``(height, width)`` of the crops.
        heatmap_size: ``(height, width)`` of the targets.
        sigma: Gaussian sigma in heatmap pixels.
        augment: training only: a :class:`~keras_dpn.data.AugmentConfig`,
            True (the reference recipe, ``AugmentConfig()``) or None / False
            (none).
        padding: box padding (1.25).
        shuffle: training only: a new order every epoch (False: annotation order).
        seed: seed of the shuffling and augmentation (epoch ``e`` and batch
            ``i`` draw from ``(seed, e, i)``, whatever the worker count).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of
            ``keras.utils.PyDataset``.
    """

    def __init__(self, annotation_file, image_dir, dataset="coco", training=True, batch_size=32,
                 input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0, augment=True,
                 padding=1.25, shuffle=True, seed=None, **kwargs):
        reject_loose_settings(kwargs, "PersonCrops")
        super().__init__(**kwargs)
        from keras_dpn.data.coco import read_coco
        from keras_dpn.data.mpii import read_mpii

        self.spec = get_keypoint_spec(dataset)
        self.codec = HeatmapCodec(input_size, heatmap_size, sigma)
        self.input_size = self.codec.input_size
        self.aspect_ratio = self.input_size[1] / self.input_size[0]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
        # The augmentation's settings, its rule and its numpy draws.
        self.augment = NumpyAugment(augment, self.spec, self.input_size)
        self.training = bool(training)
        self.batch_size = batch_size
        self.padding = float(padding)
        self.shuffle = bool(shuffle)
        self.seed = 0 if seed is None else int(seed)
        self.epoch = 0

        reader = read_mpii if self.spec.name == "mpii" else read_coco
        entries, self.skips = reader(annotation_file, image_dir, dataset=self.spec)
        self.people = [(entry, person) for entry in entries for person in entry["people"]]
        if len(self.people) < (batch_size if self.training else 1):
            raise ValueError(
                f"{annotation_file} holds {len(self.people)} usable people, fewer than one "
                f"{'training ' if self.training else ''}batch. Received: batch_size={batch_size}")
        self._order = np.arange(len(self.people))
        self._shuffle()

    def __len__(self):
        n = len(self.people)
        return n // self.batch_size if self.training else -(-n // self.batch_size)

    def __iter__(self):
        # The evaluation loop iterates the dataset like a tf.data.Dataset.
        for i in range(len(self)):
            yield self[i]

    def on_epoch_end(self):
        self.epoch += 1
        self._shuffle()

    def set_epoch(self, epoch):
        """Continues at epoch ``epoch`` (0-based): the order and augmentation draws
        that epoch has in an uninterrupted run. A resumed ``Trainer`` calls it."""
        self.epoch = int(epoch)
        self._shuffle()

    def _shuffle(self):
        if self.training and self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(len(self.people))

    def _window(self, person):
        if "center" in person:  # MPII: the annotation's own window, in pixels
            return (np.asarray(person["center"], np.float32),
                    np.asarray(person["scale"], np.float32))
        return transforms.box_to_center_scale(person["bbox"], self.aspect_ratio, self.padding)

    # ------------------------------------------------------------------ batches
    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch index out of range. Received: index={index}")
        picked = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        images = {}
        for i in picked:
            path = self.people[i][0]["path"]
            if path not in images:
                images[path] = _read_rgb(path)
        if self.training:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return self._train_batch(images, picked, rng)
        out = [self._eval_example(images[entry["path"]], entry, person)
               for entry, person in (self.people[i] for i in picked)]
        crops = np.stack([c for c, _ in out])
        meta = {k: np.stack([m[k] for _, m in out]) for k in out[0][1]}
        return crops, meta

    def _eval_example(self, image, entry, person):
        center, scale = self._window(person)
        crop = transforms.crop_image(image, center, scale, self.input_size)
        meta = {"image_id": np.int64(entry["image_id"]), "center": center.astype(np.float32),
                "scale": scale.astype(np.float32), "score": np.float32(1.0),
                "bbox": np.asarray(person["bbox"], np.float32),
                "person_id": np.int64(person["id"]),
                "keypoints": np.asarray(person["keypoints"], np.float32)}
        return transforms.normalize_image(crop), meta

    def _train_batch(self, images, picked, rng):
        """Augmented examples of the people ``picked``: one draw for the batch, then a warp each."""
        people = [self.people[i] for i in picked]
        kp = np.stack([np.asarray(person["keypoints"], np.float64) for _, person in people])
        joints, visible = kp[..., :2], np.minimum(kp[..., 2], 1.0)
        windows = [self._window(person) for _, person in people]
        center = np.stack([c for c, _ in windows])
        scale = np.stack([s for _, s in windows])
        sample = self.augment.sample(self.augment.draws(rng, (len(people),)), joints, visible,
                                     center, scale)
        out = [self.transform(images[entry["path"]], joints[n], visible[n], sample.center[n],
                              sample.scale[n], sample.rotation[n], sample.flip[n])
               for n, (entry, _) in enumerate(people)]
        return tuple(np.stack(parts) for parts in zip(*out))

    def transform(self, image, joints, visible, center, scale, rotation=0.0, flip=False):
        """Crop and targets of one person for given augmentation parameters.

        The numpy twin of :meth:`keras_dpn.data.PersonParser.transform` (same
        arguments, same results up to the warp's rounding).

        Args:
            image: ``(H, W, 3)`` uint8 RGB image.
            joints: ``(K, 2)`` image pixels; visible: ``(K,)``.
            center, scale: ``(2,)`` window in the *unflipped* image.
            rotation: degrees; flip: mirror the image (``x -> W - 1 - x``)
                inside the same warp and swap left / right joints.

        Returns:
            ``(image (h, w, 3) float32 normalized, heatmaps (h', w', K), target_weight (K,))``.
        """
        forward, _ = self.augment.matrices(center, scale, rotation, flip, image.shape[1])
        joints, visible = self.augment.crop_joints(joints, visible, forward, flip)
        crop = cv2.warpAffine(image, forward, (self.input_size[1], self.input_size[0]),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
        heatmaps, weight = self.codec.encode(joints, visible)
        return transforms.normalize_image(crop), heatmaps, weight
