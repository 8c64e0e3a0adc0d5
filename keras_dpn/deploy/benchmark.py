"""``keras-dpn benchmark``: one table, one row per deployed format of one model.

For a model (a registered name built fresh or with ``--weights``, a training
run, a preset, a ``.keras`` file or an existing export folder) this measures,
per format (Keras on the current backend, SavedModel, TFLite fp32 / fp16 /
int8, QAT / pruned int8 where an export folder holds them, ONNX):

* the file's size on disk (a SavedModel: the whole folder);
* COCO AP through :class:`keras_dpn.PoseEstimator` on the bundled COCO
  sample (or ``--annotations`` / ``--images``), with the keypoint set's own
  OKS sigmas (:func:`keras_dpn.deploy.export_eval.evaluate_file`);
* batch-1 latency of one model call (the runtime alone, no cropping or
  decoding) at 1 and at ``--threads`` threads: median and interquartile
  range over ``--repeats`` calls after ``--warmup``;
* batch-``--batch-size`` throughput at ``--threads`` threads (images/s);
* achieved GFLOP/s (2 x MACs of :func:`keras_dpn.models.analysis.count_macs`
  per image) as a fraction of the float32 matmul rate measured in the same
  run, at the same thread count, on a matrix whose multiply-accumulates are
  of the model's order.

TensorFlow fixes its thread pools when it starts, so every timing runs in a
child process per thread count (``python -m keras_dpn.deploy.benchmark
--worker JOB.json``), with the BLAS / OpenMP / TensorFlow thread settings
made before any library starts its pools; TFLite and ONNX Runtime take the
thread count as an argument and run in the same child, so all rows of one
column share one environment.

Files land in ``--output``: ``export/`` (the files that had to be exported;
an existing export folder's files are used where they are),
``benchmark.json`` (rows, machine, versions, the exact command) and
``benchmark.md`` (the table), both written atomically.

Example:
>>> from keras_dpn.deploy import benchmark
>>> row = dict(format="tflite_fp32", file="model_fp32.tflite", size_bytes=2_500_000, AP=0.5,
...            latency={1: dict(median_ms=10.0, p25_ms=9.5, p75_ms=10.5)})
>>> print(benchmark.format_table([row], threads=[1]).splitlines()[2])
| tflite_fp32 | model_fp32.tflite | 2.50 | 0.5000 | 10.0 (9.5-10.5) | - | - | - |
"""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

#: Formats a benchmark can have rows for, in table order.
BENCH_FORMATS = ("keras", "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8_dynamic",
                 "tflite_int8", "tflite_qat", "tflite_pruned", "onnx")
#: The rows when ``--formats`` is not given (an export folder: those of them it holds,
#: plus its QAT / pruned files).
DEFAULT_FORMATS = ("keras", "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8", "onnx")
#: Formats only a QAT / pruning run writes (``keras-dpn export --qat --prune``): benchmarked
#: from an export folder that holds them, never exported here.
FOUND_ONLY = ("tflite_qat", "tflite_pruned")
JSON_FILE = "benchmark.json"
MARKDOWN_FILE = "benchmark.md"
EXPORT_SUBDIR = "export"

#: Settings of a full run and of ``--quick`` (CI: seconds, not minutes).
FULL = dict(warmup=3, repeats=20, batch_size=32, batch_repeats=5, max_images=None,
            matmul_seconds=1.0, calibration_crops=64, input_size=(256, 192))
QUICK = dict(warmup=1, repeats=5, batch_size=8, batch_repeats=2, max_images=3,
             matmul_seconds=0.1, calibration_crops=8, input_size=(64, 48))

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample_annotations():
    """``(annotation_file, image_dir)`` of the bundled COCO sample.

    ``sample_data/coco`` of a checkout, else the copy a built wheel carries in
    ``keras_dpn/core/assets/sample_data/`` (the places ``keras-dpn train`` looks).
    """
    for root in (os.path.join(os.path.dirname(_PACKAGE_DIR), "sample_data"),
                 os.path.join(_PACKAGE_DIR, "core", "assets", "sample_data")):
        annotations = os.path.join(root, "coco", "annotations", "person_keypoints_sample.json")
        if os.path.isfile(annotations):
            return annotations, os.path.join(root, "coco", "images")
    return None, None


# ---------------------------------------------------------------------------
# What is benchmarked: the model and the files that already exist.


