"""Training and inference throughput of DPN4_32, DPN4_64 and HRNet-W32 on each Keras backend.

For every installed backend (TensorFlow, JAX, PyTorch), in its own process
(Keras picks its backend at import), and for each model and mode
(``float32``, ``mixed_bfloat16``; opt-in: ``xla`` = TensorFlow with an
XLA-compiled step, ``compile`` = PyTorch with ``torch.compile``) it times:

* the training step, ``model.train_on_batch`` (Adam + JointsMSE, the
  recipes' step) on random 256x192 batches, after one warm-up step that pays
  for tracing / compilation (reported separately);
* inference, the compiled forward pass (``tf.function`` / ``jax.jit`` /
  ``torch.no_grad``) on the same batch.

Throughput is in examples/s and as a fraction of the dense matmul rate of
*that backend* measured in the same run (``tf.matmul`` / ``jnp.matmul`` /
``torch.matmul``, 4096 x 4096 float32), the practical peak of the machine
for that backend. A training step counts 3 forward passes (``6 x MACs`` FLOPs
per example), inference one (``2 x MACs``), with the MACs of
:func:`keras_dpn.models.analysis.count_macs`.

Usage::

    python benchmarks/train_throughput.py                     # every installed backend
    python benchmarks/train_throughput.py --backends jax torch --models DPN4_32 --steps 2
    python benchmarks/train_throughput.py --modes float32 xla --backends tensorflow
    python benchmarks/train_throughput.py --json out.json

``benchmarks/gpu_benchmark.py`` reuses these functions on a GPU.
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("DPN4_32", "DPN4_64", "HRNetW32")
MODES = ("float32", "mixed_bfloat16", "xla", "compile")
DEFAULT_MODES = ("float32", "mixed_bfloat16")


# ---------------------------------------------------------------------------
# One backend (the process's KERAS_BACKEND).


def _timed(fn, seconds, min_reps=1):
    """Calls ``fn`` (which must block until done) for ``seconds``; returns calls per second."""
    fn()  # warm-up
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return reps / (time.perf_counter() - start)


def matmul_gflops(dtype="float32", n=4096, seconds=3.0):
    """Sustained ``n x n`` matmul rate of the active Keras backend, GFLOP/s.

    The backend's own matmul on its default device (the GPU when it has one),
    synchronized every call.
    """
    import keras
    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    a_np = rng.normal(size=(n, n)).astype("float32")
    b_np = rng.normal(size=(n, n)).astype("float32")
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        a, b = jnp.asarray(a_np, dtype), jnp.asarray(b_np, dtype)
        product = jax.jit(jnp.matmul)
        rate = _timed(lambda: product(a, b).block_until_ready(), seconds)
    elif backend == "torch":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        a = torch.from_numpy(a_np).to(device=device, dtype=getattr(torch, dtype))
        b = torch.from_numpy(b_np).to(device=device, dtype=getattr(torch, dtype))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        rate = _timed(lambda: (torch.matmul(a, b), sync()), seconds)
    else:
        import tensorflow as tf
        a, b = tf.cast(a_np, dtype), tf.cast(b_np, dtype)
        rate = _timed(lambda: tf.matmul(a, b).numpy(), seconds)
    return 2.0 * n ** 3 * rate / 1e9


def _inference_fn(model, jit_compile):
    """The forward pass of the active backend, blocking until done.

    ``jax.jit`` on JAX; a ``tf.function`` (XLA if ``jit_compile``) on
    TensorFlow; eager ``torch.no_grad`` (``torch.compile`` if ``jit_compile``)
    on PyTorch.
    """
    import keras
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        return lambda x: forward(trainable, fixed, x).block_until_ready()
    if backend == "torch":
        import torch

        def forward(x):
            with torch.no_grad():
                y = model(x, training=False)
            if y.is_cuda:
                torch.cuda.synchronize()
            return y
        return torch.compile(forward) if jit_compile else forward
    import tensorflow as tf
    forward = tf.function(lambda x: model(x, training=False), jit_compile=bool(jit_compile))
    return lambda x: forward(x).numpy()


def time_model(name, mode, batch_size, steps=3, max_seconds=20.0, input_size=(256, 192),
               inference=True):
    """Times the training step and inference of one registered model; returns a dict.

    Args:
        name: a registered variant (``keras_dpn.MODELS``).
        mode: ``"float32"``, ``"mixed_bfloat16"``, ``"xla"`` (TensorFlow) or
            ``"compile"`` (PyTorch's ``torch.compile``).
        batch_size: examples per step.
        steps: timed steps (at least one), stopped early after ``max_seconds``.
        input_size: ``(height, width)``.
        inference: also time the forward pass.
    """
    import keras

    import keras_dpn
    from keras_dpn.training import trainer as training
    from keras_dpn.models.analysis import count_macs
    from keras_dpn.training.losses import JointsMSE

    backend = keras.backend.backend()
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    if (mode == "xla" and backend != "tensorflow") or (mode == "compile" and backend != "torch"):
        raise ValueError(f"Mode {mode!r} is for the {'tensorflow' if mode == 'xla' else 'torch'} "
                         f"backend. Received: mode={mode!r} on {backend!r}")
    constructor = keras_dpn.models.model_info(name).constructor  # ValueError listing the names
    with training.precision_policy("mixed_bfloat16" if mode == "mixed_bfloat16" else "float32"):
        model = constructor(input_shape=(*input_size, 3))
    # JAX always compiles (its step is XLA); TensorFlow: its oneDNN graph unless "xla".
    jit = True if mode in ("xla", "compile") else ("auto" if backend == "jax" else False)
    model.compile(keras.optimizers.Adam(1e-3), JointsMSE(), jit_compile=jit)
    h, w, k = model.output_shape[1:]
    rng = np.random.default_rng(0)
    # On the backend's device once: the steps time the model, not host-to-device copies.
    x = keras.ops.convert_to_tensor(rng.normal(size=(batch_size, *input_size, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.uniform(size=(batch_size, h, w, k)).astype("float32"))
    sw = keras.ops.convert_to_tensor(np.ones((batch_size, k), "float32"))

    def train():
        model.train_on_batch(x, y, sample_weight=sw)  # returns floats: synchronized

    start = time.perf_counter()
    train()
    warmup = time.perf_counter() - start
    times = []
    while len(times) < max(1, steps) and (not times or sum(times) < max_seconds):
        start = time.perf_counter()
        train()
        times.append(time.perf_counter() - start)
    step = float(np.median(times))
    macs = count_macs(model)
    row = {"backend": backend, "model": name, "mode": mode, "batch_size": batch_size,
           "input_size": list(input_size), "params": model.count_params(),
           "gmacs_per_example": macs / 1e9, "steps_timed": len(times),
           "warmup_s": round(warmup, 2), "step_s": step,
           "train_examples_per_s": batch_size / step,
           "train_gflops": 6.0 * macs * batch_size / step / 1e9}
    if inference:
        forward = _inference_fn(model, jit_compile=mode in ("xla", "compile"))
        start = time.perf_counter()
        forward(x)
        row["inference_warmup_s"] = round(time.perf_counter() - start, 2)
        calls = _timed(lambda: forward(x), min(max_seconds, 10.0), min_reps=max(1, steps))
        row["inference_examples_per_s"] = batch_size * calls
        row["inference_gflops"] = 2.0 * macs * batch_size * calls / 1e9
    keras.backend.clear_session()
    return row


def backend_versions():
    import keras
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)
    return {"backend": backend, "keras": keras.__version__,
            "version": getattr(sys.modules.get(module) or __import__(module), "__version__", "?")}


def run_backend(args):
    """The child process: every model and mode of the process's backend."""
    import keras
    backend = keras.backend.backend()
    out = {**backend_versions(), "peak_fp32_gflops": matmul_gflops("float32"),
           "peak_bf16_gflops": matmul_gflops("bfloat16"), "rows": []}
    print(f"{backend} {out['version']}: matmul {out['peak_fp32_gflops']:.0f} GFLOP/s fp32, "
          f"{out['peak_bf16_gflops']:.0f} bf16", flush=True)
    for name in args.models:
        for mode in args.modes:
            if (mode == "xla" and backend != "tensorflow") or (mode == "compile"
                                                               and backend != "torch"):
                continue
            r = time_model(name, mode, args.batch_size, args.steps, args.max_seconds,
                           tuple(args.input_size))
            print(f"{backend:10s} {name:9s} {mode:15s} train {r['train_examples_per_s']:7.2f} "
                  f"ex/s (warm-up {r['warmup_s']:.0f} s), inference "
                  f"{r['inference_examples_per_s']:7.2f} ex/s", flush=True)
            out["rows"].append(r)
    return out


# ---------------------------------------------------------------------------
# The parent: one child per backend, one table.


def markdown(results):
    """The docs/benchmarks.md table: one row per backend, model and mode."""
    lines = ["| backend | matmul fp32 / bf16 GFLOP/s | model | GMACs/ex | mode | warm-up s | "
             "train ex/s | train % of matmul | inference ex/s | inference % of matmul |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for res in results:
        peak = res["peak_fp32_gflops"]
        for r in res["rows"]:
            lines.append(
                f"| {res['backend']} {res['version']} | {peak:.0f} / "
                f"{res['peak_bf16_gflops']:.0f} | {r['model']} | {r['gmacs_per_example']:.2f} | "
                f"{r['mode']} | {r['warmup_s']:.0f} | {r['train_examples_per_s']:.2f} | "
                f"{100 * r['train_gflops'] / peak:.0f}% | {r['inference_examples_per_s']:.1f} | "
                f"{100 * r['inference_gflops'] / peak:.0f}% |")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="*", choices=BACKENDS,
                   help="default: every installed backend")
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--modes", nargs="*", default=DEFAULT_MODES, choices=MODES,
                   help="float32, mixed_bfloat16 (default both); xla: TensorFlow only; "
                        "compile: PyTorch only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and mode")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop timing a configuration after this many seconds (>= 1 step)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON path of one backend
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.child:
        with open(args.child, "w") as f:
            json.dump(run_backend(args), f)
        return 0
    backends = args.backends or [b for b in BACKENDS if importlib.util.find_spec(b)]
    missing = [b for b in backends if importlib.util.find_spec(b) is None]
    if missing:
        print(f"error: backend(s) not installed: {missing}. Received: backends={backends!r}",
              file=sys.stderr)
        return 2
    print(f"{platform.machine()}, {os.cpu_count()} cores; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; backends {backends}", flush=True)
    results = []
    forwarded = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="keras_dpn_throughput_") as tmp:
        for backend in backends:
            path = os.path.join(tmp, f"{backend}.json")
            env = dict(os.environ, KERAS_BACKEND=backend)
            code = subprocess.call([sys.executable, os.path.abspath(__file__), *forwarded,
                                    "--child", path], env=env)
            if code != 0:
                print(f"error: the {backend} run failed (exit status {code}).", file=sys.stderr)
                return 1
            with open(path) as f:
                results.append(json.load(f))
    print("\n" + markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.machine(), "cores": os.cpu_count(),
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
