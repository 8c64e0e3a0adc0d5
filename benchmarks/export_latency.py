"""Batch-1 CPU latency of every deployed form, with the machine's matmul rate.

Superseded by ``keras-dpn benchmark MODEL`` (:mod:`keras_dpn.deploy.benchmark`,
docs/guide/benchmark.md): the same rows and the matmul fraction, plus size, AP,
spread and throughput, for one model per run. Kept because docs/benchmarks.md
("Latency") quotes its table, which includes Keras with XLA and three models.

For DPN4_32, DPN4_64 and the HRNet-W32 peer at 256x192 (fresh weights;
latency does not depend on their values) this exports TFLite fp32 / fp16 /
int8 (full integer) and ONNX, then times batch-1 inference with 1 and 2
threads in:

* Keras: ``tf.function(jit_compile=True)`` (XLA). TensorFlow fixes its thread
  pools at start-up, so each thread count runs in a child process;
* TFLite (LiteRT interpreter, XNNPACK, ``num_threads``);
* ONNX Runtime (``intra_op_num_threads``).

The fp32 matrix-multiply rate (1024x1024 ``tf.matmul``, same thread count,
same run) is measured alongside, so the table can say what fraction of the
machine each runtime reaches: achieved GFLOP/s = 2 x MACs / latency
(``keras_dpn.models.analysis.count_macs``).

Usage::

    python benchmarks/export_latency.py                 # all three models
    python benchmarks/export_latency.py --models DPN4_32 --runs 10

Prints a markdown table (median of ``--runs`` after ``--warmup`` calls).
Timings on a shared machine are noisy: the table records the load average.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

INPUT_SHAPE = (256, 192, 3)
MODELS = ("DPN4_32", "DPN4_64", "HRNetW32")


def _median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def keras_worker(name, threads, warmup, runs):
    """Child process: XLA latency and the matmul rate at ``threads`` threads."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras_dpn
    a = tf.random.normal([1024, 1024])
    b = tf.random.normal([1024, 1024])
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul_ms = _median_ms(lambda: matmul().numpy(), 3, 20)
    gflops = 2 * 1024 ** 3 / (matmul_ms / 1000.0) / 1e9
    result = dict(matmul_gflops=gflops)
    if name:
        model = keras_dpn.get_model(name, input_shape=INPUT_SHAPE)
        x = tf.constant(np.random.default_rng(0).normal(size=(1,) + INPUT_SHAPE), tf.float32)
        fn = tf.function(lambda t: model(t, training=False), jit_compile=True)
        start = time.perf_counter()
        fn(x).numpy()
        result["xla_compile_s"] = time.perf_counter() - start
        result["keras_xla_ms"] = _median_ms(lambda: fn(x).numpy(), warmup, runs)
    print("RESULT " + json.dumps(result), flush=True)


def _run_keras_child(name, threads, warmup, runs):
    cmd = [sys.executable, os.path.abspath(__file__), "--keras-worker", name or "",
           "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"keras worker failed:\n{proc.stderr[-3000:]}")


def _tflite_ms(path, threads, warmup, runs):
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.zeros(inp["shape"], inp["dtype"])

    def call():
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    return _median_ms(call, warmup, runs)


def _onnx_ms(path, threads, warmup, runs):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.zeros((1,) + INPUT_SHAPE, np.float32)
    name = sess.get_inputs()[0].name
    return _median_ms(lambda: sess.run(None, {name: x}), warmup, runs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration-crops", type=int, default=8)
    parser.add_argument("--keras-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_worker is not None:
        keras_worker(args.keras_worker or None, args.threads[0], args.warmup, args.runs)
        return 0

    import keras

    import keras_dpn
    from keras_dpn.deploy import calibration
    from keras_dpn.deploy import export
    try:
        from keras_dpn.models.analysis import count_macs
    except ImportError:  # the analysis module is optional here
        count_macs = None

    started = time.time()
    load = os.getloadavg()[0]
    crops = calibration.default_crops(INPUT_SHAPE[:2], args.calibration_crops)
    rows = []
    matmul = {}
    for threads in args.threads:
        matmul[threads] = _run_keras_child(None, threads, 0, 0)["matmul_gflops"]
    for name in args.models:
        keras.utils.set_random_seed(0)
        model = keras_dpn.get_model(name, input_shape=INPUT_SHAPE)
        macs = count_macs(model) if count_macs else None
        with tempfile.TemporaryDirectory(prefix="keras_dpn_bench_") as tmp:
            folder = os.path.join(tmp, name)
            t0 = time.time()
            files = export.export_model(
                model, folder, formats=("tflite_fp32", "tflite_fp16", "tflite_int8", "onnx"),
                representative_data=crops, verbose=False)
            export_s = time.time() - t0
            sizes = {fmt: os.path.getsize(p) / 1e6 for fmt, p in files.items()
                     if fmt.startswith("tflite") or fmt == "onnx"}
            for threads in args.threads:
                k = _run_keras_child(name, threads, args.warmup, args.runs)
                timings = {"Keras XLA": (k["keras_xla_ms"], None)}
                for fmt, label in (("tflite_fp32", "TFLite fp32"), ("tflite_fp16", "TFLite fp16"),
                                   ("tflite_int8", "TFLite int8")):
                    timings[label] = (_tflite_ms(files[fmt], threads, args.warmup, args.runs),
                                      sizes[fmt])
                timings["ONNX Runtime"] = (_onnx_ms(files["onnx"], threads, args.warmup,
                                                    args.runs), sizes["onnx"])
                for runtime, (ms, size) in timings.items():
                    gflops = 2 * macs / (ms / 1000.0) / 1e9 if macs else None
                    rows.append(dict(model=name, gmacs=macs / 1e9 if macs else None,
                                     runtime=runtime, threads=threads, ms=ms, size_mb=size,
                                     gflops=gflops, fraction=gflops / matmul[threads]
                                     if gflops else None, export_s=export_s))
        del model
        keras.backend.clear_session()

    print()
    print(f"Machine: {os.cpu_count()} CPU cores, load average {load:.1f} at start; "
          "fp32 matmul (1024^3, tf.matmul): "
          + ", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in matmul.items()))
    print()
    print("| model | GMACs | runtime | threads | latency ms | file MB | GFLOP/s | of matmul |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gmacs = f"{r['gmacs']:.2f}" if r["gmacs"] else "-"
        size = f"{r['size_mb']:.1f}" if r["size_mb"] else "-"
        gf = f"{r['gflops']:.1f}" if r["gflops"] else "-"
        frac = f"{100 * r['fraction']:.0f}%" if r["fraction"] else "-"
        print(f"| {r['model']} | {gmacs} | {r['runtime']} | {r['threads']} | {r['ms']:.1f} | "
              f"{size} | {gf} | {frac} |")
    print(f"\n(total {time.time() - started:.0f} s; int8 = full-integer; "
          "GFLOP/s = 2 x MACs / latency)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