class Source:
    """A resolved benchmark input.

    Attributes:
        kind: ``"model"``, ``"keras_file"``, ``"run"``, ``"preset"`` or ``"export"``.
        name: a short name for the default output folder.
        describe: one line for the report.
        existing: ``format -> path`` of files that already exist (reused).
        spec: the keypoint set (its sigmas score the AP).
        build: a no-argument callable returning the float32 Keras model.
    """

    def __init__(self, kind, name, describe, existing, spec, build):
        self.kind, self.name, self.describe = kind, name, describe
        self.existing, self.spec, self.build = dict(existing), spec, build


def _export_folder_files(folder):
    """``format -> path`` listed by an export folder's ``metadata.json`` (present files only)."""
    try:
        with open(os.path.join(folder, "metadata.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"The export folder's metadata.json cannot be read ({e}). "
                         f"Received: source={folder!r}") from None
    listed = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(listed, dict):
        raise ValueError(f"The export folder's metadata.json holds no `files` table. "
                         f"Received: source={folder!r}")
    return {fmt: os.path.join(folder, name) for fmt, name in listed.items()
            if fmt in BENCH_FORMATS and os.path.exists(os.path.join(folder, name))}


def _float32_model(build):
    from keras_dpn.training.precision import precision_policy

    def built():
        # Deployed files are float32; a mixed-precision run's weights are float32 already.
        with precision_policy("float32"):
            return build()
    return built


def resolve_source(source, weights=None, input_size=None):
    """Reads and checks what ``source`` names, without building the model.

    Args:
        source: a registered model name (``DPN4_32``), a training run folder
            (``run_config.json`` and ``best.weights.h5``), a preset (folder,
            archive or registered ``ARCH.TAG``), a ``.keras`` file, or an
            export folder (``keras-dpn export``'s, with ``metadata.json``).
        weights: for a model name: a weights tag, file or preset; for a run:
            another weights file than ``best.weights.h5``.
        input_size: for a model name: ``(H, W)``.

    Returns:
        A :class:`Source`.

    Raises:
        ValueError: one line naming what is wrong with ``source``.
    """
    from keras_dpn.core.keypoints import get_keypoint_spec
    from keras_dpn.hub import presets
    from keras_dpn.hub import weights as weights_lib
    from keras_dpn.inference.estimator import load_keras_file, recorded_keypoint_spec

    text = os.fspath(source)
    name = os.path.basename(os.path.normpath(text)) or text
    is_name = not os.path.exists(text)
    if (weights is not None or input_size is not None) and not is_name and not (
            weights is not None and input_size is None and os.path.isfile(
                os.path.join(text, "run_config.json"))):
        raise ValueError("--weights and --input-size apply to a model name (--weights also to "
                         f"a run folder). Received: source={text!r}")

    def default_spec(num_keypoints):
        return get_keypoint_spec({17: "coco", 16: "mpii"}.get(num_keypoints, "coco"))

    if os.path.isdir(text):
        if os.path.isfile(os.path.join(text, presets.CONFIG_FILE)):
            preset = presets.read_preset(text)
            return _preset_source(preset, name)
        if os.path.isfile(os.path.join(text, "run_config.json")):
            return _run_source(text, name, weights)
        if os.path.isfile(os.path.join(text, "metadata.json")):
            existing = _export_folder_files(text)
            keras_file = existing.get("keras")
            if keras_file is None:
                raise ValueError("The export folder holds no model.keras (its MACs and the "
                                 f"Keras row need it). Received: source={text!r}")
            recorded = recorded_keypoint_spec(text)
            spec = recorded[0] if recorded else None
            return Source("export", name, f"export folder {os.path.abspath(text)}", existing,
                          spec, lambda: load_keras_file(keras_file, arg_name="source"))
        raise ValueError("The folder is no run folder (run_config.json), preset (config.json) "
                         f"or export folder (metadata.json). Received: source={text!r}")
    if os.path.isfile(text):
        if text.endswith(presets.ARCHIVE_SUFFIXES):
            return _preset_source(presets.get_preset(text), name.split(".")[0])
        if not text.endswith(".keras"):
            raise ValueError("A file source must be a .keras model or a preset archive "
                             f"({', '.join(presets.ARCHIVE_SUFFIXES)}). Received: source={text!r}")
        recorded = recorded_keypoint_spec(text)
        return Source("keras_file", os.path.splitext(name)[0], f"Keras file {text}",
                      {}, recorded[0] if recorded else None,
                      lambda: load_keras_file(text, arg_name="source"))
    if weights_lib.is_registered(text) or text.startswith(("http://", "https://", "file://")):
        return _preset_source(presets.get_preset(text), text.replace(".", "_").lower())
    from keras_dpn.models.registry import MODELS, model_info
    if text not in MODELS:
        raise ValueError(f"Not a registered model name ({', '.join(sorted(MODELS))}), nor a run "
                         "folder, preset or export folder that exists. "
                         f"Received: source={text!r}")
    builder = model_info(text, arg_name="source").constructor
    kwargs = {}
    if input_size is not None:
        kwargs["input_shape"] = (int(input_size[0]), int(input_size[1]), 3)
    if weights is not None:
        from keras_dpn.hub import pretrained
        pretrained.validate_weights_argument(text, weights)
        kwargs["weights"] = weights
    shape = kwargs.get("input_shape")
    described = (f"{text} {'at %dx%d ' % shape[:2] if shape else ''}"
                 f"with {'weights ' + str(weights) if weights else 'random weights (seed 0)'}")

    def build():
        import keras
        keras.utils.set_random_seed(0)
        return builder(**kwargs)
    return Source("model", text.lower(), described, {}, None, _float32_model(build))


def _preset_source(preset, name):
    from keras_dpn.hub import presets
    existing = {fmt: path for fmt, path in preset.export_files.items() if fmt in BENCH_FORMATS}
    existing.pop("keras", None)  # the preset's own weights are the Keras row
    return Source("preset", name, f"preset {preset.path}", existing, preset.keypoint_spec(),
                  _float32_model(lambda: presets.from_preset(preset)))


def _run_source(run_dir, name, weights):
    from keras_dpn.hub import publish
    from keras_dpn.training import run_folder
    config = run_folder.read_run_config(run_dir)
    weights_file = weights or os.path.join(run_dir, run_folder.BEST_WEIGHTS)
    if not os.path.isfile(weights_file):
        raise ValueError(f"The run's weights file does not exist (the run kept no best epoch; "
                         f"name one with --weights). Received: weights={weights_file!r}")
    # publish's checks: a builder that exists, a consistent keypoint set and export folder.
    variant, arguments, spec, export_dir = publish.check_run(run_dir, config, weights_file)
    existing = {}
    if export_dir is not None and weights is None:  # the run's export holds its best weights
        existing = _export_folder_files(export_dir)
        existing.pop("keras", None)
    return Source("run", name, f"run {os.path.abspath(run_dir)} ({variant}, {weights_file})",
                  existing, spec,
                  lambda: publish.build_and_verify(run_dir, variant, arguments, weights_file,
                                                    config))


# ---------------------------------------------------------------------------
# Checks before the first long step.


def _positive_int(value, option):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive integer. Received: {option}={value!r}")
    return value


def choose_formats(requested, source):
    """The rows: ``requested`` (checked) or the default for ``source``.

    Raises:
        ValueError: an unknown format, or a QAT / pruned file the source does not hold.
    """
    if requested is None:
        if source.kind == "export":
            return tuple(f for f in BENCH_FORMATS if f in source.existing)
        found = tuple(f for f in FOUND_ONLY if f in source.existing)
        return tuple(f for f in BENCH_FORMATS if f in DEFAULT_FORMATS or f in found)
    requested = tuple(requested)
    unknown = [f for f in requested if f not in BENCH_FORMATS]
    if unknown or not requested:
        raise ValueError(f"--formats takes some of {' '.join(BENCH_FORMATS)}. "
                         f"Received: --formats {' '.join(requested)}")
    absent = [f for f in requested if f in FOUND_ONLY and f not in source.existing]
    if absent:
        raise ValueError(f"{' '.join(absent)}: written by `keras-dpn export --qat / --prune`; "
                         "benchmark an export folder that holds them. "
                         f"Received: --formats {' '.join(requested)}")
    return tuple(f for f in BENCH_FORMATS if f in requested)  # table order, no repeats


def check_output(output, overwrite, exporting):
    """Refuses an output folder that cannot be written or holds a benchmark (without overwrite)."""
    from keras_dpn.core import io_utils
    output = os.path.abspath(output)
    if os.path.lexists(output) and not os.path.isdir(output):
        raise ValueError(f"--output exists and is not a folder. Received: --output={output!r}")
    io_utils.check_output_folder(output, "--output")
    taken = [n for n in (JSON_FILE, MARKDOWN_FILE) + ((EXPORT_SUBDIR,) if exporting else ())
             if os.path.lexists(os.path.join(output, n))]
    if taken and not overwrite:
        raise FileExistsError(f"The output folder already holds {', '.join(taken)}: "
                              f"{output}. Pass --overwrite to replace them.")
    return output


# ---------------------------------------------------------------------------
# Timing (the child process).


def _stats_ms(times):
    ms = 1e3 * np.asarray(times, np.float64)
    return dict(median_ms=float(np.median(ms)), p25_ms=float(np.percentile(ms, 25)),
                p75_ms=float(np.percentile(ms, 75)), min_ms=float(ms.min()),
                max_ms=float(ms.max()), calls=int(ms.size))


def _time_calls(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_gflops(n, seconds, use_tensorflow=False):
    """Float32 ``n x n`` matmul rate (GFLOP/s) of numpy and, if asked, TensorFlow.

    The rate of the fastest call over ``seconds``: the machine's practical
    peak, which other processes' load can only lower. The thread count is
    the process's (set before the libraries start).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    calls = []
    if use_tensorflow:
        import tensorflow as tf
        ta, tb = tf.constant(a), tf.constant(b)
        matmul = tf.function(lambda: tf.matmul(ta, tb))
        calls.append(("tensorflow", lambda: matmul().numpy()))
    calls.insert(0, ("numpy", lambda: a @ b))
    out = {}
    for name, fn in calls:
        fn()
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = flops / min(times) / 1e9
    return out


def _worker_env(threads):
    """Environment of a timing child: every thread pool sized before it starts."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS"):
        env[var] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads == 1:
        # JAX's CPU client: one thread for the Eigen ops (its only thread switch).
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(_PACKAGE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                           if p])
    return env


