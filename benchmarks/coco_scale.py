"""COCO scale, simulated: what building shards, starting the pipeline and evaluating cost.

No COCO download is needed: the bundled sample's 52 images and their people are
repeated under new image and annotation ids until the annotation files have
COCO's size, and every copy refers to the same 52 JPEG files (the file name is
the mapping: nothing is copied, the page cache serves the reads, so disk
read speed is *not* part of the figures).

* **train** (COCO train2017): 118,287 images, 149,813 people with keypoints on
  about 63k of them (the sample has 2.4 people per image; COCO 2.6), the other
  images without any person annotation, as in COCO;
* **val** (COCO val2017): 5,000 images, 6,352 people with keypoints, and a
  detection file of 104,125 person boxes (the size of the standard
  ``COCO_val2017_detections_AP_H_56_person.json``): the sample's own
  detections where it has them, else ground-truth boxes (scores 0.9-1) and
  jittered copies (scores 0.003-0.6).

Stages, each in a fresh process whose peak memory (resident set of the
process and all its children, sampled every 0.1 s) is measured from outside:

1. ``build``: ``tfrecords/build_coco.py``'s library call on the train file
   (64 shards, ``--drop-empty-images``) with ``--num-workers`` 1 and 2: time,
   peak memory, shard bytes and the manifest's size;
2. ``startup``: ``build_dataset`` over the 64 shards (training, batch 32):
   time to return, time to the first batch, memory, then the examples/s of the
   pipeline over a number of batches (what a COCO epoch costs the host);
3. ``eval``: val shards (8), then the whole evaluation path as the per-epoch
   callback runs it: ``build_dataset(training=False, detections=...)``,
   ``predict_coco`` with a tiny model and the flip test (JPEG decode, crops,
   heatmap decoding), rescoring, OKS-NMS, the results json and pycocotools;
   the time a DPN4_32 forward pass would add is measured on a few batches and
   extrapolated.

Usage::

    python benchmarks/coco_scale.py --fraction 0.01        # a quick try (~2 min)
    python benchmarks/coco_scale.py                        # full size (35-60 min on 2 busy cores, 10 GB disk)
    python benchmarks/coco_scale.py --stages eval --work-dir /tmp/coco_scale --keep

``--work-dir`` (default: a temporary folder) holds the annotation files and
shards; it is deleted at the end unless ``--keep``.
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAMPLE_ANN = os.path.join(REPO, "sample_data", "coco", "annotations", "person_keypoints_sample.json")
SAMPLE_DET = os.path.join(REPO, "sample_data", "coco", "annotations", "person_detections_sample.json")
SAMPLE_IMAGES = os.path.join(REPO, "sample_data", "coco", "images")

# COCO 2017 person keypoints: train images, train people with keypoints,
# val images, val people with keypoints, and the boxes of the standard
# person detection file (COCO_val2017_detections_AP_H_56_person.json).
TRAIN_IMAGES, TRAIN_PEOPLE = 118_287, 149_813
VAL_IMAGES, VAL_PEOPLE, VAL_BOXES = 5_000, 6_352, 104_125
TRAIN_SHARDS, VAL_SHARDS = 64, 8
STAGES = ("build", "startup", "eval")
MiB = 1 << 20


# ---------------------------------------------------------------------------
# Simulated annotation files.


def _trainable(ann):
    return (not ann.get("iscrowd", 0)) and any(v > 0 for v in ann["keypoints"][2::3])


def make_annotations(path, num_images, num_people, id_offset=0):
    """Repeats the sample's images (with their annotations) into a COCO-sized file.

    Images carry their sample annotations until ``num_people`` trainable
    people are reached; the others carry none. The images with people are
    spread evenly over the ids.

    Returns:
        ``(images written, trainable people written, list of (new image, source image id))``.
    """
    with open(SAMPLE_ANN) as f:
        sample = json.load(f)
    anns_of = {}
    for a in sample["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    sources = sorted(sample["images"], key=lambda im: im["id"])
    people_of = [sum(_trainable(a) for a in anns_of.get(im["id"], [])) for im in sources]
    # How many images need their people to reach num_people (cycling the sample).
    with_people, people = 0, 0
    while people < num_people:
        people += people_of[with_people % len(sources)]
        with_people += 1
    with_people = min(with_people, num_images)
    images, annotations, mapping = [], [], []
    ann_id = id_offset
    people = used = 0
    for i in range(num_images):
        src = sources[i % len(sources)]
        image_id = id_offset + i + 1
        images.append(dict(src, id=image_id))
        mapping.append((image_id, src["id"]))
        # Bresenham-like spread: image i carries people when the running quota grows.
        if (i + 1) * with_people // num_images > i * with_people // num_images \
                and used < with_people:
            used += 1
            for a in anns_of.get(src["id"], []):
                ann_id += 1
                annotations.append(dict(a, id=ann_id, image_id=image_id))
                people += _trainable(a)
    data = {"info": {"description": f"COCO-sized simulation: the keras-dpn sample repeated "
                                    f"({num_images} images)"},
            "licenses": sample.get("licenses", []), "images": images,
            "annotations": annotations, "categories": sample["categories"]}
    with open(path, "w") as f:
        json.dump(data, f)
    return num_images, people, mapping


def make_detections(path, mapping, annotation_file, num_boxes, seed=0):
    """A detection-results json of ``num_boxes`` boxes spread evenly over the images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(SAMPLE_DET) as f:
        sample_dets = json.load(f)
    det_of = {}
    for d in sample_dets:
        det_of.setdefault(d["image_id"], []).append(d)
    with open(annotation_file) as f:
        data = json.load(f)
    size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    with open(SAMPLE_ANN) as f:
        sample = json.load(f)
    gt_of = {}
    for a in sample["annotations"]:
        gt_of.setdefault(a["image_id"], []).append(a["bbox"])
    out = []
    n = len(mapping)
    for i, (image_id, src) in enumerate(mapping):
        k = (i + 1) * num_boxes // n - i * num_boxes // n
        width, height = size[image_id]
        if src in det_of:
            base = [(d["bbox"], d["score"]) for d in sorted(det_of[src], key=lambda d: -d["score"])]
        else:
            base = [(b, float(rng.uniform(0.9, 1.0))) for b in gt_of.get(src, [])]
        boxes = base[:k]
        while len(boxes) < k:
            if base:
                x, y, w, h = base[rng.integers(len(base))][0]
            else:
                w, h = width * 0.3, height * 0.5
                x, y = (width - w) / 2, (height - h) / 2
            w2, h2 = w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)
            x2 = float(np.clip(x + rng.uniform(-0.3, 0.3) * w, 0, width - 2))
            y2 = float(np.clip(y + rng.uniform(-0.3, 0.3) * h, 0, height - 2))
            w2 = float(max(2.0, min(w2, width - x2)))
            h2 = float(max(2.0, min(h2, height - y2)))
            boxes.append(([x2, y2, w2, h2], float(rng.uniform(0.003, 0.6))))
        for box, score in boxes:
            out.append({"image_id": image_id, "category_id": 1,
                        "bbox": [round(float(v), 2) for v in box], "score": round(score, 5)})
    with open(path, "w") as f:
        json.dump(out, f)
    return len(out)


