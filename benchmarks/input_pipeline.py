"""Input pipeline throughput vs. what a DPN training step consumes, same run.

Measures, on this machine and in one process:

1. examples/s of ``keras_dpn.data.build_dataset`` in training mode (read,
   JPEG decode, augmentation, one warp, Gaussian targets, batching), with the
   model idle;
2. examples/s of a DPN4_32 and a DPN4_64 training step
   (``model.compile(optimizer="adam", loss=JointsMSE())`` + ``train_on_batch``) on a
   batch taken from that pipeline, with the pipeline idle;
3. the ratio pipeline / step: above 1 the pipeline keeps up; the goal is 2x.

Usage::

    python benchmarks/input_pipeline.py                    # bundled COCO sample
    python benchmarks/input_pipeline.py --shards 'shards/coco_val-*.tfrecord' \\
        --batch-size 32 --markdown docs/input_pipeline.md
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_COCO = os.path.join(REPO, "sample_data/coco/annotations/person_keypoints_sample.json")


def pipeline_rate(pattern, batch_size, batches, warmup):
    from keras_dpn import data
    ds = data.build_dataset(pattern, batch_size=batch_size, repeat=True, seed=0)
    it = iter(ds)
    for _ in range(warmup):
        batch = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    return batches * batch_size / seconds, seconds, batch


def step_rate(name, batch, steps, warmup):
    import keras_dpn
    model = getattr(keras_dpn, name)()
    try:  # the project's loss reads the (B, K) target weights as sample_weight
        from keras_dpn.losses import JointsMSE
        loss, weighted = JointsMSE(), True
    except ImportError:
        loss, weighted = "mse", False
    model.compile(optimizer="adam", loss=loss)
    x, y, w = batch
    kwargs = {"sample_weight": w} if weighted else {}
    for _ in range(warmup):
        model.train_on_batch(x, y, **kwargs)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y, **kwargs)
    seconds = time.perf_counter() - start
    return steps * int(x.shape[0]) / seconds, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", default=None, help="shard glob (default: build the bundled sample)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pipeline-batches", type=int, default=20)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--models", default="DPN4_32,DPN4_64")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--markdown", default=None, help="write the table here")
    args = p.parse_args(argv)
    import tensorflow as tf
    from keras_dpn import data
    pattern = args.shards
    if pattern is None:
        tmp = tempfile.mkdtemp(prefix="dpn_bench_")
        data.build_coco_shards(SAMPLE_COCO,
                               os.path.join(REPO, "sample_data/coco/images"),
                               os.path.join(tmp, "coco_sample"), 2, num_workers=1,
                               progress=False, verbose=False)
        pattern = os.path.join(tmp, "coco_sample-*.tfrecord")
    cores = os.cpu_count()
    print(f"TensorFlow {tf.__version__}, {cores} CPU cores visible, batch {args.batch_size}")
    rate, seconds, batch = pipeline_rate(pattern, args.batch_size, args.pipeline_batches, warmup=3)
    print(f"pipeline: {rate:8.1f} examples/s ({args.pipeline_batches} batches in {seconds:.1f} s)")
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        step, secs = step_rate(name, batch, args.steps, warmup=2)
        rows.append({"model": name, "step_examples_per_s": step, "pipeline_examples_per_s": rate,
                     "ratio": rate / step})
        print(f"{name} step: {step:8.1f} examples/s ({args.steps} steps in {secs:.1f} s); "
              f"pipeline / step = {rate / step:.1f}x")
    table = ["| model | training step (examples/s) | input pipeline (examples/s) | pipeline / step |",
             "|---|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['step_examples_per_s']:.1f} | "
                     f"{r['pipeline_examples_per_s']:.1f} | {r['ratio']:.1f}x |")
    text = "\n".join(table)
    print("\n" + text)
    result = {"batch_size": args.batch_size, "cores": cores, "tensorflow": tf.__version__,
              "pipeline_examples_per_s": rate, "models": rows, "shards": pattern}
    if args.json:
        from keras_dpn.io_utils import atomic_file
        with atomic_file(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        from keras_dpn.io_utils import atomic_file
        with atomic_file(args.markdown, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