def run_worker(job):
    """Times every row of ``job`` at ``job["threads"]`` threads (in a child process).

    Args:
        job: dict with ``threads``, ``rows`` (``[{"format", "path"}]``),
            ``input_size``, ``warmup``, ``repeats``, ``batch_size`` (0: no
            batch timing), ``batch_repeats``, ``matmul_n``, ``matmul_seconds``.

    Returns:
        dict ``matmul`` (GFLOP/s per library) and ``rows`` (``format ->``
        ``{"batch1": stats, "batch": stats}`` or ``{"error": message}``).
    """
    threads = int(job["threads"])
    from keras_dpn.core import optional as _optional
    backend = _optional.backend()
    needs_tf = any(r["format"] == "saved_model" or (r["format"] == "keras"
                                                     and backend == "tensorflow")
                   for r in job["rows"])
    if needs_tf:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if backend == "torch":
        import torch
        torch.set_num_threads(threads)
    from keras_dpn.inference.estimator import load_backend

    def progress(text):
        print(f"PROGRESS {text}", flush=True)

    progress(f"{threads} thread(s): fp32 matmul {job['matmul_n']}^3")
    result = dict(matmul=matmul_gflops(job["matmul_n"], job["matmul_seconds"], needs_tf),
                  rows={})
    h, w = job["input_size"]
    rng = np.random.default_rng(0)
    batch = max(1, int(job["batch_size"]))
    # Normalized-crop statistics: zeros could take shortcuts in some kernels.
    x = rng.standard_normal((batch, h, w, 3)).astype(np.float32)
    for row in job["rows"]:
        fmt = row["format"]
        progress(f"{threads} thread(s): {fmt}")
        runner = None
        try:
            runner = load_backend(row["path"], num_threads=threads)
            timed = dict(batch1=_stats_ms(_time_calls(lambda: runner.run(x[:1]), job["warmup"],
                                                      job["repeats"])))
            if job["batch_size"]:
                timed["batch"] = _stats_ms(_time_calls(lambda: runner.run(x), 1,
                                                       job["batch_repeats"]))
            result["rows"][fmt] = timed
        except (ValueError, RuntimeError) as e:  # a runtime that refuses the file
            result["rows"][fmt] = dict(error=(str(e).splitlines() or [type(e).__name__])[0])
        del runner
    return result


