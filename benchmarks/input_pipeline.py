"""Training input pipeline per core, beside the HRNet reference procedure, same run.

Measures, on the same people (the same shards) and the same cores:

1. ``keras_dpn.data.build_dataset`` in training mode (read shards, decode the
   windows once per image, reference augmentation, one warp per person,
   Gaussian targets, batches of ``--batch-size``);
2. a transcription of the HRNet reference's per-person procedure
   (``JointsDataset.__getitem__``: cv2 decode of the whole image, box to
   center/scale, half-body, random scale / rotation / flip, one
   ``cv2.warpAffine``, ToTensor + Normalize in numpy, the per-joint numpy
   Gaussian targets), batched with ``np.stack``. It gets the JPEG bytes from
   memory (no file reads, no record parsing): the comparison favours it.

Each measurement runs in its own process pinned to its cores with
``os.sched_setaffinity`` before TensorFlow or OpenCV start (both size their
thread pools from the affinity mask; ``cv2.setNumThreads(1)`` is set on one
core as well). "1 core" pins one process to one core. "all cores" runs the
pipeline in one process on every core (tf.data's own parallelism), and the
reference as one process per core, like a PyTorch DataLoader with that many
workers (without the worker-to-trainer copies a DataLoader pays). The two
kinds alternate for ``--rounds`` rounds, so load changes hit both.

Rates are reported two ways: examples per wall-clock second per core, and
examples per CPU-second (the process's CPU time, all threads). On an idle
machine they agree; on a shared one the wall rate falls with the load and
the CPU-second rate does not, so the ratio is taken from CPU-seconds.

Usage::

    python benchmarks/input_pipeline.py                       # bundled COCO sample
    python benchmarks/input_pipeline.py --shards 'shards/coco_train-*.tfrecord' \\
        --seconds 30 --rounds 3 --markdown docs/input_pipeline.md
"""

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_COCO = os.path.join(REPO, "sample_data/coco/annotations/person_keypoints_sample.json")
# Dense bf16 tensor-core peak of an H100 SXM / H200 (NVIDIA's data sheets).
H100_BF16_DENSE_TFLOPS = 989.0


