"""The ``keras-dpn`` command: ``export`` and ``predict``.

Examples::

    # Every deployment format of a trained model, into saved_models/dpn4_32/
    keras-dpn export model.keras --name dpn4_32
    # A fresh (untrained) architecture, e.g. to check that it converts
    keras-dpn export DPN1_32 --input-size 128 96 --name dpn1_32_check --formats tflite_fp32
    # Skeletons on a photo (boxes from a COCO detection file) and on a video
    keras-dpn predict photo.jpg --model saved_models/dpn4_32/model_fp32.tflite \\
        --boxes detections.json --image-id 785 --out photo_pose.png
    keras-dpn predict clip.mp4 --model saved_models/dpn4_32 --out clip_pose.mp4
"""

import argparse
import os
import re
import sys

import numpy as np


def _build_parser():
    from keras_dpn.export import FORMATS
    parser = argparse.ArgumentParser(prog="keras-dpn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    exp = sub.add_parser("export", help="write SavedModel / TFLite / ONNX files")
    exp.add_argument("model", help="a .keras file, or a variant name such as DPN4_32 "
                                   "(built fresh, or with --weights)")
    exp.add_argument("--name", help="folder name under --out-dir (default: the model name)")
    exp.add_argument("--out-dir", default="saved_models", help="parent folder (saved_models)")
    exp.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                     metavar="FORMAT", help=f"subset of: {' '.join(FORMATS)} (default: all)")
    exp.add_argument("--weights", help="for a variant name: a weights tag or file")
    exp.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                     help="for a variant name: input height and width (default 256 192)")
    exp.add_argument("--keypoints", default=None, help="keypoint set (coco, mpii)")
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    exp.add_argument("--qat", action="store_true",
                     help="also quantization-aware training -> model_qat_int8.tflite")
    exp.add_argument("--prune", action="store_true",
                     help="also pruning -> model_pruned_int8.tflite")
    exp.add_argument("--qat-epochs", type=int, default=4)
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export")

    pred = sub.add_parser("predict", help="draw skeletons on an image or a video")
    pred.add_argument("input", help="an image file or a video (.mp4, .avi, .mov, .mkv)")
    pred.add_argument("--model", required=True,
                      help=".keras, .tflite, .onnx, a SavedModel or an export folder")
    pred.add_argument("--out", required=True, help="output image (.png/.jpg) or video (.mp4)")
    pred.add_argument("--boxes", help="COCO detection-results JSON (image_id = the COCO id "
                                      "of an image, or the 0-based frame index of a video)")
    pred.add_argument("--image-id", type=int,
                      help="image_id in --boxes (default: the number in the file name)")
    pred.add_argument("--box-threshold", type=float, default=0.5,
                      help="minimum detection score (0.5)")
    pred.add_argument("--score-threshold", type=float, default=0.3,
                      help="minimum joint score drawn (0.3)")
    pred.add_argument("--keypoints", default="coco", help="keypoint set (coco)")
    pred.add_argument("--flip-test", action="store_true")
    pred.add_argument("--threads", type=int, default=None, help="TFLite / ONNX threads")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _export(args):
    import keras_dpn
    from keras_dpn import export
    if args.model.endswith(".keras"):
        if not os.path.isfile(args.model):
            raise ValueError(f"Model file not found. Received: model={args.model!r}")
        model = args.model
        name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    else:
        builder = getattr(keras_dpn, args.model, None)
        if builder is None or not callable(builder) or args.model.startswith("_"):
            raise ValueError("`model` must be a .keras file or a model name such as DPN4_32. "
                             f"Received: model={args.model!r}")
        kwargs = {}
        if args.input_size:
            kwargs["input_shape"] = (args.input_size[0], args.input_size[1], 3)
        if args.weights:
            kwargs["weights"] = args.weights
        model = builder(**kwargs)
        name = args.name or args.model.lower()
    out = os.path.join(args.out_dir, name)
    files = export.export_model(model, out, formats=tuple(args.formats), keypoints=args.keypoints,
                                opset=args.opset, overwrite=args.overwrite, qat=args.qat,
                                prune=args.prune, qat_kwargs=dict(epochs=args.qat_epochs))
    print(f"Exported {len(files)} files to {os.path.abspath(out)}")
    return 0