def _run_child(job, verbose):
    """Runs :func:`run_worker` in a fresh interpreter; streams its progress lines."""
    with tempfile.TemporaryDirectory(prefix="keras_dpn_benchmark_") as tmp:
        job_file = os.path.join(tmp, "job.json")
        with open(job_file, "w") as f:
            json.dump(job, f)
        log = os.path.join(tmp, "stderr.txt")
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "keras_dpn.deploy.benchmark", "--worker", job_file],
                stdout=subprocess.PIPE, stderr=err, text=True, env=_worker_env(job["threads"]))
            result = None
            for line in proc.stdout:
                if line.startswith("PROGRESS ") and verbose:
                    print(f"  timing {line[len('PROGRESS '):].rstrip()}", flush=True)
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
            proc.wait()
        if proc.returncode != 0 or result is None:
            with open(log) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"The timing process at {job['threads']} thread(s) failed "
                               f"(exit status {proc.returncode}):\n{tail}")
    return result


# ---------------------------------------------------------------------------
# The report.


def _size_bytes(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path)
                   for f in names)
    return os.path.getsize(path)


def machine_info():
    """CPU model, core counts, load and package versions, for the report."""
    from importlib import metadata
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for dist in ("keras-dpn", "keras", "tensorflow", "jax", "torch", "numpy", "onnxruntime",
                 "ai-edge-litert", "tf2onnx", "onnx", "pycocotools"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=usable,
                platform=platform.platform(), versions=versions,
                load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)


