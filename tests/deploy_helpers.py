"""Shared by the deployment tests and benchmarks: a briefly trained tiny DPN.

Quantization agreement is meaningless on random weights (their heatmaps have
no peaks), so the fp16 / int8 / QAT measurements use a DPN1_32 at 128x96
trained for a minute or two on the bundled COCO sample crops. It overfits the
sample, which is what we want here: peaked heatmaps on exactly the crops on
which the exports are compared.
"""

import json
import os
import time

import numpy as np

INPUT_SIZE = (128, 96)
TRAIN_PEOPLE = 32
HEATMAP_SIZE = (32, 24)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANNOTATIONS = os.path.join(ROOT, "sample_data", "coco", "annotations",
                           "person_keypoints_sample.json")


def sample_training_set(input_size=INPUT_SIZE, max_people=None, min_keypoints=5):
    """Crops, target heatmaps and target weights of the sample's people.

    Returns:
        ``(crops uint8 (N, H, W, 3), heatmaps (N, h, w, 17), weights (N, 17),
        keypoints (N, 17, 3) in crop pixels)``.
    """
    import cv2

    from keras_dpn import transforms
    from keras_dpn.codec import HeatmapCodec
    with open(ANNOTATIONS) as f:
        coco = json.load(f)
    image_dir = os.path.join(os.path.dirname(os.path.dirname(ANNOTATIONS)), "images")
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    h, w = input_size
    codec = HeatmapCodec(input_size, (h // 4, w // 4), sigma=2.0)
    crops, hms, wts, kps = [], [], [], []
    images = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) < min_keypoints:
            continue
        if ann["bbox"][2] < 2 or ann["bbox"][3] < 2:
            continue
        if ann["image_id"] not in images:
            bgr = cv2.imread(os.path.join(image_dir, files[ann["image_id"]]))
            images[ann["image_id"]] = bgr[..., ::-1].copy()
        image = images[ann["image_id"]]
        center, scale = transforms.box_to_center_scale(ann["bbox"], w / h)
        crop = transforms.crop_image(image, center, scale, input_size)
        m = transforms.get_affine_transform(center, scale, 0.0, input_size)
        kp = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
        xy = transforms.affine_transform_points(kp[:, :2], m)
        hm, wt = codec.encode(xy, np.minimum(kp[:, 2], 1))
        crops.append(crop)
        hms.append(hm)
        wts.append(wt)
        kps.append(np.concatenate([xy, kp[:, 2:]], axis=1))
        if max_people and len(crops) >= max_people:
            break
    return (np.stack(crops), np.stack(hms), np.stack(wts),
            np.stack(kps).astype(np.float32))


def train_tiny_dpn(path, epochs=40, num_people=TRAIN_PEOPLE, batch_size=16, learning_rate=1e-3, seed=0,
                   verbose=0):
    """Trains DPN1_32 at 128x96 on ``num_people`` sample crops (and their mirror
    images) and saves it to ``path``. About 4 minutes on two busy cores;
    reaches ~2.5 px median error on its training crops.

    Returns:
        ``(model, seconds)``.
    """
    import keras

    import keras_dpn
    from keras_dpn import io_utils, transforms
    from keras_dpn.losses import JointsMSE
    keras.utils.set_random_seed(seed)
    crops, hms, wts, _ = sample_training_set(max_people=num_people)
    # Mirror images double the set (flip pairs swap left / right channels).
    flip = keras_dpn.COCO_17.flip_index
    x = np.concatenate([crops, crops[:, :, ::-1]])
    y = np.concatenate([hms, hms[:, :, ::-1][..., flip]])
    sw = np.concatenate([wts, wts[:, flip]])
    x = transforms.normalize_image(x).astype(np.float32)
    model = keras_dpn.DPN1_32(input_shape=INPUT_SIZE + (3,))
    # The reference starts the heatmap head near zero (std 0.001). From the
    # default init the untrained heatmaps are in the hundreds and 40 epochs
    # go into shrinking them: the model then never learns where joints are.
    head = model.get_layer("heatmaps")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 0.01, np.zeros_like(bias)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=JointsMSE())
    start = time.time()
    model.fit(x, y, sample_weight=sw, batch_size=batch_size, epochs=epochs, shuffle=True,
              verbose=verbose)
    seconds = time.time() - start
    with io_utils.atomic_path(path) as tmp:
        model.save(tmp)
    return model, seconds


def mean_keypoint_error(a, b, visible=None):
    """Mean Euclidean distance in pixels between two ``(N, K, >=2)`` arrays."""
    d = np.linalg.norm(np.asarray(a)[..., :2] - np.asarray(b)[..., :2], axis=-1)
    if visible is not None:
        d = d[np.asarray(visible) > 0]
    return float(d.mean())


CACHE_DIR = os.environ.get("KERAS_DPN_TEST_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "keras_dpn_tests"))
# Bump when the training recipe above changes, so a stale cached model is not reused.
TINY_MODEL_VERSION = "v2"


def trained_tiny_dpn():
    """The trained tiny DPN, cached on disk across test runs (first run: minutes).

    Returns:
        ``(model, path)``; the model's training crops are the first
        ``TRAIN_PEOPLE`` of :func:`sample_training_set`.
    """
    import keras

    import keras_dpn  # noqa: F401  registers the custom layers
    path = os.path.join(CACHE_DIR, f"tiny_dpn1_32_128x96_{TINY_MODEL_VERSION}.keras")
    if os.path.exists(path):
        return keras.saving.load_model(path, compile=False), path
    os.makedirs(CACHE_DIR, exist_ok=True)
    model, _ = train_tiny_dpn(path)
    return model, path


_EXPORTS = {}


def scale_head_to_unit_peak(model, x):
    """Divides the last conv of an untrained model so its heatmaps on ``x`` peak at 1.

    An untrained head outputs heatmaps in the hundreds, where 1e-4 is below
    float32 resolution; a trained one outputs values in about [0, 1]
    (Gaussian targets peak at 1). With this scaling the absolute parity
    tolerance means what it means for a trained model.
    """
    head = model.get_layer("heatmaps")
    peak = float(np.abs(model(x)).max())
    head.set_weights([w / peak for w in head.get_weights()])


def fresh_export(base_dir):
    """One export of a seeded, untrained DPN1_32 at 128x96 per test session.

    Every format except QAT / pruning; ~30 s on two busy cores. Shared by the
    export, inference and visualization tests (memoized per ``base_dir``).

    Returns:
        ``(keras model, export folder, crops uint8 (8, 128, 96, 3))``.
    """
    base_dir = os.fspath(base_dir)
    if base_dir not in _EXPORTS:
        import keras

        import keras_dpn
        from keras_dpn import export
        keras.utils.set_random_seed(1)
        model = keras_dpn.DPN1_32(input_shape=INPUT_SIZE + (3,))
        crops, _ = export.sample_crops(INPUT_SIZE, 8)
        scale_head_to_unit_peak(model, export.normalize_numpy(crops))
        folder = os.path.join(base_dir, "dpn1_32")
        export.export_model(model, folder, representative_data=crops, verbose=False)
        _EXPORTS[base_dir] = (model, folder, crops)
    return _EXPORTS[base_dir]