# ------------------------------------------------------------------ reference
class ReferenceProcedure:
    """The HRNet reference's training transform of one person, in numpy and cv2.

    Transcribed from the procedure of ``lib/dataset/JointsDataset.py`` and
    ``lib/utils/transforms.py`` (leoxiaobin/deep-high-resolution-net.pytorch)
    with the COCO config's values; the window ``scale`` is kept in pixels
    instead of units of 200 pixels, which changes no arithmetic that matters.
    """

    def __init__(self, upper_body, flip_pairs, num_joints, input_size=(256, 192),
                 heatmap_size=(64, 48), sigma=2.0, scale_factor=0.3, rotation_factor=40.0,
                 half_body_prob=0.3, half_body_min_joints=8, seed=0):
        import numpy as np
        self.np = np
        self.rng = np.random.RandomState(seed)
        self.upper = set(upper_body)
        self.flip_pairs = list(flip_pairs)
        self.k = num_joints
        self.out_h, self.out_w = input_size
        self.hm_h, self.hm_w = heatmap_size
        self.aspect = self.out_w / self.out_h
        self.sigma = sigma
        self.sf, self.rf = scale_factor, rotation_factor
        self.hb_prob, self.hb_min = half_body_prob, half_body_min_joints
        self.mean = np.array([0.485, 0.456, 0.406], np.float32)
        self.std = np.array([0.229, 0.224, 0.225], np.float32)

    def _box_to_cs(self, x, y, w, h):
        np = self.np
        center = np.array([x + w * 0.5, y + h * 0.5], np.float32)
        if w > self.aspect * h:
            h = w / self.aspect
        elif w < self.aspect * h:
            w = h * self.aspect
        return center, np.array([w, h], np.float32) * 1.25

    def _half_body(self, joints, vis):
        np = self.np
        upper = [joints[j] for j in range(self.k) if vis[j] > 0 and j in self.upper]
        lower = [joints[j] for j in range(self.k) if vis[j] > 0 and j not in self.upper]
        if self.rng.randn() < 0.5 and len(upper) > 2:
            chosen = upper
        else:
            chosen = lower if len(lower) > 2 else upper
        if len(chosen) < 2:
            return None, None
        chosen = np.array(chosen, np.float32)
        center = chosen.mean(axis=0)
        w, h = chosen.max(axis=0) - chosen.min(axis=0)
        if w > self.aspect * h:
            h = w / self.aspect
        elif w < self.aspect * h:
            w = h * self.aspect
        return center, np.array([w, h], np.float32) * 1.5

    def _affine(self, center, scale, rotation):
        import cv2
        np = self.np
        rad = math.radians(rotation)
        sn, cs = math.sin(rad), math.cos(rad)
        up = np.array([0.0, -0.5 * scale[0]])
        src_dir = np.array([up[0] * cs - up[1] * sn, up[0] * sn + up[1] * cs])
        src = np.zeros((3, 2), np.float32)
        dst = np.zeros((3, 2), np.float32)
        src[0] = center
        src[1] = center + src_dir
        dst[0] = [self.out_w * 0.5, self.out_h * 0.5]
        dst[1] = dst[0] + np.array([0.0, -0.5 * self.out_w])
        for pts in (src, dst):  # third point: a right angle at the second
            d = pts[0] - pts[1]
            pts[2] = pts[1] + np.array([-d[1], d[0]])
        return cv2.getAffineTransform(src, dst)

    def _targets(self, joints, vis):
        np = self.np
        target = np.zeros((self.k, self.hm_h, self.hm_w), np.float32)
        weight = vis.astype(np.float32).reshape(-1, 1)
        tmp = self.sigma * 3
        stride = np.array([self.out_w / self.hm_w, self.out_h / self.hm_h])
        for j in range(self.k):
            mu_x = int(joints[j][0] / stride[0] + 0.5)
            mu_y = int(joints[j][1] / stride[1] + 0.5)
            ul = [int(mu_x - tmp), int(mu_y - tmp)]
            br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
            if ul[0] >= self.hm_w or ul[1] >= self.hm_h or br[0] < 0 or br[1] < 0:
                weight[j] = 0
                continue
            size = 2 * tmp + 1
            x = np.arange(0, size, 1, np.float32)
            y = x[:, None]
            x0 = y0 = size // 2
            g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * self.sigma ** 2))
            gx = max(0, -ul[0]), min(br[0], self.hm_w) - ul[0]
            gy = max(0, -ul[1]), min(br[1], self.hm_h) - ul[1]
            ix = max(0, ul[0]), min(br[0], self.hm_w)
            iy = max(0, ul[1]), min(br[1], self.hm_h)
            if weight[j] > 0.5:
                target[j][iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
        return target, weight

    def __call__(self, encoded, bbox, keypoints):
        import cv2
        np = self.np
        image = cv2.imdecode(np.frombuffer(encoded, np.uint8),
                             cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        joints = np.array(keypoints[:, :2], np.float64)
        vis = (keypoints[:, 2] > 0).astype(np.float32)
        center, scale = self._box_to_cs(*bbox)
        if vis.sum() > self.hb_min and self.rng.rand() < self.hb_prob:
            c_hb, s_hb = self._half_body(joints, vis)
            if c_hb is not None:
                center, scale = c_hb, s_hb
        scale = scale * np.clip(self.rng.randn() * self.sf + 1, 1 - self.sf, 1 + self.sf)
        rotation = (np.clip(self.rng.randn() * self.rf, -2 * self.rf, 2 * self.rf)
                    if self.rng.rand() <= 0.6 else 0.0)
        if self.rng.rand() <= 0.5:
            image = image[:, ::-1, :]
            joints[:, 0] = image.shape[1] - 1 - joints[:, 0]
            for a, b in self.flip_pairs:
                joints[[a, b]] = joints[[b, a]]
                vis[[a, b]] = vis[[b, a]]
            center[0] = image.shape[1] - center[0] - 1
        trans = self._affine(center, scale, rotation)
        crop = cv2.warpAffine(image, trans, (self.out_w, self.out_h), flags=cv2.INTER_LINEAR)
        crop = (crop.astype(np.float32) / 255.0 - self.mean) / self.std  # ToTensor + Normalize
        for j in range(self.k):
            if vis[j] > 0:
                joints[j] = trans @ np.array([joints[j][0], joints[j][1], 1.0])
        target, weight = self._targets(joints, vis)
        return crop, target, weight


# -------------------------------------------------------------------- workers
def _pin(cpus):
    os.sched_setaffinity(0, set(cpus))
    if len(cpus) == 1:
        import cv2
        cv2.setNumThreads(1)


def run_pipeline(args):
    """Worker: build_dataset's training batches on the pinned cores."""
    from keras_dpn import data
    if args.keras_dpn_path:
        # PYTHONPATH (set by _spawn) must have won over the installed package.
        found = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(data.__file__))))
        if os.path.realpath(found) != os.path.realpath(args.keras_dpn_path):
            raise SystemExit(f"--keras-dpn-path: keras_dpn was imported from {found}, not "
                             f"from the folder asked for. Received: {args.keras_dpn_path!r}")
    ds = data.build_dataset(args.shards, batch_size=args.batch_size, repeat=True, seed=0)
    it = iter(ds)
    for _ in range(args.warmup_batches):
        next(it)
    return _measure(lambda: next(it), args.batch_size, args.seconds)