def _latency_cell(stats):
    if not stats:
        return "-"
    return f"{stats['median_ms']:.1f} ({stats['p25_ms']:.1f}-{stats['p75_ms']:.1f})"


def format_table(rows, threads):
    """The markdown table of :func:`benchmark`'s rows.

    Args:
        rows: row dicts (``format``, ``file``, ``size_bytes``, ``AP``,
            ``latency`` ``{threads: stats}``, ``throughput``, ``gflops``,
            ``matmul_fraction``, ``error``).
        threads: the thread counts timed, e.g. ``[1, 2]`` (the last one is
            the throughput's).

    Returns:
        The table as one string.
    """
    many = threads[-1]
    head = (["format", "file", "MB", "AP"] + [f"b1 ms, {t} thr" for t in threads]
            + [f"img/s, {many} thr", "GFLOP/s", "of matmul"])
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        size = "-" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f}"
        ap = "-" if r.get("AP") is None else f"{r['AP']:.4f}"
        cells = [r["format"], r.get("file") or "-", size, ap]
        cells += [_latency_cell((r.get("latency") or {}).get(t)) for t in threads]
        cells.append("-" if r.get("throughput") is None else f"{r['throughput']:.1f}")
        cells.append("-" if r.get("gflops") is None else f"{r['gflops']:.1f}")
        cells.append("-" if r.get("matmul_fraction") is None
                     else f"{100 * r['matmul_fraction']:.0f}%")
        if r.get("error"):
            cells[-1] += f" (failed: {r['error']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(report):
    m = report["machine"]
    mm = ", ".join(f"{t} thread(s) {max(v.values()):.1f} GFLOP/s"
                   for t, v in report["matmul_gflops"].items())
    settings = report["settings"]
    return "\n".join([
        f"# keras-dpn benchmark: {report['model']}",
        "",
        f"- Date: {report['date']}",
        f"- Command: `{report['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"load average {m['load_average'][0]:.1f} at start" if m.get("load_average") else
        f"- Machine: {m['cpu']}, {m['cores']} cores",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Keras backend: {report['backend']}; model: {report['gmacs']:.3f} GMACs per image "
        f"at {report['input_size'][0]}x{report['input_size'][1]}",
        f"- AP: {report['evaluated_on'] or 'not measured (--no-ap)'}",
        f"- fp32 matmul ({report['matmul_n']}^3, fastest call, the better of numpy and "
        f"TensorFlow): {mm}",
        f"- Latency: one model call on one crop, median (interquartile range) of "
        f"{settings['repeats']} calls after {settings['warmup']}; throughput: batch "
        f"{settings['batch_size']}, median of {settings['batch_repeats']}; "
        "GFLOP/s = 2 x MACs x images/s; 'of matmul' = that / the matmul rate at the same "
        "threads" + ("; QUICK mode (CI check, not a measurement)" if settings["quick"] else ""),
        "",
        report["table"],
        "",
    ])


def _settings(quick, threads, repeats, warmup, batch_size, max_images, input_size,
              annotations, images, ap):
    """The mode's settings with the overrides, checked: ``(settings, thread counts)``."""
    mode = dict(QUICK if quick else FULL)
    for key, value in (("repeats", repeats), ("warmup", warmup), ("batch_size", batch_size),
                       ("max_images", max_images)):
        if value is not None:
            mode[key] = value
    _positive_int(mode["repeats"], "--repeats")
    _positive_int(mode["batch_size"], "--batch-size")
    if mode["max_images"] is not None:
        _positive_int(mode["max_images"], "--max-images")
    if isinstance(mode["warmup"], bool) or not isinstance(mode["warmup"], int) \
            or mode["warmup"] < 0:
        raise ValueError(f"--warmup must be an integer >= 0. Received: --warmup={mode['warmup']!r}")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    many = _positive_int(usable if threads is None else threads, "--threads")
    # The builder checks the network stride when it builds (first step, seconds).
    if input_size is not None and (len(input_size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_size)):
        raise ValueError("--input-size takes two positive integers H W. "
                         f"Received: --input-size {' '.join(map(str, input_size))}")
    if (annotations is None) != (images is None):
        raise ValueError("--annotations and --images go together. "
                         f"Received: --annotations={annotations!r}, --images={images!r}")
    if not ap and (annotations is not None or max_images is not None):
        raise ValueError("--no-ap measures no AP: leave out --annotations / --max-images. "
                         f"Received: --annotations={annotations!r}, --max-images={max_images!r}")
    return mode, sorted({1, many})