# ---------------------------------------------------------------------------
# Measuring a child process: wall time and peak resident memory of its tree.


def _children_of():
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                parents.setdefault(ppid, []).append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return parents


def _rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples the summed resident memory of a process and its descendants."""

    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.peak_total = self.peak_main = self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            parents = _children_of()
            tree, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo.extend(parents.get(p, []))
            rss = [_rss_bytes(p) for p in tree]
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_main = max(self.peak_main, rss[0])
            self.peak_processes = max(self.peak_processes, sum(r > 0 for r in rss))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_stage(stage, args, **kwargs):
    """Runs ``--stage`` in a child process; returns its RESULT dict plus memory peaks."""
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage,
           "--work-dir", args.work_dir, "--fraction", str(args.fraction)]
    for key, value in kwargs.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not line.startswith("RESULT "):
            print("    " + line.rstrip(), flush=True)
    proc.wait()
    mem.stop()
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # User + system time of the child and every process it waited for (the
    # writer pool): core-seconds, which a loaded machine stretches far less
    # than wall time.
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    results = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"stage {stage} {kwargs} failed with status {proc.returncode}")
    out = results[-1]
    out.update(process_seconds=wall, cpu_seconds=cpu, peak_rss_mib=mem.peak_total / MiB,
               peak_rss_main_mib=mem.peak_main / MiB, processes=mem.peak_processes,
               load_average=[round(load_start, 1), round(os.getloadavg()[0], 1)])
    return out


def _rss_now_mib():
    return _rss_bytes(os.getpid()) / MiB


def _emit(result):
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Child stages.


def _paths(work_dir):
    return {"train_ann": os.path.join(work_dir, "train.json"),
            "val_ann": os.path.join(work_dir, "val.json"),
            "val_det": os.path.join(work_dir, "val_detections.json"),
            "train_prefix": os.path.join(work_dir, "shards", "coco_train"),
            "val_prefix": os.path.join(work_dir, "shards", "coco_val")}


def stage_build(args):
    """Shard build of the train file with ``args.workers`` writer processes."""
    from keras_dpn.data import read_coco, write_shards
    from keras_dpn.data.shards import manifest_path

    p = _paths(args.work_dir)
    prefix = args.prefix or p["train_prefix"]
    ann = args.annotations or p["train_ann"]
    t0 = time.perf_counter()
    entries, skips = read_coco(ann, SAMPLE_IMAGES)
    t_read = time.perf_counter() - t0
    rss_after_read = _rss_now_mib()
    num_shards = min(args.num_shards, sum(1 for e in entries if e["people"]))
    t1 = time.perf_counter()
    manifest = write_shards(entries, prefix, num_shards, num_workers=args.workers,
                            keep_empty_images=not args.drop_empty, reader_skips=skips,
                            progress=False)
    t_write = time.perf_counter() - t1
    shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    _emit({"workers": args.workers, "images_read": len(entries), "records": manifest["records"],
           "people": manifest["people"], "num_shards": num_shards, "read_seconds": t_read,
           "write_seconds": t_write, "seconds": t_read + t_write,
           "rss_after_read_mib": rss_after_read, "shard_bytes": shard_bytes,
           "manifest_bytes": os.path.getsize(manifest_path(prefix)),
           "annotation_bytes": os.path.getsize(ann)})


def stage_startup(args):
    """``build_dataset`` over the train shards: start-up, first batch, throughput."""
    import tensorflow as tf
    from keras_dpn.data import build_dataset

    p = _paths(args.work_dir)
    rss0 = _rss_now_mib()
    t0 = time.perf_counter()
    ds = build_dataset(p["train_prefix"] + "-*.tfrecord", training=True, batch_size=args.batch_size,
                       repeat=True, seed=0, verbose=False)
    t_build = time.perf_counter() - t0
    rss_built = _rss_now_mib()
    it = iter(ds)
    next(it)
    t_first = time.perf_counter() - t0
    for _ in range(3):
        next(it)
    t2, cpu2 = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        next(it)
    seconds, cpu = time.perf_counter() - t2, time.process_time() - cpu2
    _emit({"build_dataset_seconds": t_build, "first_batch_seconds": t_first,
           "rss_before_mib": rss0, "rss_after_build_dataset_mib": rss_built,
           "rss_end_mib": _rss_now_mib(), "batches": args.batches, "batch_size": args.batch_size,
           "examples_per_s": args.batches * args.batch_size / seconds,
           # Per CPU-second of this process (all its threads): what one core
           # delivers, whatever else the machine runs.
           "examples_per_cpu_s": args.batches * args.batch_size / cpu,
           "cores": os.cpu_count(), "tensorflow": tf.__version__})


def stage_eval(args):
    """The evaluation path on the val shards, as ``COCOEvaluationCallback`` runs it."""
    import keras
    import numpy as np

    from keras_dpn.data import build_dataset
    from keras_dpn.evaluation import COCOEvaluator, predict_keypoints

    p = _paths(args.work_dir)
    times = {}
    rss = {"start": _rss_now_mib()}
    t = time.perf_counter()
    ds = build_dataset(p["val_prefix"] + "-*.tfrecord", training=False, batch_size=args.batch_size,
                       detections=p["val_det"], deterministic=True, verbose=False)
    times["build_dataset"] = time.perf_counter() - t
    rss["after_build_dataset"] = _rss_now_mib()
    # A tiny model: the data path, not the network, is measured here.
    inputs = keras.Input((256, 192, 3))
    tiny = keras.Model(inputs, keras.layers.Conv2D(17, 4, strides=4, name="heatmaps")(inputs))
    t, cpu = time.perf_counter(), time.process_time()
    out = predict_keypoints(tiny, ds, flip_test=True, verbose=0)
    times["predict (read, decode, crop, flip test, heatmap decoding)"] = time.perf_counter() - t
    predict_cpu = time.process_time() - cpu
    rss["after_predict"] = _rss_now_mib()
    evaluator = COCOEvaluator(p["val_ann"], output_dir=os.path.join(args.work_dir, "eval"))
    evaluator.coco  # the ground truth is loaded once, when the callback is built
    t = time.perf_counter()
    evaluator.update(out["image_id"], out["keypoints"], out["center"], out["scale"], out["score"])
    post = evaluator.postprocess()
    times["rescoring + OKS-NMS"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluator.write_results(post)
    times["results json"] = time.perf_counter() - t
    evaluator.output_dir = None
    t = time.perf_counter()
    stats = evaluator.evaluate_results(post)
    times["pycocotools"] = time.perf_counter() - t
    rss["end"] = _rss_now_mib()
    # The peak of this process so far: the evaluation path, before the DPN below.
    rss["peak_eval_path"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    boxes = len(out["image_id"])

    # What a real model adds: DPN4_32 forward passes on a few batches (x2 for
    # the flip test), extrapolated to every box.
    import keras_dpn
    model = keras_dpn.DPN4_32()
    batch = next(iter(ds))[0].numpy()
    both = np.concatenate([batch, batch[:, :, ::-1]])
    model.predict_on_batch(both)
    t = time.perf_counter()
    for _ in range(args.model_batches):
        model.predict_on_batch(both)
    per_box = (time.perf_counter() - t) / (args.model_batches * len(batch))
    _emit({"boxes": boxes, "kept_after_nms": len(post), "AP": stats["AP"], "times": times,
           "rss_mib": rss, "dpn4_32_seconds_per_box_with_flip": per_box,
           "dpn4_32_extrapolated_seconds": per_box * boxes,
           "boxes_per_s": boxes / times["predict (read, decode, crop, flip test, heatmap decoding)"],
           "boxes_per_cpu_s": boxes / predict_cpu})


# ---------------------------------------------------------------------------
# Orchestration and report.


def _fmt_s(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def report(res, args):
    """The docs/benchmarks.md table: wall time, CPU time (core-seconds), peak memory, what."""
    lines = [f"COCO scale x{args.fraction:g} on {os.cpu_count()} cores; load average at start "
             f"{res.get('load_average')}; {res.get('code', '')}"]
    make = res.get("make")
    if make:
        lines.append(f"annotations: train {make['train_images']} images / {make['train_people']} "
                     f"people ({make['train_json_mib']:.0f} MiB json), val {make['val_images']} "
                     f"images / {make['val_people']} people, {make['val_boxes']} detection boxes")

    def cells(r):
        load = "-".join(str(x) for x in r["load_average"])
        return f"{_fmt_s(r['process_seconds'])} | {_fmt_s(r['cpu_seconds'])} | {load} | " \
               f"{r['peak_rss_mib']:.0f} MiB ({r['processes']} proc.)"

    rows = []
    for b in res.get("build", []):
        rows.append(f"| shard build, `--num-workers {b['workers']}` | {cells(b)} | "
                    f"reading the json {b['read_seconds']:.0f} s; wrote {b['records']} images, "
                    f"{b['people']} people, {b['shard_bytes'] / 2**30:.2f} GiB in {b['num_shards']} "
                    f"shards; manifest {b['manifest_bytes'] / 1024:.0f} KiB |")
    s = res.get("startup")
    if s:
        rows.append(f"| `build_dataset` over {TRAIN_SHARDS} shards (training) | {cells(s)} | "
                    f"returns in {s['build_dataset_seconds']:.1f} s, first batch after "
                    f"{s['first_batch_seconds']:.1f} s; then {s['examples_per_s']:.0f} examples/s "
                    f"({s['batches']} batches of {s['batch_size']}), "
                    f"{s.get('examples_per_cpu_s', float('nan')):.0f} per CPU-second |")
    e = res.get("eval")
    if e:
        parts = "; ".join(f"{k} {_fmt_s(v)}" for k, v in e["times"].items())
        e = dict(e, peak_rss_mib=e["rss_mib"]["peak_eval_path"])  # without the DPN4_32 below
        rows.append(f"| evaluation of {e['boxes']} boxes, tiny model | {cells(e)} | {parts}; "
                    f"{e['boxes_per_s']:.0f} boxes/s, "
                    f"{e.get('boxes_per_cpu_s', float('nan')):.0f} per CPU-second |")
        rows.append(f"| + DPN4_32 forward passes, flip test (extrapolated) | "
                    f"{_fmt_s(e['dpn4_32_extrapolated_seconds'])} | | | | "
                    f"{1000 * e['dpn4_32_seconds_per_box_with_flip']:.0f} ms per box (Keras, CPU) |")
    if rows:
        lines += ["", "| step | wall time | CPU time | load | peak memory | what |",
                  "|---|---:|---:|---|---:|---|"] + rows
    return "\n".join(lines)


def _code_state():
    """The commit, and whether the data pipeline's files differ from it (they are measured)."""
    try:
        head = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "keras_dpn/data",
                                "keras_dpn/evaluation"], capture_output=True, text=True).stdout
        return f"commit {head}" + (" + uncommitted changes in keras_dpn/data or evaluation"
                                   if dirty.strip() else "")
    except OSError:
        return "no git"


