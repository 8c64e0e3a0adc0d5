"""The ``keras-dpn`` command: ``train``, ``export``, ``predict``, ``publish`` and ``benchmark``.

Examples::

    # Train DPN4_32 on the bundled sample (AP ~0.75 on its images in ~8 minutes on 2 CPUs)
    keras-dpn train
    # Your own keypoint set: shards built with --keypoints FILE.json (docs/custom_keypoints.md)
    keras-dpn train --keypoints body12.json --train-shards 'shards/body12-*.tfrecord' \\
        --val-shards 'shards/body12-*.tfrecord' --annotations body12.json --output runs/body12

    # Every deployment format of a trained model, into saved_models/dpn4_32/
    keras-dpn export model.keras --name dpn4_32
    # A fresh (untrained) architecture, e.g. to check that it converts
    keras-dpn export DPN1_32 --input-size 128 96 --name dpn1_32_check --formats tflite_fp32
    # Every format, then the COCO AP of the Keras model and of each file (what int8 costs)
    keras-dpn export model.keras --name dpn4_32 --qat --prune \\
        --evaluate person_keypoints_val2017.json val2017/ --eval-max-images 500
    # Skeletons on a photo (boxes from a COCO detection file) and on a video
    keras-dpn predict photo.jpg --model saved_models/dpn4_32/model_fp32.tflite \\
        --boxes detections.json --image-id 785 --out photo_pose.png
    keras-dpn predict clip.mp4 --model saved_models/dpn4_32 --out clip_pose.mp4
    # Tracked ids, One-Euro smoothing, boxes from an ONNX person detector every 10 frames
    keras-dpn predict clip.mp4 --model saved_models/dpn4_32 --out clip_pose.mp4 \\
        --detector person_detector.onnx --detector-outputs boxes scores --smooth
    # A training run -> presets/dpn4_32_coco/ + .tar.gz + the registry entry to paste
    keras-dpn publish runs/dpn4_32_coco --name dpn4_32_coco --url https://example.org/
    # One table, one row per format: size, COCO AP on the sample, latency, throughput
    keras-dpn benchmark DPN4_32 --output runs/benchmark/dpn4_32
    keras-dpn benchmark saved_models/dpn4_32 --formats tflite_fp32 tflite_int8 --threads 4
"""

import argparse
import os
import re
import sys


