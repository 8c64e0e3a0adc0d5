"""Tracking and One-Euro smoothing: jitter, lag and cost, measured in one run.

Part 1 (numpy, seconds): a painted person (100 px tall, 30 fps) walks at
several speeds; a dot-finding "pose model" (``tests/synthetic_pose.py``) reads
its joints with 1.5 px of Gaussian noise. For each One-Euro setting the table
gives the jitter left (RMS frame-to-frame acceleration of the keypoints,
smoothed / raw: the true motion has none) and the settled lag (mean, after
frame 30) next to the filter's stated values: ``v / (2 pi (min_cutoff +
beta v / size))`` and the speed-independent bound ``size / (2 pi beta)``.

Part 2: the bundled sample video through ``PoseTracker`` with a fresh
DPN1_32 at 128x96 (Keras): the share of each frame spent in the tracking and
smoothing logic itself, next to the pose model.

Usage::

    python benchmarks/video_tracking.py            # both parts
    python benchmarks/video_tracking.py --no-model # part 1 only
    # the docs figure (docs/guide/video.md): three frames of two painted people tracked through
    # predict_video by the dot-finding Keras model, ids and crops drawn
    python benchmarks/video_tracking.py --figure docs/video_tracking_synthetic.jpg

Prints markdown tables and the load average (the machine may be shared).
"""

import argparse
import importlib.util
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

SETTINGS = [("off", None),
            ("default (1.0, 5.0, 1.0)", dict(min_cutoff=1.0, beta=5.0, d_cutoff=1.0)),
            ("min_cutoff 0.5", dict(min_cutoff=0.5, beta=5.0, d_cutoff=1.0)),
            ("beta 1", dict(min_cutoff=1.0, beta=1.0, d_cutoff=1.0)),
            ("beta 20", dict(min_cutoff=1.0, beta=20.0, d_cutoff=1.0))]
SPEEDS = (0.0, 1.0, 3.0, 10.0)  # px per frame


def _test_helper(name):
    """``tests/<name>.py``, loaded by file path: the tests folder is no package."""
    where = os.path.join(ROOT, "tests", name + ".py")
    spec = importlib.util.spec_from_file_location(name, where)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoothing_table(frames=90, noise=1.5, fps=30.0):
    sp = _test_helper("synthetic_pose")
    from keras_dpn.inference.tracking import OneEuroFilter, PoseTracker

    rows = ["| setting | speed (px/s) | jitter left | settled lag (px) | stated lag | "
            "bound size/(2 pi beta) |", "|---|---|---|---|---|---|"]
    for speed in SPEEDS:
        shape = (240, int(120 + speed * frames + 80))
        seq, truth = sp.moving_people(frames, [dict(start=(80, 120), velocity=(speed, 0),
                                                    height=100)], shape=shape)
        true = np.stack([truth[t][0] for t in range(frames)])
        raw_jitter = None
        for name, params in SETTINGS:
            tracker = PoseTracker("coco", detect_every=10 ** 6, smoothing=params, fps=fps)
            pose = sp.DotPose(noise=noise, seed=1)
            out = [tracker.update(frame, pose.predict,
                                  lambda image, t=t: ([sp.person_box(truth[t][0])], [1.0]))
                   for t, frame in enumerate(seq)]
            kp = np.stack([people[0]["keypoints"][:, :2] for people in out])
            size = float(np.mean([people[0]["box"][2:].max() for people in out]))
            jitter = np.sqrt(np.mean(np.diff(kp[30:], n=2, axis=0) ** 2))
            if params is None:
                raw_jitter = jitter
                continue
            lag = float(np.mean(true[30:, :, 0] - kp[30:, :, 0]))
            f = OneEuroFilter(**params)
            rows.append(f"| {name} | {speed * fps:.0f} | {jitter / raw_jitter:.2f} | {lag:.2f} | "
                        f"{f.lag(speed * fps, size):.2f} | {size / (2 * np.pi * params['beta']):.2f} |")
    return "\n".join(rows)