def run_reference(args):
    """Worker: the reference procedure on the pinned core, batches stacked."""
    import numpy as np
    with open(args.people, "rb") as f:
        people, meta = pickle.load(f)
    ref = ReferenceProcedure(meta["upper_body"], meta["flip_pairs"], meta["num_keypoints"],
                             seed=args.seed)
    order = []

    def batch():
        out = []
        for _ in range(args.batch_size):
            if not order:
                order.extend(ref.rng.permutation(len(people)).tolist())
            p = people[order.pop()]
            out.append(ref(p["encoded"], p["bbox"], p["keypoints"]))
        return [np.stack(x) for x in zip(*out)]

    for _ in range(args.warmup_batches):
        batch()
    return _measure(batch, args.batch_size, args.seconds)


def _peak_rss_mib():
    # VmHWM is this process image's own peak; getrusage's ru_maxrss would
    # report the parent's peak when that was higher at fork time.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(next_batch, batch_size, seconds):
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - wall < seconds:
        next_batch()
        n += batch_size
    return {"examples": n, "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu, "peak_rss_mib": _peak_rss_mib()}


# --------------------------------------------------------------------- parent
def export_people(pattern, path):
    """Every person of the shards (JPEG bytes, box, keypoints) for the reference workers."""
    import numpy as np
    import tensorflow as tf
    from keras_dpn.data.decoder import decode_example
    from keras_dpn.core.keypoints import COCO_17
    people = []
    for raw in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)):
        r = decode_example(raw, COCO_17.num_keypoints)
        for b, kp in zip(r["bbox"].numpy(), r["keypoints"].numpy()):
            people.append({"encoded": r["encoded"].numpy(), "bbox": [float(v) for v in b],
                           "keypoints": np.asarray(kp, np.float32)})
    meta = {"upper_body": COCO_17.upper_body, "flip_pairs": COCO_17.flip_pairs,
            "num_keypoints": COCO_17.num_keypoints}
    with open(path, "wb") as f:
        pickle.dump((people, meta), f)
    return len(people)