def _build_parser():
    from keras_dpn.deploy.export import FORMATS
    from keras_dpn.core.errors import ArgumentParser  # one-line usage errors
    parser = ArgumentParser(prog="keras-dpn", description=__doc__.split("\n")[0])
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
    exp.add_argument("--keypoints", default=None, metavar="SET",
                     help="keypoint set: coco, mpii or a keypoint-set FILE.json "
                          "(docs/keypoints.md), recorded whole in metadata.json; a variant name "
                          "gets a head of its joint count. Default: what a .keras file's export "
                          "folder records, else coco (17 heatmaps) or mpii (16)")
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    exp.add_argument("--qat", action="store_true",
                     help="also quantization-aware training -> model_qat_int8.tflite")
    exp.add_argument("--prune", action="store_true",
                     help="also pruning -> model_pruned_int8.tflite")
    exp.add_argument("--qat-epochs", type=int, default=4)
    exp.add_argument("--allow-unverified", action="store_true",
                     help="allow --weights as an http(s):// preset URL without #sha256= (the "
                          "digest received is printed)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export")
    ev = exp.add_argument_group(
        "accuracy", "after the export, COCO AP of the Keras model and of every file through "
        "PoseEstimator (AP drop, size, latency per file), printed and written to accuracy.json")
    ev.add_argument("--evaluate", nargs=2, metavar=("ANNOTATIONS", "IMAGES"),
                    help="COCO keypoint annotation JSON and its image folder (ground-truth "
                         "person boxes unless --eval-detections)")
    ev.add_argument("--eval-detections", metavar="FILE",
                    help="person boxes from a COCO detection-results JSON instead")
    ev.add_argument("--eval-flip-test", action="store_true",
                    help="flip test as PoseEstimator(flip_test=True) (default: off, as deployed)")
    ev.add_argument("--eval-max-images", type=int, metavar="N",
                    help="only the first N images of ANNOTATIONS (default: all)")

    # Listed here for --help; main() hands `train` to keras_dpn.cli.train.
    sub.add_parser("train", add_help=False,
                   help="train a model: the bundled sample (no arguments), COCO, MPII or your "
                        "own keypoint set (keras-dpn train --help)")

    pred = sub.add_parser("predict", help="draw skeletons on an image or a video")
    _add_predict_arguments(pred)

    pub = sub.add_parser("publish", help="make a preset (folder + archive + registry entry) "
                                         "from a training run")
    pub.add_argument("run_dir", help="the run folder (recipes' --output, Trainer output_dir)")
    pub.add_argument("--name", required=True, help="preset name: OUT_DIR/NAME/, NAME.tar.gz")
    pub.add_argument("--out-dir", default="presets", help="parent folder (presets)")
    pub.add_argument("--tag", help="registry tag (default: the run's dataset, e.g. coco)")
    pub.add_argument("--url", help="where the archive will be served: a full URL, or a folder "
                                   "URL ending in / (default: a placeholder to replace)")
    pub.add_argument("--weights", help="weights file to publish (default: RUN_DIR/"
                                       "best.weights.h5)")
    pub.add_argument("--no-export", action="store_true",
                     help="leave the run's export/ folder out of the preset")
    pub.add_argument("--archive-format", choices=("tar.gz", "zip"), default="tar.gz")
    pub.add_argument("--overwrite", action="store_true", help="replace an existing release")

    bench = sub.add_parser("benchmark", help="size, COCO AP, latency and throughput of every "
                                             "deployed format of one model, in one table")
    from keras_dpn.deploy.benchmark import add_arguments as add_benchmark_arguments
    add_benchmark_arguments(bench)
    return parser


def _benchmark(args, argv):
    import shlex

    from keras_dpn.deploy import benchmark
    benchmark.run_from_args(args, command=shlex.join(["keras-dpn"] + list(argv)))
    return 0