def orchestrate(args):
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not 0 < args.fraction <= 1:
        raise SystemExit(f"error: --stages takes {','.join(STAGES)} and --fraction (0, 1]. "
                         f"Received: stages={args.stages!r}, fraction={args.fraction!r}")
    temporary = args.work_dir is None
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="coco_scale_")
    os.makedirs(args.work_dir, exist_ok=True)
    p = _paths(args.work_dir)
    res = {"fraction": args.fraction, "cores": os.cpu_count(),
           "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()), "code": _code_state()}
    print(f"work dir {args.work_dir}; load average {res['load_average']}", flush=True)
    f = args.fraction
    try:
        if not os.path.exists(p["val_det"]):
            t = time.perf_counter()
            n_train, people_train, _ = make_annotations(
                p["train_ann"], math.ceil(TRAIN_IMAGES * f), math.ceil(TRAIN_PEOPLE * f))
            n_val, people_val, mapping = make_annotations(
                p["val_ann"], math.ceil(VAL_IMAGES * f), math.ceil(VAL_PEOPLE * f))
            boxes = make_detections(p["val_det"], mapping, p["val_ann"], math.ceil(VAL_BOXES * f))
            res["make"] = {"train_images": n_train, "train_people": people_train,
                           "val_images": n_val, "val_people": people_val, "val_boxes": boxes,
                           "train_json_mib": os.path.getsize(p["train_ann"]) / MiB,
                           "seconds": time.perf_counter() - t}
            print(f"made annotations in {res['make']['seconds']:.0f} s: {res['make']}", flush=True)
        shard_dir = os.path.dirname(p["train_prefix"])
        if "build" in stages:
            res["build"] = []
            for workers in [int(w) for w in args.build_workers.split(",")]:
                shutil.rmtree(shard_dir, ignore_errors=True)  # one set on disk at a time
                print(f"build, --num-workers {workers} ...", flush=True)
                res["build"].append(run_stage("build", args, workers=workers,
                                              num_shards=TRAIN_SHARDS, drop_empty=1))
                print(f"  {res['build'][-1]}", flush=True)
        if "startup" in stages:
            if not os.path.exists(p["train_prefix"] + "-manifest.json"):
                run_stage("build", args, workers=2, num_shards=TRAIN_SHARDS, drop_empty=1)
            print("startup ...", flush=True)
            res["startup"] = run_stage("startup", args, batches=args.batches)
            print(f"  {res['startup']}", flush=True)
        if "eval" in stages:
            # The train shards are not needed any more: free their disk first.
            if not args.keep:
                for name in os.listdir(shard_dir) if os.path.isdir(shard_dir) else []:
                    if name.startswith("coco_train"):
                        os.remove(os.path.join(shard_dir, name))
            if not os.path.exists(p["val_prefix"] + "-manifest.json"):
                run_stage("build", args, workers=2, num_shards=VAL_SHARDS, drop_empty=0,
                          annotations=p["val_ann"], prefix=p["val_prefix"])
            print("eval ...", flush=True)
            res["eval"] = run_stage("eval", args)
            print(f"  {res['eval']}", flush=True)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    text = report(res, args)
    print("\n" + text)
    from keras_dpn.core.io_utils import atomic_file
    for path, content in ((args.json, json.dumps(res, indent=1)), (args.markdown, text)):
        if path:
            with atomic_file(path, "w") as fh:
                fh.write(content + "\n")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fraction", type=float, default=1.0,
                   help="scale of the simulated COCO (1: full size; 0.01 for a quick try)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated: build,startup,eval")
    p.add_argument("--work-dir", default=None, help="annotations and shards (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep the work dir's shards and files")
    p.add_argument("--build-workers", default="1,2", help="--num-workers values of the build stage")
    p.add_argument("--batches", type=int, default=100, help="pipeline batches timed in startup")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model-batches", type=int, default=3)
    p.add_argument("--json", default=None, help="write all numbers here")
    p.add_argument("--markdown", default=None, help="write the table here")
    # Internal: one stage in this process (what the orchestrator runs).
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--num-shards", type=int, default=TRAIN_SHARDS, help=argparse.SUPPRESS)
    p.add_argument("--drop-empty", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--annotations", default=None, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage is None:
        return orchestrate(args)
    {"build": stage_build, "startup": stage_startup, "eval": stage_eval}[args.stage](args)


if __name__ == "__main__":
    main()