def _image_id_from_name(path):
    digits = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    return int(digits[-1]) if digits else None


def _boxes_for(args, image_id):
    from keras_dpn.inference import boxes_from_detections
    if not args.boxes:
        return None, None
    boxes, scores = boxes_from_detections(args.boxes, image_id, args.box_threshold,
                                          return_scores=True)
    return boxes, scores


def _predict(args):
    import cv2

    from keras_dpn import io_utils, visualize
    from keras_dpn.inference import PoseEstimator, read_image

    out = os.path.abspath(args.out)
    suffix = os.path.splitext(args.input)[1].lower()
    is_video = suffix in VIDEO_SUFFIXES
    out_suffix = os.path.splitext(out)[1].lower()
    if is_video and out_suffix != ".mp4":
        raise ValueError(f"A video input writes an .mp4. Received: --out={args.out!r}")
    if not is_video and out_suffix not in IMAGE_OUT_SUFFIXES:
        raise ValueError(f"An image input writes one of {IMAGE_OUT_SUFFIXES}. "
                         f"Received: --out={args.out!r}")
    if os.path.exists(out) and not args.overwrite:
        raise FileExistsError(f"Output already exists: {out}. Pass --overwrite to replace it.")
    if not os.path.isfile(args.input):
        raise ValueError(f"Input file not found. Received: input={args.input!r}")
    if not is_video:
        # Decode before loading the model: a bad image fails fast.
        image = read_image(args.input)
    estimator = PoseEstimator(args.model, keypoints=args.keypoints, flip_test=args.flip_test,
                              num_threads=args.threads)

    if not is_video:
        image_id = args.image_id if args.image_id is not None else _image_id_from_name(args.input)
        if args.boxes and image_id is None:
            raise ValueError("--boxes needs --image-id (the file name holds no number). "
                             f"Received: input={args.input!r}")
        boxes, scores = _boxes_for(args, image_id)
        if boxes is not None and len(boxes) == 0:
            print(f"No detections for image_id={image_id} at score >= {args.box_threshold}")
            people = []
        else:
            people = estimator.predict(image, boxes, scores)
        drawn = visualize.draw_skeleton(image, people, estimator.spec, args.score_threshold,
                                        boxes=[p["box"] for p in people] if boxes is not None
                                        else None)
        with io_utils.atomic_path(out) as tmp:
            if not cv2.imwrite(tmp, drawn[..., ::-1]):
                raise ValueError(f"OpenCV could not write the image. Received: --out={args.out!r}")
        print(f"{len(people)} person(s) -> {out}")
        return 0

    from tqdm import tqdm
    capture = cv2.VideoCapture(args.input)
    if not capture.isOpened():
        raise ValueError(f"Could not open the video. Received: input={args.input!r}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    frames = 0
    try:
        with io_utils.atomic_path(out) as tmp:
            with tqdm(total=total, unit="frame", desc="predict") as bar:
                while True:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    rgb = bgr[..., ::-1]
                    boxes, scores = _boxes_for(args, frames)
                    if boxes is not None and len(boxes) == 0:
                        people = []
                    else:
                        people = estimator.predict(rgb, boxes, scores)
                    drawn = visualize.draw_skeleton(rgb, people, estimator.spec,
                                                    args.score_threshold)
                    if writer is None:
                        h, w = drawn.shape[:2]
                        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        if not writer.isOpened():
                            raise ValueError(f"OpenCV could not open an mp4 writer. "
                                             f"Received: --out={args.out!r}")
                    writer.write(np.ascontiguousarray(drawn[..., ::-1]))
                    frames += 1
                    bar.update(1)
            if writer is not None:
                writer.release()
                writer = None
            if frames == 0:
                raise ValueError(f"The video has no readable frames. Received: input={args.input!r}")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    print(f"{frames} frame(s) -> {out}")
    return 0


def main(argv=None):
    """Entry point of the ``keras-dpn`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "export":
            return _export(args)
        return _predict(args)
    except (ValueError, FileExistsError) as e:
        print(f"keras-dpn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