def _publish(args):
    from keras_dpn.hub import publish
    out = publish.publish_run(args.run_dir, args.name, out_dir=args.out_dir, tag=args.tag,
                              url=args.url, weights=args.weights, include_export=not args.no_export,
                              archive_format=args.archive_format, overwrite=args.overwrite)
    print(f"Preset   {out['preset']}\nArchive  {out['archive']}\nsha256   {out['sha256']}\n"
          f"Registry {out['registry_file']}\n")
    if not args.url:
        print("Serve the archive, replace the URL placeholder, then register it:\n")
    print("import keras_dpn\n" + out["code"])
    entry = out["entry"]
    print(f"model = keras_dpn.{entry['arch']}(weights={entry['tag']!r}, "
          f"input_shape={tuple(entry['input_shape'])!r})")
    print(f"\n(or keras_dpn.hub.weights.load_registry({os.path.basename(out['registry_file'])!r}) "
          "after editing its url)")
    return 0


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _unit_interval(text):
    """argparse type of a threshold: a number in [0, 1] (NaN compares false with any score)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]. Received: {text!r}")
    return value


def _add_predict_arguments(pred):
    pred.add_argument("input", nargs="?",
                      help="an image file or a video (.mp4, .avi, .mov, .mkv, .webm)")
    pred.add_argument("--source", help="a camera index instead of INPUT (e.g. 0: the webcam)")
    pred.add_argument("--model", required=True,
                      help=".keras, .tflite, .onnx, a SavedModel, an export folder (the first "
                           "present of: saved_model/ where TensorFlow is installed, model.keras, "
                           "model.onnx, model_fp32.tflite, model_fp16.tflite, the int8 "
                           ".tflite files, keypoints_fp32.tflite) or a preset (folder, archive "
                           "or registered ARCH.TAG)")
    pred.add_argument("--out", required=True, help="output image (.png/.jpg) or video (.mp4)")
    pred.add_argument("--jsonl", help="video: per-frame keypoints with ids, one JSON object "
                                      "per line (default: --out with .jsonl)")
    boxes = pred.add_argument_group(
        "person boxes", "taken from --boxes, else --detector, else the whole image (warned)")
    boxes.add_argument("--boxes", help="COCO detection-results JSON (image_id = the COCO id "
                                       "of an image, or the 0-based frame index of a video)")
    boxes.add_argument("--image-id", type=int,
                       help="image_id in --boxes (default: the number in the file name)")
    boxes.add_argument("--box-threshold", type=_unit_interval, default=0.5,
                       help="minimum detection score, of --boxes or --detector (0.5)")
    boxes.add_argument("--detector", help="person detector model (.onnx or .tflite); its "
                                          "output layout is given by the options below")
    boxes.add_argument("--detector-outputs", nargs="+", default=["0", "1"],
                       metavar="OUTPUT", help="index or name of the detector's BOXES and "
                       "SCORES outputs, then optionally CLASSES and COUNT (default: 0 1)")
    boxes.add_argument("--detector-box-format", default="xyxy",
                       choices=("xyxy", "yxyx", "xywh", "cxcywh"), help="(xyxy)")
    boxes.add_argument("--detector-pixels", action="store_true",
                       help="boxes are in detector-input pixels (default: normalized 0-1)")
    boxes.add_argument("--detector-letterbox", action="store_true",
                       help="resize keeping the aspect ratio (centred, padded)")
    boxes.add_argument("--person-class", type=int, default=0,
                       help="class id or score column of 'person' (0, COCO-80 order)")
    boxes.add_argument("--nms-iou", type=float, default=0.5,
                       help="NMS IoU threshold for the detector (0.5)")
    boxes.add_argument("--no-nms", action="store_true", help="the detector already applies NMS")
    video = pred.add_argument_group("video")
    video.add_argument("--detect-every", type=int, default=10,
                       help="run the detector every N frames; in between, crops follow each "
                            "person's keypoints (10)")
    video.add_argument("--smooth", action="store_true",
                       help="One-Euro smoothing of the keypoints (Casiez et al., CHI 2012)")
    video.add_argument("--min-cutoff", type=float, default=None,
                       help="One-Euro cutoff at rest, Hz (1.0): lower = less jitter, more lag")
    video.add_argument("--beta", type=float, default=None,
                       help="One-Euro speed coefficient per person size (5.0): higher = less "
                            "lag; the settled lag stays under 1/(2 pi beta) of the person's box")
    video.add_argument("--d-cutoff", type=float, default=None,
                       help="One-Euro cutoff of the speed estimate, Hz (1.0)")
    video.add_argument("--max-frames", type=int, help="stop after N frames")
    pred.add_argument("--score-threshold", type=_unit_interval, default=0.3,
                      help="minimum joint score drawn (0.3)")
    pred.add_argument("--keypoints", default=None, metavar="SET",
                      help="keypoint set: coco, mpii or a keypoint-set FILE.json; overrides the "
                           "set the model brings (an export's metadata.json, a preset). Default: "
                           "the model's own, else coco (17 heatmaps) or mpii (16)")
    pred.add_argument("--flip-test", action="store_true")
    pred.add_argument("--threads", type=int, default=None, help="TFLite / ONNX threads")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _evaluation_from_args(args, spec=None):
    """The checked evaluation set of ``--evaluate``, or None (before any model is built)."""
    options = {"--eval-detections": args.eval_detections, "--eval-max-images":
               args.eval_max_images, "--eval-flip-test": args.eval_flip_test or None}
    if args.evaluate is None:
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            raise ValueError(f"{' '.join(given)} need(s) --evaluate ANNOTATIONS IMAGES. "
                             f"Received: {given}")
        return None
    from keras_dpn.deploy.export_eval import evaluation_set
    return evaluation_set(*args.evaluate, keypoints=spec or "coco",
                          detections=args.eval_detections, max_images=args.eval_max_images)


def _export(args):
    from keras_dpn.deploy import export
    if args.qat or args.prune:
        from keras_dpn.deploy import qat
        qat.check_options(epochs=args.qat_epochs)  # before any model is built
    if args.allow_unverified:
        from keras_dpn.hub import presets
        os.environ[presets.ALLOW_UNVERIFIED_ENV] = "1"  # weights= of a builder has no argument
    from keras_dpn.inference.estimator import recorded_keypoint_spec
    from keras_dpn.core.keypoints import get_keypoint_spec
    from keras_dpn.models import model_info
    # The keypoint set first: a bad file fails before any model is built.
    spec = get_keypoint_spec(args.keypoints) if args.keypoints is not None else None
    if spec is None and args.model.endswith(".keras"):
        spec = (recorded_keypoint_spec(args.model) or (None,))[0]
    evaluation = _evaluation_from_args(args, spec)
    if args.model.endswith(".keras"):
        if not os.path.isfile(args.model):
            raise ValueError(f"Model file not found. Received: model={args.model!r}")
        if args.weights or args.input_size:
            raise ValueError("--weights and --input-size apply to a model name, not to a .keras "
                             f"file. Received: model={args.model!r}")
        model = args.model
        name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    else:
        # Not a .keras file: a registered name, or a one-line error listing them.
        builder = model_info(args.model, arg_name="model").constructor
        kwargs = {}
        if args.input_size:
            kwargs["input_shape"] = (args.input_size[0], args.input_size[1], 3)
        if args.weights:
            kwargs["weights"] = args.weights
        if spec is not None:
            kwargs["num_keypoints"] = spec.num_keypoints  # the head of the set's joints
        model = builder(**kwargs)
        name = args.name or args.model.lower()
    out = os.path.join(args.out_dir, name)
    files = export.export_model(model, out, formats=tuple(args.formats),
                                keypoints=spec if spec is not None else args.keypoints,
                                opset=args.opset, overwrite=args.overwrite, qat=args.qat,
                                prune=args.prune, qat_kwargs=dict(epochs=args.qat_epochs),
                                evaluate=evaluation, evaluate_flip_test=args.eval_flip_test)
    formats = [f for f in files if f not in ("keras", "accuracy")]
    extra = ["model.keras (the Keras model the files were converted from)", "metadata.json"]
    if any(str(path).endswith(".tflite") for path in files.values()):
        extra.append("gpu_compatibility.txt")
    if "accuracy" in files:
        extra.append(os.path.basename(files["accuracy"]))
    print(f"Exported {len(formats)} format(s) ({', '.join(formats)}) to {os.path.abspath(out)}, "
          f"with {', '.join(extra)}")
    return 0


def _image_id_from_name(path):
    digits = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    return int(digits[-1]) if digits else None


def _detector_from_args(args):
    if not args.detector:
        return None
    from keras_dpn.inference.detectors import ModelDetector
    outputs = args.detector_outputs
    if not 2 <= len(outputs) <= 4:
        raise ValueError("--detector-outputs takes BOXES SCORES [CLASSES [COUNT]]. "
                         f"Received: --detector-outputs {' '.join(outputs)}")
    roles = dict(zip(("boxes_output", "scores_output", "classes_output", "count_output"),
                     outputs))
    return ModelDetector(args.detector, box_format=args.detector_box_format,
                         normalized=not args.detector_pixels, person_class=args.person_class,
                         score_threshold=args.box_threshold,
                         nms_iou=None if args.no_nms else args.nms_iou,
                         letterbox=args.detector_letterbox, num_threads=args.threads, **roles)


def _smoothing_from_args(args):
    given = {k: v for k, v in (("min_cutoff", args.min_cutoff), ("beta", args.beta),
                               ("d_cutoff", args.d_cutoff)) if v is not None}
    if not args.smooth:
        if given:
            raise ValueError(f"One-Euro parameters need --smooth. Received: {given}")
        return None
    from keras_dpn.inference.tracking import DEFAULT_SMOOTHING
    return {**DEFAULT_SMOOTHING, **given}


def _warn(message):
    print(f"keras-dpn predict: warning: {message}", file=sys.stderr)


def _is_preset(model):
    """A preset folder, a preset archive or a registered ``arch.tag``, as --model."""
    from keras_dpn.hub import presets
    from keras_dpn.hub import weights as weights_lib
    if os.path.isdir(model):
        return os.path.isfile(os.path.join(model, presets.CONFIG_FILE))
    if model.endswith(presets.ARCHIVE_SUFFIXES):
        return True
    return not os.path.exists(model) and weights_lib.is_registered(model)


def _estimator_from_args(args):
    """``--model`` with its own keypoint set; ``--keypoints`` overrides it."""
    from keras_dpn.inference.estimator import PoseEstimator, export_folder_model
    from keras_dpn.core.keypoints import get_keypoint_spec
    spec = get_keypoint_spec(args.keypoints) if args.keypoints is not None else None
    options = dict(flip_test=args.flip_test, num_threads=args.threads)
    if _is_preset(args.model):
        from keras_dpn.hub import presets
        model, own = presets.estimator_model(args.model)
        return PoseEstimator(model, keypoints=own if spec is None else args.keypoints,
                             **options)
    if os.path.isdir(args.model) and not os.path.isfile(
            os.path.join(args.model, "saved_model.pb")):
        chosen = export_folder_model(args.model)
        if chosen is not None:
            print(f"Model: {chosen} (the first of the export folder's files in --help's order)")
    return PoseEstimator(args.model, keypoints=args.keypoints, **options)


def _predict(args):
    import warnings

    import cv2

    from keras_dpn.core import io_utils
    from keras_dpn.inference import visualize
    from keras_dpn.inference.detectors import DetectionFile
    from keras_dpn.inference.estimator import WHOLE_IMAGE_WARNING, read_image

    if (args.input is None) == (args.source is None):
        raise ValueError("Give an INPUT file or --source CAMERA (not both). "
                         f"Received: input={args.input!r}, --source={args.source!r}")
    if args.source is not None and not args.source.isdigit():
        raise ValueError("--source takes a camera index (0, 1, ...); give a file as INPUT. "
                         f"Received: --source={args.source!r}")
    out = os.path.abspath(args.out)
    suffix = os.path.splitext(args.input or "")[1].lower()
    is_video = args.source is not None or suffix in VIDEO_SUFFIXES
    out_suffix = os.path.splitext(out)[1].lower()
    if is_video and out_suffix != ".mp4":
        raise ValueError(f"A video input writes an .mp4. Received: --out={args.out!r}")
    if not is_video and out_suffix not in IMAGE_OUT_SUFFIXES:
        raise ValueError(f"An image input writes one of {IMAGE_OUT_SUFFIXES}. "
                         f"Received: --out={args.out!r}")
    if not is_video and (args.jsonl or args.smooth or args.max_frames):
        raise ValueError("--jsonl, --smooth and --max-frames apply to videos. "
                         f"Received: input={args.input!r}")
    jsonl = os.path.abspath(args.jsonl) if args.jsonl else os.path.splitext(out)[0] + ".jsonl"
    for path in [out] + ([jsonl] if is_video else []):
        if os.path.exists(path) and not args.overwrite:
            raise FileExistsError(f"Output already exists: {path}. Pass --overwrite to replace it.")
    for option, path in [("--out", out)] + ([("--jsonl", jsonl)] if is_video else []):
        if os.path.isdir(path):
            raise ValueError(f"{option} is a folder; give a file name. Received: {option}={path!r}")
        io_utils.check_output_folder(os.path.dirname(path), option)
    if args.input is not None and not os.path.isfile(args.input):
        raise ValueError(f"Input file not found. Received: input={args.input!r}")
    if args.detect_every < 1 or (args.max_frames is not None and args.max_frames < 1):
        raise ValueError(f"--detect-every and --max-frames must be >= 1. Received: "
                         f"--detect-every={args.detect_every}, --max-frames={args.max_frames}")
    # Everything that can be checked without the model is checked first.
    source = None
    if not is_video:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = read_image(args.input)
        for w in caught:  # the 16-bit note: one line, not a warning with its source line
            _warn(str(w.message))
    else:
        from keras_dpn.inference.video import VideoSource, predict_video
        source = VideoSource(args.source if args.source is not None else args.input)
    try:
        detections = DetectionFile(args.boxes, args.box_threshold) if args.boxes else None
        detector = _detector_from_args(args)
        smoothing = _smoothing_from_args(args)
        if detections is not None and detector is not None:
            _warn("--boxes takes precedence: --detector is not used")
            detector = None
        if detections is None and detector is None:
            _warn(WHOLE_IMAGE_WARNING)
        estimator = _estimator_from_args(args)
    except BaseException:
        if source is not None:
            source.close()
        raise

    if not is_video:
        boxes = scores = None
        if detections is not None:
            image_id = args.image_id if args.image_id is not None \
                else _image_id_from_name(args.input)
            if image_id is None:
                raise ValueError("--boxes needs --image-id (the file name holds no number). "
                                 f"Received: input={args.input!r}")
            boxes, scores = detections.lookup(image_id)
            if len(boxes) == 0:
                print(f"No detections for image_id={image_id} at score >= {args.box_threshold}")
        elif detector is not None:
            boxes, scores = detector(image)
            if len(boxes) == 0:
                print(f"The detector found nobody at score >= {args.box_threshold}")
        whole = [[0, 0, image.shape[1], image.shape[0]]]
        people = estimator.predict(image, whole if boxes is None else boxes, scores)
        drawn = visualize.draw_skeleton(image, people, estimator.spec, args.score_threshold,
                                        boxes=[p["box"] for p in people] if boxes is not None
                                        else None)
        try:
            with io_utils.atomic_path(out) as tmp:
                if not cv2.imwrite(tmp, drawn[..., ::-1]):
                    raise ValueError(f"OpenCV could not write the image. "
                                     f"Received: --out={args.out!r}")
        except OSError as e:
            raise ValueError(f"Could not write the image ({e.strerror or e}). "
                             f"Received: --out={out!r}") from None
        print(f"{len(people)} person(s) -> {out}")
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the whole-image warning was printed above
        try:
            summary = predict_video(
                estimator, source, out, jsonl,
                detector=detector, detections=detections, detect_every=args.detect_every,
                smoothing=smoothing, score_threshold=args.score_threshold,
                max_frames=args.max_frames, overwrite=args.overwrite)
        except OSError as e:  # a full disk mid-video; nothing is left (atomic writes)
            raise ValueError(f"Could not write the outputs ({e.strerror or e}). "
                             f"Received: --out={out!r}, --jsonl={jsonl!r}") from None
    print(f"{summary['frames']} frame(s), {len(summary['ids'])} track id(s), detector run on "
          f"{summary['detector_calls']} frame(s) -> {out}, {jsonl}")
    return 0


def main(argv=None):
    """Entry point of the ``keras-dpn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # Its own parser, checks and exit statuses (3: the loss diverged).
        from keras_dpn.cli import train as train_command
        return train_command.main(argv[1:], dataset=None, prog="keras-dpn train", respawn=True)
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "export":
            return _export(args)
        if args.command == "publish":
            return _publish(args)
        if args.command == "benchmark":
            return _benchmark(args, argv)
        return _predict(args)
    except (ValueError, FileExistsError) as e:
        print(f"keras-dpn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # Full disk, read-only folder: one line naming the path, not a traceback.
        where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e) else ""
        first = (str(e).splitlines() or [type(e).__name__])[0]
        print(f"keras-dpn {args.command}: error: {first}{where}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if type(e).__name__ != "QATError":  # the QAT child's failure, already one line
            raise
        print(f"keras-dpn {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
