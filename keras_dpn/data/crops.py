"""Person crops as a ``keras.utils.PyDataset``: OpenCV and numpy, no TensorFlow.

:class:`PersonCrops` reads a COCO (or MPII) annotation file and its images
with OpenCV and yields the batches that ``build_dataset`` yields from
TFRecord shards, so that ``model.fit`` and the evaluation callbacks work on
any Keras backend (JAX, PyTorch) without TensorFlow installed:

* ``training=True``: ``(images, heatmaps, target_weight)`` with the HRNet
  reference augmentation drawn with numpy (half body, scale +-30%, rotation
  ``clip(N(0, 40), -80, 80)`` with probability 0.6, horizontal flip), one
  ``cv2.warpAffine`` per person, Gaussian targets from
  :class:`keras_dpn.codec.HeatmapCodec`;
* ``training=False``: ``(images, meta)`` of the unaugmented ground-truth-box
  crops, in a fixed order, for :class:`keras_dpn.COCOEvaluationCallback`
  and :func:`keras_dpn.evaluation.predict_coco`.

The rules are the reference's, as in :class:`keras_dpn.data.PersonParser`;
the random draws are not the same numbers (numpy here, TF stateless ops
there). Each batch decodes its images from disk: the TFRecord pipeline (which
decodes only the crop windows) is the fast path for large runs.

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

from keras_dpn import transforms
from keras_dpn.codec import HeatmapCodec
from keras_dpn.keypoints import get_keypoint_spec


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
        scale_factor, rotation_factor, rotation_prob, flip_prob, half_body_prob:
            the augmentation (``PersonParser``'s defaults; ``half_body_prob``
            None: 0.3, or 0 for MPII).
        padding: box padding (1.25).
        shuffle: training only: a new order every epoch (False: annotation order).
        seed: seed of the shuffling and augmentation (epoch ``e`` and batch
            ``i`` draw from ``(seed, e, i)``, whatever the worker count).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of
            ``keras.utils.PyDataset``.
    """

    def __init__(self, annotation_file, image_dir, dataset="coco", training=True, batch_size=32,
                 input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0, scale_factor=0.3,
                 rotation_factor=40.0, rotation_prob=0.6, flip_prob=0.5, half_body_prob=None,
                 padding=1.25, shuffle=True, seed=None, **kwargs):
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
        for name, value in (("rotation_prob", rotation_prob), ("flip_prob", flip_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")
        if not 0 <= scale_factor < 1:
            raise ValueError(
                f"`scale_factor` must be in [0, 1). Received: scale_factor={scale_factor!r}")
        if half_body_prob is None:
            half_body_prob = 0.0 if self.spec.name == "mpii" else 0.3
        self.training = bool(training)
        self.batch_size = batch_size
        self.scale_factor, self.rotation_factor = float(scale_factor), float(rotation_factor)
        self.rotation_prob, self.flip_prob = float(rotation_prob), float(flip_prob)
        self.half_body_prob = float(half_body_prob)
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
        rng = np.random.default_rng([self.seed, self.epoch, index])
        images = {}
        out = []
        for i in picked:
            entry, person = self.people[i]
            if entry["path"] not in images:
                images[entry["path"]] = _read_rgb(entry["path"])
            image = images[entry["path"]]
            out.append(self._train_example(image, person, rng) if self.training
                       else self._eval_example(image, entry, person))
        if self.training:
            return tuple(np.stack(parts) for parts in zip(*out))
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

    def _half_body(self, joints, visible, rng):
        """The reference's half-body window, or None when it does not apply."""
        upper = [j for j in self.spec.upper_body if visible[j]]
        lower = [j for j in self.spec.lower_body if visible[j]]
        take_upper = (rng.standard_normal() < 0.5 and len(upper) > 2) or len(lower) <= 2
        chosen = upper if take_upper else lower
        if len(chosen) < 2:
            return None
        pts = joints[chosen]
        center = pts.mean(axis=0)
        w, h = pts.max(axis=0) - pts.min(axis=0)
        ar = self.aspect_ratio
        w, h = (w, w / ar) if w > ar * h else (h * ar, h)
        return center.astype(np.float32), np.array([w, h], np.float32) * 1.5

    def _train_example(self, image, person, rng):
        kp = np.asarray(person["keypoints"], np.float64)
        joints, visible = kp[:, :2], np.minimum(kp[:, 2], 1.0)
        center, scale = self._window(person)
        if (self.half_body_prob > 0 and (visible > 0).sum() > 8
                and rng.uniform() < self.half_body_prob):
            window = self._half_body(joints, visible > 0, rng)
            if window is not None:
                center, scale = window
        sf, rf = self.scale_factor, self.rotation_factor
        scale = scale * np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf)
        rotation = (np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf)
                    if rng.uniform() <= self.rotation_prob else 0.0)
        flip = rng.uniform() < self.flip_prob
        return self.transform(image, joints, visible, center, scale, rotation, flip)

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
        joints = np.asarray(joints, np.float64)
        visible = np.asarray(visible, np.float64)
        center = np.asarray(center, np.float64)
        if flip:
            width = image.shape[1]
            mirrored = np.array([width - 1.0 - center[0], center[1]])
            matrix = transforms.compose_affine(
                transforms.get_affine_transform(mirrored, scale, rotation, self.input_size),
                transforms.flip_matrix(width))
            joints, visible = joints[self.spec.flip_index], visible[self.spec.flip_index]
        else:
            matrix = transforms.get_affine_transform(center, scale, rotation, self.input_size)
        crop = cv2.warpAffine(image, matrix, (self.input_size[1], self.input_size[0]),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
        heatmaps, weight = self.codec.encode(transforms.affine_transform_points(joints, matrix),
                                             visible)
        return transforms.normalize_image(crop), heatmaps, weight