def model_cost(repeats=1):
    import keras

    import keras_dpn
    from keras_dpn import PoseEstimator
    from keras_dpn.inference.tracking import PoseTracker
    from keras_dpn.inference.video import VideoSource

    keras.utils.set_random_seed(0)
    estimator = PoseEstimator(keras_dpn.DPN1_32(input_shape=(128, 96, 3)))
    video = os.path.join(ROOT, "sample_data", "video", "basketball_426x240_40frames.mp4")
    with VideoSource(video) as source:
        frames = [rgb for _, _, rgb in source.frames()]
    pose_seconds = [0.0]

    def pose_fn(image, boxes):
        start = time.perf_counter()
        people = estimator.predict(image, boxes)
        pose_seconds[0] += time.perf_counter() - start
        return people

    # Two fixed "detections" (the two players on frame 0) every 10 frames; a
    # random-weight model keeps few joints above 0.3, so the gate is lowered.
    boxes = np.array([[150, 40, 60, 150], [250, 40, 60, 150]], np.float32)
    pose_fn(frames[0], boxes)  # warm-up (tf.function tracing)
    pose_seconds[0] = 0.0
    tracker = PoseTracker("coco", detect_every=10, smoothing=True, fps=source.fps,
                          keypoint_threshold=0.0)
    start = time.perf_counter()
    people = 0
    for _ in range(repeats):
        tracker.reset()
        for frame in frames:
            people += len(tracker.update(frame, pose_fn, lambda image: (boxes, np.ones(2))))
    total = time.perf_counter() - start
    n = len(frames) * repeats
    logic = total - pose_seconds[0]
    return (f"| frames | people per frame | ms per frame | pose model | tracking + smoothing |\n"
            f"|---|---|---|---|---|\n"
            f"| {n} | {people / n:.1f} | {1000 * total / n:.1f} | "
            f"{1000 * pose_seconds[0] / n:.1f} ms ({pose_seconds[0] / total:.0%}) | "
            f"{1000 * logic / n:.2f} ms ({logic / total:.1%}) |")


def figure(path, frames=36, shown=(0, 15, 35)):
    import json
    import tempfile

    import cv2

    sp = _test_helper("synthetic_pose")
    from keras_dpn import PoseEstimator
    from keras_dpn.core import io_utils
    from keras_dpn.inference.video import predict_video

    # The third person enters on frame 12 and is found at the next detection (20).
    tracks = [dict(start=(50, 80), velocity=(6, 0), height=100),
              dict(start=(430, 270), velocity=(-6, -1), height=110),
              dict(start=(410, 80), velocity=(0, 0), height=95, frames=range(12, frames))]
    seq, truth = sp.moving_people(frames, tracks, shape=(360, 480))

    # The painted people's boxes stand in for a person detector (every 10 frames).
    detections = [dict(image_id=t, category_id=1, bbox=sp.person_box(j).tolist(), score=0.9)
                  for t in range(frames) for j in truth[t].values()]
    with tempfile.TemporaryDirectory() as tmp:
        writer = cv2.VideoWriter(os.path.join(tmp, "in.mkv"), cv2.VideoWriter_fourcc(*"FFV1"),
                                 30.0, (480, 360))
        for frame in seq:
            writer.write(frame[..., ::-1])
        writer.release()
        with open(os.path.join(tmp, "dets.json"), "w") as f:
            json.dump(detections, f)
        predict_video(PoseEstimator(sp.dot_model()), os.path.join(tmp, "in.mkv"),
                      os.path.join(tmp, "out.mp4"), detections=os.path.join(tmp, "dets.json"),
                      detect_every=10, smoothing=True, progress=False)
        capture = cv2.VideoCapture(os.path.join(tmp, "out.mp4"))
        drawn = [capture.read()[1] for _ in range(frames)]
        capture.release()
    tiles = []
    for t in shown:
        tile = drawn[t].copy()
        cv2.putText(tile, f"frame {t}", (6, 352), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    strip = np.concatenate([np.concatenate([t, np.full((360, 4, 3), 255, np.uint8)], 1)
                            for t in tiles], 1)[:, :-4]
    with io_utils.atomic_path(path) as tmp_path:
        cv2.imwrite(tmp_path, strip, [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-model", action="store_true", help="part 1 only")
    parser.add_argument("--figure", help="write the docs figure there instead")
    args = parser.parse_args(argv)
    if args.figure:
        figure(args.figure)
        return 0
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    print(smoothing_table())
    if not args.no_model:
        print()
        print(model_cost())
    return 0


if __name__ == "__main__":
    sys.exit(main())
