"""Shared by the deployment tests and benchmarks: a briefly trained tiny DPN.

Quantization agreement is meaningless on random weights (their heatmaps have
no peaks), so the fp16 / int8 / QAT measurements use a DPN1_32 at 128x96
trained for a minute or two on the bundled COCO sample crops. It overfits the
sample, which is what we want here: peaked heatmaps on exactly the crops on
which the exports are compared.
"""

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
    from keras_dpn.deploy.calibration import person_crops
    from keras_dpn.core.codec import HeatmapCodec
    crops, records = person_crops(ANNOTATIONS, input_size, max_people=max_people,
                                  min_keypoints=min_keypoints)
    h, w = input_size
    codec = HeatmapCodec(input_size, (h // 4, w // 4), sigma=2.0)
    kps = np.stack([r["keypoints"] for r in records])
    targets = [codec.encode(kp[:, :2], np.minimum(kp[:, 2], 1)) for kp in kps]
    return (crops, np.stack([t[0] for t in targets]), np.stack([t[1] for t in targets]), kps)


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
    from keras_dpn.core import io_utils
    from keras_dpn.core import transforms
    from keras_dpn.training.losses import JointsMSE
    keras.utils.set_random_seed(seed)
    crops, hms, wts, _ = sample_training_set(max_people=num_people)
    # Mirror images double the set (flip pairs swap left / right channels).
    flip = keras_dpn.COCO_17.flip_index
    x = np.concatenate([crops, crops[:, :, ::-1]])
    y = np.concatenate([hms, hms[:, :, ::-1][..., flip]])
    sw = np.concatenate([wts, wts[:, flip]])
    x = transforms.normalize_image(x).astype(np.float32)
    # The builder's default head (N(0, 0.001), the reference) matters here:
    # from a Glorot head the untrained heatmaps are in the hundreds and 40
    # epochs go into shrinking them.
    model = keras_dpn.DPN1_32(input_shape=INPUT_SIZE + (3,))
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


def trained_tiny_dpn(folder):
    """The trained tiny DPN in ``folder`` (trained there on the first call: minutes).

    Tests get ``folder`` from a session-scoped temporary directory (the
    ``trained_tiny`` fixture), benchmarks from their own: nothing is cached
    in the home folder or the repository.

    Returns:
        ``(model, path)``; the model's training crops are the first
        ``TRAIN_PEOPLE`` of :func:`sample_training_set`.
    """
    import keras

    import keras_dpn  # noqa: F401  registers the custom layers
    path = os.path.join(os.fspath(folder), "tiny_dpn1_32_128x96.keras")
    if os.path.exists(path):
        return keras.saving.load_model(path, compile=False), path
    model, _ = train_tiny_dpn(path)
    return model, path


_EXPORTS = {}


def scale_head_to_unit_peak(model, x):
    """Divides the last conv of an untrained model so its heatmaps on ``x`` peak at 1.

    The scale of an untrained head is arbitrary (hundredths with the reference
    N(0, 0.001) init, hundreds with a Glorot head, where 1e-4 is below float32
    resolution); a trained one outputs values in about [0, 1] (Gaussian
    targets peak at 1). With this scaling the absolute parity tolerance means
    what it means for a trained model.
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
        from keras_dpn.deploy import export
        from keras_dpn.core import transforms
        from keras_dpn.deploy.calibration import person_crops
        keras.utils.set_random_seed(1)
        model = keras_dpn.DPN1_32(input_shape=INPUT_SIZE + (3,))
        crops, _ = person_crops(ANNOTATIONS, INPUT_SIZE, max_people=8)
        scale_head_to_unit_peak(model, transforms.normalize_image(crops))
        folder = os.path.join(base_dir, "dpn1_32")
        export.export_model(model, folder, representative_data=crops, verbose=False)
        _EXPORTS[base_dir] = (model, folder, crops)
    return _EXPORTS[base_dir]