def _evaluation_data(annotations, images, spec, max_images):
    """The checked :class:`~keras_dpn.deploy.export_eval.EvaluationSet` of the AP column."""
    from keras_dpn.deploy import export_eval
    if annotations is None:
        annotations, images = sample_annotations()
        if annotations is None:
            raise ValueError("The bundled COCO sample is not installed here: give "
                             "--annotations and --images, or --no-ap. Received: "
                             "--annotations=None")
    if spec is None:
        from keras_dpn.core.keypoints import get_keypoint_spec
        spec = get_keypoint_spec("coco")
    return export_eval.evaluation_set(annotations, images, keypoints=spec, max_images=max_images)


def _export_missing(model, src, formats, export_dir, mode, overwrite, verbose):
    """Writes ``formats`` into ``export_dir`` (atomically); returns ``format -> path``."""
    others = tuple(f for f in formats if f != "keras")
    if not others:  # the Keras row alone: its .keras file
        from keras_dpn.core import io_utils
        with io_utils.atomic_directory(export_dir, overwrite=overwrite) as tmp:
            model.save(os.path.join(tmp, "model.keras"))
        return {"keras": os.path.join(export_dir, "model.keras")}
    from keras_dpn.deploy import calibration, export
    (in_h, in_w) = tuple(int(s) for s in model.input_shape[1:3])
    calib = (calibration.default_crops((in_h, in_w), mode["calibration_crops"])
             if "tflite_int8" in others else None)
    written = export.export_model(model, export_dir, formats=others, keypoints=src.spec,
                                  representative_data=calib, overwrite=overwrite,
                                  verbose=verbose)
    return {f: p for f, p in written.items() if f in formats}


def _measure_ap(rows, model, data, threads, verbose):
    """Adds ``AP``, ``AP50``, ``AP75``, ``AR`` (or ``error``) to each row."""
    from keras_dpn.deploy import export_eval
    from keras_dpn.evaluation.coco import COCOEvaluator
    evaluator = COCOEvaluator(data.annotation_file, data.spec)  # the set's own sigmas
    for row in rows:
        target = model if row["format"] == "keras" else row["path"]
        try:
            found = export_eval.evaluate_file(target, data, num_threads=threads,
                                              evaluator=evaluator, verbose=verbose,
                                              desc=row["format"])
            row.update({k: found[k] for k in ("AP", "AP50", "AP75", "AR")})
        except (ValueError, RuntimeError) as e:  # a broken file, a runtime that refuses it
            row["error"] = (str(e).splitlines() or [type(e).__name__])[0]
        if verbose:
            shown = f"AP {row['AP']:.4f}" if "AP" in row else f"FAILED: {row['error']}"
            print(f"  {row['format']:<20} {shown}", flush=True)


def _time_rows(rows, threads, mode, input_size, matmul_n, say, verbose):
    """Times every row in one child per thread count; returns ``threads -> matmul GFLOP/s``."""
    many = threads[-1]
    matmul = {}
    for t in threads:
        say(f"Timing at {t} thread(s) (child process)")
        job = dict(threads=t, rows=[dict(format=r["format"], path=r["path"]) for r in rows],
                   input_size=list(input_size), warmup=mode["warmup"], repeats=mode["repeats"],
                   batch_size=mode["batch_size"] if t == many else 0,
                   batch_repeats=mode["batch_repeats"], matmul_n=matmul_n,
                   matmul_seconds=mode["matmul_seconds"])
        timed = _run_child(job, verbose)
        matmul[t] = timed["matmul"]
        for row in rows:
            got = timed["rows"].get(row["format"])
            if got is None:
                continue
            if "error" in got:
                row["error"] = "; ".join(dict.fromkeys([row.get("error") or got["error"],
                                                        got["error"]]))
                continue
            row.setdefault("latency", {})[t] = got["batch1"]
            if "batch" in got:
                row["throughput"] = mode["batch_size"] / (got["batch"]["median_ms"] / 1e3)
                row["batch"] = got["batch"]
    return matmul


def _add_rates(rows, macs, matmul, many):
    """GFLOP/s (2 x MACs per image) and its fraction of the matmul rate, per row."""
    peak = {t: max(v.values()) for t, v in matmul.items()}
    for row in rows:
        if row.get("throughput"):
            row["gflops"] = 2 * macs * row["throughput"] / 1e9
            row["matmul_fraction"] = row["gflops"] / peak[many]
        for t, stats in (row.get("latency") or {}).items():
            stats["gflops"] = 2 * macs / (stats["median_ms"] / 1e3) / 1e9
            stats["matmul_fraction"] = stats["gflops"] / peak[t]


