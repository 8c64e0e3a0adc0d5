"""GPU throughput of DPN4_32, DPN4_64 and HRNet-W32 in bfloat16, on JAX or PyTorch, no TensorFlow.

Synthetic 256x192 crops (no data), ``mixed_bfloat16``, batch 64 and 256:
training-step (``train_on_batch``: Adam + JointsMSE) and inference
(compiled forward pass) throughput in examples/s and as a fraction of the
GPU's bf16 matmul rate measured in the same run (8192 x 8192, the backend's
own matmul). FLOPs: ``6 x MACs`` per training example, ``2 x MACs`` per
inference example (:func:`keras_dpn.models.analysis.count_macs`). Configurations run
cheapest first and stop starting new ones once ``--budget-s`` is spent, so
the whole run fits in 8 minutes; what was skipped is listed.

Needs only Keras, JAX or PyTorch (with CUDA) and this repository::

    python benchmarks/gpu_benchmark.py --backend jax --out gpu_results     # JSON + markdown
    python benchmarks/gpu_benchmark.py --backend torch --out gpu_results
    # a CPU check of the script itself, seconds:
    python benchmarks/gpu_benchmark.py --backend jax --allow-cpu --models DPN1_32 \\
        --batch-sizes 2 --input-size 64 48 --steps 1 --matmul-size 256 --out /tmp/gpu_check
"""

import argparse
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("DPN4_32", "DPN4_64", "HRNetW32")
BATCH_SIZES = (64, 256)
BACKENDS = ("jax", "torch")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--out", required=True, help="folder for gpu_benchmark.json and .md")
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--batch-sizes", type=int, nargs="*", default=BATCH_SIZES)
    p.add_argument("--input-size", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new configuration after this many seconds (default 7 min)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run without a GPU (to check the script; the numbers mean nothing)")
    return p


def _train_throughput():
    """benchmarks/train_throughput.py, loaded by file path (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "train_throughput", os.path.join(HERE, "train_throughput.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_name(backend):
    if backend == "jax":
        import jax
        device = jax.devices()[0]
        return device.platform, getattr(device, "device_kind", device.platform)
    import torch
    if torch.cuda.is_available():
        return "gpu", torch.cuda.get_device_name(0)
    return "cpu", "cpu"


def markdown(result):
    peak = result["peak_bf16_gflops"]
    lines = [f"{result['device']} ({result['backend']} {result['version']}, Keras "
             f"{result['keras']}): bf16 matmul {result['matmul_size']}^2 **{peak / 1e3:.0f} "
             f"TFLOP/s**; mixed_bfloat16, input {result['input_size'][0]}x"
             f"{result['input_size'][1]}.", "",
             "| model | batch | warm-up s | train ex/s | train % of bf16 matmul | "
             "inference ex/s | inference % of bf16 matmul |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['warmup_s']:.0f} | "
                     f"{r['train_examples_per_s']:.0f} | "
                     f"{100 * r['train_gflops'] / peak:.1f}% | "
                     f"{r['inference_examples_per_s']:.0f} | "
                     f"{100 * r['inference_gflops'] / peak:.1f}% |")
    for skipped in result["skipped"]:
        lines.append(f"| {skipped['model']} | {skipped['batch_size']} | skipped: "
                     f"{skipped['reason']} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec(args.backend) is None:
        print(f"error: --backend {args.backend}: {args.backend} is not installed. "
              f"Received: backend={args.backend!r}", file=sys.stderr)
        return 2
    if "keras" in sys.modules:
        print("error: Keras is already imported in this process; run the script directly.",
              file=sys.stderr)
        return 2
    os.environ["KERAS_BACKEND"] = args.backend  # before Keras is imported
    tt = _train_throughput()  # imports Keras (and keras_dpn) only inside its functions

    platform_kind, name = device_name(args.backend)
    if platform_kind != "gpu" and not args.allow_cpu:
        print(f"error: no GPU visible to {args.backend} (found {name}). Install the CUDA build "
              "(pip install \"jax[cuda12]\" / a CUDA torch) or pass --allow-cpu to check the "
              "script.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = {**tt.backend_versions(), "device": name, "matmul_size": args.matmul_size,
              "input_size": list(args.input_size), "rows": [], "skipped": []}
    result["peak_bf16_gflops"] = tt.matmul_gflops("bfloat16", n=args.matmul_size, seconds=2.0)
    print(f"{name}: bf16 matmul {result['peak_bf16_gflops']:.0f} GFLOP/s", flush=True)
    # Cheapest first: a budget overrun drops the biggest configurations.
    configs = sorted(((m, b) for m in args.models for b in args.batch_sizes),
                     key=lambda c: (args.models.index(c[0]), c[1]))
    for model_name, batch in configs:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            result["skipped"].append({"model": model_name, "batch_size": batch,
                                      "reason": f"time budget ({elapsed:.0f} s spent)"})
            continue
        try:
            row = tt.time_model(model_name, "mixed_bfloat16", batch, steps=args.steps,
                                max_seconds=30.0, input_size=tuple(args.input_size))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: keep the other rows
            result["skipped"].append({"model": model_name, "batch_size": batch,
                                      "reason": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        result["rows"].append(row)
        print(f"{model_name:9s} batch {batch:4d}: train {row['train_examples_per_s']:8.1f} ex/s, "
              f"inference {row['inference_examples_per_s']:8.1f} ex/s "
              f"(warm-up {row['warmup_s']:.0f} s)", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_benchmark.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    with open(os.path.join(args.out, "gpu_benchmark.md"), "w") as f:
        f.write(table)
    print("\n" + table + f"\n{result['seconds']:.0f} s; written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
