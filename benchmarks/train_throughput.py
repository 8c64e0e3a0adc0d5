"""Training throughput: examples/s of DPN4_32, DPN4_64 and HRNet-W32, and how much of the machine it uses.

For each model and mode (``float32``, ``xla`` = float32 with an XLA-compiled
step, ``mixed_bfloat16``) it times ``model.train_on_batch`` (Adam +
JointsMSE, the recipe's step) on random 256x192 batches, after one warm-up
step that pays for tracing / compilation (reported separately). The achieved
GFLOP/s counts a training step as 3 forward passes (forward, and a backward
pass that costs about twice the forward), ``2 x 3 x MACs`` per example with
the MACs of :func:`keras_dpn.analysis.count_macs`, and is given as a fraction
of the fp32 ``tf.matmul`` rate of this machine measured in the same run
(4096 x 4096 matrices), the practical peak of a dense fp32 kernel here.

Usage::

    python benchmarks/train_throughput.py                 # markdown table, a few minutes on 2 cores
    python benchmarks/train_throughput.py --models DPN4_32 --modes float32 --steps 5
    python benchmarks/train_throughput.py --json out.json
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ("DPN4_32", "DPN4_64", "HRNetW32")
MODES = ("float32", "xla", "mixed_bfloat16")


def matmul_gflops(dtype="float32", n=4096, seconds=3.0):
    """Sustained ``tf.matmul`` rate of an ``n x n`` product, GFLOP/s."""
    import tensorflow as tf
    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    tf.matmul(a, b).numpy()  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        c = tf.matmul(a, b)
        reps += 1
    c.numpy()
    return 2.0 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def time_training(name, mode, batch_size, steps, max_seconds, input_size=(256, 192)):
    """Times ``train_on_batch``; returns a result dict (or None if the model is missing)."""
    import keras

    import keras_dpn
    from keras_dpn.losses import JointsMSE

    constructor = getattr(keras_dpn, name, None)
    if constructor is None:
        return None
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if mode == "mixed_bfloat16" else "float32")
    try:
        model = constructor(input_shape=(*input_size, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile(keras.optimizers.Adam(1e-3), JointsMSE(), jit_compile=(mode == "xla"))
    h, w = model.output_shape[1:3]
    k = model.output_shape[-1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, *input_size, 3)).astype("float32")
    y = rng.uniform(size=(batch_size, h, w, k)).astype("float32")
    sw = np.ones((batch_size, k), "float32")
    start = time.perf_counter()
    model.train_on_batch(x, y, sample_weight=sw)
    warmup = time.perf_counter() - start
    times = []
    while len(times) < steps and (not times or sum(times) < max_seconds):
        start = time.perf_counter()
        model.train_on_batch(x, y, sample_weight=sw)
        times.append(time.perf_counter() - start)
    step = float(np.median(times))
    from keras_dpn.analysis import count_macs
    macs = count_macs(model)
    return {"model": name, "mode": mode, "batch_size": batch_size, "steps_timed": len(times),
            "warmup_s": round(warmup, 2), "step_s": round(step, 4),
            "examples_per_s": batch_size / step, "gmacs_per_example": macs / 1e9,
            "train_gflops": 6.0 * macs * batch_size / step / 1e9,
            "params": model.count_params()}


def markdown(rows, peak_fp32, peak_bf16):
    lines = [
        f"fp32 matmul peak (tf.matmul 4096^2, same run): **{peak_fp32:.0f} GFLOP/s**; "
        f"bf16: {peak_bf16:.0f} GFLOP/s.",
        "",
        "| model | params | GMACs/example (fwd) | mode | warm-up s | step s (batch) | "
        "examples/s | train GFLOP/s | % of fp32 matmul |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['gmacs_per_example']:.2f} | "
            f"{r['mode']} | {r['warmup_s']:.1f} | {r['step_s']:.2f} ({r['batch_size']}) | "
            f"{r['examples_per_s']:.2f} | {r['train_gflops']:.1f} | "
            f"{100 * r['train_gflops'] / peak_fp32:.0f}% |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--modes", nargs="*", default=MODES, choices=MODES)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and mode")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop timing a configuration after this many seconds (>= 1 step)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import tensorflow as tf
    peak_fp32 = matmul_gflops("float32")
    peak_bf16 = matmul_gflops("bfloat16")
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TF {tf.__version__}, devices {devices}", flush=True)
    rows = []
    for name in args.models:
        for mode in args.modes:
            r = time_training(name, mode, args.batch_size, args.steps, args.max_seconds)
            if r is None:
                print(f"skip {name}: not in keras_dpn", flush=True)
                break
            print(f"{name:9s} {mode:15s} {r['examples_per_s']:7.2f} examples/s "
                  f"(step {r['step_s']:.2f} s, warm-up {r['warmup_s']:.1f} s)", flush=True)
            rows.append(r)
    table = markdown(rows, peak_fp32, peak_bf16)
    print("\n" + table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_fp32_gflops": peak_fp32, "peak_bf16_gflops": peak_bf16,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