def _write_report(output, report):
    from keras_dpn.core import io_utils
    # JSON object keys are strings: thread counts as "1", "2".
    for row in report["rows"]:
        if "latency" in row:
            row["latency"] = {str(t): s for t, s in row["latency"].items()}
    with io_utils.atomic_file(os.path.join(output, JSON_FILE), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")
    with io_utils.atomic_file(os.path.join(output, MARKDOWN_FILE), "w") as f:
        f.write(_markdown(report))


def benchmark(source, output, formats=None, threads=None, quick=False, weights=None,
              input_size=None, annotations=None, images=None, max_images=None, ap=True,
              overwrite=False, repeats=None, warmup=None, batch_size=None, verbose=True,
              command=None):
    """Benchmarks every deployed format of one model; writes and returns the report.

    Every argument and path is checked before the first long step (building,
    exporting, evaluating, timing).

    Args:
        source: see :func:`resolve_source`.
        output: the folder for ``benchmark.json``, ``benchmark.md`` and the
            files exported (``export/``).
        formats: rows, a subset of :data:`BENCH_FORMATS` (default: see
            :func:`choose_formats`).
        threads: the many-thread count (default: the usable cores); latency is
            timed at 1 and at this count, throughput at this count.
        quick: the CI settings (:data:`QUICK`): a 64x48 model for a model
            name, 3 sample images, few repeats, a small batch.
        weights, input_size: see :func:`resolve_source`.
        annotations, images: COCO keypoint annotations and their image folder
            for the AP (default: the bundled sample); the keypoint set must be
            the model's.
        max_images: AP on the first N images only.
        ap: measure the AP.
        overwrite: replace an earlier benchmark in ``output``.
        repeats, warmup, batch_size: override the mode's timing settings.
        verbose: progress lines.
        command: the command line recorded in the report.

    Returns:
        The report dict (also in ``output/benchmark.json``).

    Raises:
        ValueError, FileExistsError: a bad argument, one line naming it.
    """
    from keras_dpn.core import optional as _optional
    mode, thread_counts = _settings(quick, threads, repeats, warmup, batch_size, max_images,
                                    input_size, annotations, images, ap)
    many = thread_counts[-1]
    quick_size = mode["input_size"] if quick and not os.path.exists(source) else None
    src = resolve_source(source, weights, input_size if input_size is not None else quick_size)
    rows_formats = choose_formats(formats, src)
    if not rows_formats:
        raise ValueError(f"The export folder holds none of {' '.join(BENCH_FORMATS)}. "
                         f"Received: source={source!r}")
    to_export = [f for f in rows_formats if f not in src.existing]
    output = check_output(output, overwrite, bool(to_export))
    export_dir = os.path.join(output, EXPORT_SUBDIR)
    if to_export and any(os.path.abspath(p).startswith(export_dir + os.sep)
                         for p in src.existing.values()):
        raise ValueError("--output/export would replace the export folder being benchmarked; "
                         f"choose another --output. Received: --output={output!r}")
    if any(f != "keras" for f in to_export):
        _optional.tensorflow("Exporting SavedModel / TFLite / ONNX files for the benchmark")
        _optional.require_tensorflow_backend(
            "Exporting SavedModel / TFLite / ONNX files for the benchmark",
            hint="Run with KERAS_BACKEND=tensorflow, or benchmark an export folder.")
    elif "saved_model" in rows_formats:
        _optional.tensorflow("Timing a SavedModel (leave saved_model out of --formats)")
    data = _evaluation_data(annotations, images, src.spec, mode["max_images"]) if ap else None

    started = time.time()
    machine = machine_info()  # the load average before this run adds to it
    steps = 3 + len(thread_counts) + (1 if to_export else 0)
    step = [0]

    def say(text):
        step[0] += 1
        if verbose:
            print(f"[{step[0]}/{steps}] {text} ({time.time() - started:.0f} s)", flush=True)

    say(f"Building {src.describe}")
    model = src.build()
    import keras
    from keras_dpn.models.analysis import count_macs
    in_size = tuple(int(s) for s in model.input_shape[1:3])
    macs = count_macs(model)
    files = dict(src.existing)
    if to_export:
        say(f"Exporting {', '.join(to_export)} -> {export_dir}")
        files.update(_export_missing(model, src, to_export, export_dir, mode, overwrite,
                                     verbose))
    rows = [dict(format=f, file=os.path.relpath(files[f], output)
                 if os.path.abspath(files[f]).startswith(output + os.sep) else files[f],
                 path=os.path.abspath(files[f]), size_bytes=_size_bytes(files[f]))
            for f in rows_formats]
    if data is not None:
        say(f"COCO AP of {len(rows)} format(s) on {data.describe()}")
        _measure_ap(rows, model, data, many, verbose)
    else:
        say("AP not measured (--no-ap)")
    del model
    keras.backend.clear_session()

    # A matrix of about the model's multiply-accumulates per image, within 128..2048.
    matmul_n = int(min(2048, max(128, 64 * round(macs ** (1 / 3) / 64))))
    matmul = _time_rows(rows, thread_counts, mode, in_size, matmul_n, say, verbose)
    say("Writing the report")
    _add_rates(rows, macs, matmul, many)
    table = format_table(rows, thread_counts)
    report = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=command or f"keras_dpn.deploy.benchmark.benchmark({source!r}, {output!r})",
        model=src.describe, source=os.fspath(source), source_kind=src.kind,
        backend=keras.backend.backend(), input_size=list(in_size), macs=int(macs),
        gmacs=macs / 1e9, threads=thread_counts,
        evaluated_on=data.describe() if data is not None else None,
        keypoints=data.spec.name if data is not None else None,
        matmul_n=matmul_n, matmul_gflops={str(t): v for t, v in matmul.items()},
        machine=machine, seconds=time.time() - started,
        settings=dict(mode, quick=bool(quick), input_size=list(in_size)), rows=rows,
        table=table)
    _write_report(output, report)
    if verbose:
        print(f"\n{src.describe}; {report['gmacs']:.3f} GMACs; AP on "
              f"{report['evaluated_on'] or '-'}\n\n{table}\n\n"
              f"-> {os.path.join(output, MARKDOWN_FILE)}, {JSON_FILE} "
              f"({report['seconds']:.0f} s)", flush=True)
    return report