def _spawn(kind, cpus, args, people_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind,
           "--cpus", ",".join(map(str, cpus)), "--shards", args.shards, "--people", people_path,
           "--batch-size", str(args.batch_size), "--seconds", str(args.seconds),
           "--warmup-batches", str(args.warmup_batches), "--seed", str(args.seed)]
    env = None
    if args.keras_dpn_path:
        cmd += ["--keras-dpn-path", args.keras_dpn_path]
        # The other checkout's package goes before the installed one in the worker only.
        path = os.pathsep.join(filter(None, [args.keras_dpn_path, os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _collect(procs):
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"benchmark worker failed ({p.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"examples": sum(r["examples"] for r in results),
            "wall_s": max(r["wall_s"] for r in results),
            "cpu_s": sum(r["cpu_s"] for r in results),
            "peak_rss_mib": sum(r["peak_rss_mib"] for r in results)}


def measure(kind, cpus, args, people_path):
    if kind == "reference" and len(cpus) > 1:
        procs = [_spawn(kind, [c], args, people_path) for c in cpus]  # one worker per core
    else:
        procs = [_spawn(kind, cpus, args, people_path)]
    r = _collect(procs)
    r["per_core_wall"] = r["examples"] / r["wall_s"] / len(cpus)
    r["per_cpu_second"] = r["examples"] / r["cpu_s"]
    return r


def gpu_cores_needed(per_core_rate, tflops_list, models=("DPN4_32", "DPN4_64")):
    """Cores one GPU would need: assumed sustained GPU FLOP/s / training FLOPs per example."""
    import keras_dpn
    from keras_dpn.models.analysis import count_macs
    rows = []
    for name in models:
        macs = count_macs(keras_dpn.get_model(name))
        train_flops = 6.0 * macs  # forward + backward = 3 forward passes of 2 FLOPs per MAC
        for tflops in tflops_list:
            rate = tflops * 1e12 / train_flops
            rows.append({"model": name, "gmacs": macs / 1e9, "train_gflop": train_flops / 1e9,
                         "gpu_tflops": tflops, "gpu_examples_per_s": rate,
                         "cores": rate / per_core_rate})
    return rows


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else 0.5 * sum(values[len(values) // 2 - 1:
                                                                             len(values) // 2 + 1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", default=None, help="shard glob (default: build the bundled sample)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=12.0, help="measured time per run")
    p.add_argument("--warmup-batches", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cpus", default=None,
                   help="cores to use, e.g. '0,1' (default: all this process may run on)")
    p.add_argument("--gpu-tflops", default="50,100,200",
                   help="assumed sustained bf16 TFLOP/s of one GPU on these models, for the "
                        "cores-per-GPU estimate ('' to skip)")
    p.add_argument("--keras-dpn-path", default=None,
                   help="import keras_dpn's pipeline from this folder (to compare checkouts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--worker", choices=["pipeline", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--people", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _pin([int(c) for c in args.cpus.split(",")])
        run = run_pipeline if args.worker == "pipeline" else run_reference
        print(json.dumps(run(args)), flush=True)
        return None
    if args.batch_size < 1 or args.seconds <= 0 or args.rounds < 1 or args.warmup_batches < 0:
        p.error("--batch-size, --seconds and --rounds must be positive, --warmup-batches >= 0. "
                f"Received: {args.batch_size}, {args.seconds}, {args.rounds}, "
                f"{args.warmup_batches}")
    allowed = sorted(os.sched_getaffinity(0))
    try:
        cpus = sorted({int(c) for c in args.cpus.split(",")}) if args.cpus else allowed
    except ValueError:
        p.error(f"--cpus takes core numbers separated by commas. Received: {args.cpus!r}")
    if not set(cpus) <= set(allowed):
        p.error(f"--cpus names cores this process may not run on ({allowed}). "
                f"Received: {args.cpus!r}")
    if args.keras_dpn_path and not os.path.isdir(os.path.join(args.keras_dpn_path, "keras_dpn")):
        p.error(f"--keras-dpn-path must be a folder holding keras_dpn/. "
                f"Received: {args.keras_dpn_path!r}")
    tmp = tempfile.mkdtemp(prefix="dpn_bench_")
    try:
        return _compare(args, cpus, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compare(args, cpus, tmp):
    from keras_dpn import data
    if args.shards is None:
        data.build_coco_shards(SAMPLE_COCO, os.path.join(REPO, "sample_data/coco/images"),
                               os.path.join(tmp, "coco_sample"), 2, num_workers=1,
                               progress=False, verbose=False)
        args.shards = os.path.join(tmp, "coco_sample-*.tfrecord")
    people_path = os.path.join(tmp, "people.pkl")
    n_people = export_people(args.shards, people_path)
    if n_people == 0:
        raise SystemExit(f"No people in the shards. Received: --shards {args.shards!r}")
    load = os.getloadavg()
    print(f"{n_people} people in {args.shards}; cores {cpus}; batch {args.batch_size}; "
          f"{args.seconds:.0f} s per run, {args.rounds} round(s); load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    configs = [("1 core", cpus[:1])] + ([(f"{len(cpus)} cores", cpus)] if len(cpus) > 1 else [])
    runs = {}
    for rnd in range(args.rounds):
        for label, use in configs:
            for kind in ("pipeline", "reference"):
                r = measure(kind, use, args, people_path)
                runs.setdefault((label, kind), []).append(r)
                print(f"round {rnd + 1} {label:8s} {kind:9s}: {r['per_core_wall']:7.1f} ex/s per "
                      f"core (wall), {r['per_cpu_second']:7.1f} ex per CPU-second", flush=True)
    rows = []
    for label, use in configs:
        pipe, ref = runs[(label, "pipeline")], runs[(label, "reference")]
        ratios = [a["per_cpu_second"] / b["per_cpu_second"] for a, b in zip(pipe, ref)]
        rows.append({
            "cores": label, "pipeline_per_core_wall": _median([r["per_core_wall"] for r in pipe]),
            "pipeline_per_cpu_second": _median([r["per_cpu_second"] for r in pipe]),
            "reference_per_core_wall": _median([r["per_core_wall"] for r in ref]),
            "reference_per_cpu_second": _median([r["per_cpu_second"] for r in ref]),
            "ratio": _median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "pipeline_peak_rss_mib": max(r["peak_rss_mib"] for r in pipe),
            "reference_peak_rss_mib": max(r["peak_rss_mib"] for r in ref)})
    load = os.getloadavg()
    table = ["| cores | build_dataset ex/s per core (wall) | ex per CPU-s | peak RSS MiB | "
             "reference ex/s per core (wall) | ex per CPU-s | peak RSS MiB | "
             "build_dataset / reference (CPU-s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['cores']} | {r['pipeline_per_core_wall']:.0f} | "
                     f"{r['pipeline_per_cpu_second']:.0f} | {r['pipeline_peak_rss_mib']:.0f} | "
                     f"{r['reference_per_core_wall']:.0f} | {r['reference_per_cpu_second']:.0f} | "
                     f"{r['reference_peak_rss_mib']:.0f} | {r['ratio']:.2f}x "
                     f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")
    text = "\n".join(table)
    print("\n" + text)
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    result = {"rows": rows, "runs": {f"{k[0]}|{k[1]}": v for k, v in runs.items()},
              "people": n_people, "batch_size": args.batch_size, "cpus": cpus,
              "shards": args.shards}
    tflops = [float(t) for t in args.gpu_tflops.split(",") if t.strip()]
    if tflops:
        per_core = rows[-1]["pipeline_per_cpu_second"]
        gpu = gpu_cores_needed(per_core, tflops)
        lines = [f"\nCores one GPU training step needs, at {per_core:.0f} examples per "
                 "CPU-second of the pipeline (assumed sustained GPU rate; the dense bf16 "
                 f"peak of an H100/H200 is {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s):",
                 "| model | GMACs/example | training GFLOP/example | GPU TFLOP/s (assumed) | "
                 "GPU examples/s | cores |", "|---|---:|---:|---:|---:|---:|"]
        for g in gpu:
            lines.append(f"| {g['model']} | {g['gmacs']:.2f} | {g['train_gflop']:.1f} | "
                         f"{g['gpu_tflops']:.0f} ({100 * g['gpu_tflops'] / H100_BF16_DENSE_TFLOPS:.0f}%"
                         f" of peak) | {g['gpu_examples_per_s']:.0f} | {math.ceil(g['cores'])} |")
        print("\n".join(lines))
        text += "\n" + "\n".join(lines)
        result["gpu"] = gpu
    if args.json:
        from keras_dpn.core.io_utils import atomic_file
        with atomic_file(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        from keras_dpn.core.io_utils import atomic_file
        with atomic_file(args.markdown, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