def add_arguments(parser):
    """The ``keras-dpn benchmark`` options (shared by the CLI and ``python -m``)."""
    parser.add_argument("source", help="a registered model name (e.g. DPN4_32: random weights "
                        "unless --weights), a training run folder, a preset (folder, archive "
                        "or ARCH.TAG), a .keras file, or an export folder (its files are used)")
    parser.add_argument("--formats", nargs="+", metavar="FORMAT",
                        help=f"rows, some of: {' '.join(BENCH_FORMATS)} (default: "
                             f"{' '.join(DEFAULT_FORMATS)}; an export folder: the files it holds)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="the many-thread column (default: the usable cores); latency is "
                             "also timed at 1 thread")
    parser.add_argument("--output", metavar="DIR",
                        help="benchmark.md, benchmark.json, export/ (default: "
                             "runs/benchmark/<source name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier benchmark in --output")
    parser.add_argument("--quick", action="store_true",
                        help="CI mode: a 64x48 model for a model name, 3 sample images, "
                             "5 timed calls, batch 8 (seconds, not a measurement)")
    parser.add_argument("--weights", help="for a model name: a weights tag, file or preset; "
                                          "for a run: instead of best.weights.h5")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="for a model name (default 256 192; --quick 64 48)")
    parser.add_argument("--annotations", help="COCO keypoint annotations for the AP "
                                              "(default: the bundled sample), with --images")
    parser.add_argument("--images", help="the image folder of --annotations")
    parser.add_argument("--max-images", type=int, metavar="N",
                        help="AP on the first N images only (default: all; --quick 3)")
    parser.add_argument("--no-ap", action="store_true", help="skip the AP column")
    parser.add_argument("--repeats", type=int, help="timed batch-1 calls (20; --quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (3; --quick 1)")
    parser.add_argument("--batch-size", type=int, help="throughput batch (32; --quick 8)")


def run_from_args(args, command=None):
    """``keras-dpn benchmark`` after parsing: returns the report."""
    output = args.output
    if output is None:
        name = os.path.basename(os.path.normpath(os.fspath(args.source))) or "model"
        output = os.path.join("runs", "benchmark", name.replace(".", "_").lower())
    return benchmark(args.source, output, formats=args.formats, threads=args.threads,
                     quick=args.quick, weights=args.weights,
                     input_size=tuple(args.input_size) if args.input_size else None,
                     annotations=args.annotations, images=args.images,
                     max_images=args.max_images, ap=not args.no_ap, overwrite=args.overwrite,
                     repeats=args.repeats, warmup=args.warmup, batch_size=args.batch_size,
                     command=command)


def _worker_main(job_file):
    with open(job_file) as f:
        job = json.load(f)
    result = run_worker(job)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"] and len(sys.argv) == 3:
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit(f"usage: python -m keras_dpn.deploy.benchmark --worker JOB.json "
             f"(the command is `keras-dpn benchmark`); received {shlex.join(sys.argv[1:])}")
