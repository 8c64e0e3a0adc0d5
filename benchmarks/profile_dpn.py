"""Per-layer CPU profile of DPN4_32 beside HRNet-W32, before and after the exact rewrites.

```bash
python benchmarks/profile_dpn.py --out profile_out          # ~15 min on 2 busy cores
python benchmarks/profile_dpn.py --quick --out /tmp/p       # seconds: a check that it runs
```

What one run measures, all in one process so that the ratios share the machine's load
(the 2 cores of the development machine are shared; the load average is recorded
beside the figures):

* the fp32 ``tf.matmul`` rate (4096^2; 1024^2 with ``--quick``), once per timing round,
  and the DRAM read bandwidth of a sum over a large array (the roofline's two roofs);
* Keras/TensorFlow inference (and, for ``--training-models``, the training step) of
  each model at batch ``--batch-size``, as ``before`` (the Bottleneck as separate Conv2D
  and BatchNormalization calls, every tap of the dilated convs, as the layer was written
  before issue 22) and ``after`` (the current layer: BN folded into the conv where it
  uses moving statistics, taps that read only padding left out, a BiasAdd that oneDNN
  fuses); rounds interleave the variants and
  the matmul, and each figure is the median over rounds of that round's ratio;
* a TensorFlow profiler trace of the inference of each variant: op time per block, next
  to the block's MACs, the bytes its convolutions must move at least (activations in and
  out, weights) and the roofline floor ``max(2 MACs / matmul rate, bytes / bandwidth)``;
* the full-integer TFLite file of DPN4_32 (batch 1, ``keras_dpn.deploy.export.write_tflite``)
  before and after, at 1 and 2 threads, and one int8 file per block (the block alone at its
  real input shape, batch 1) for a per-block time; the int8 ``FULLY_CONNECTED`` rate of a
  large matrix product in the same runtime is the int8 roof.

Writes ``profile_dpn.json`` (date, machine, load, versions, command, every figure) and
``profile_dpn.md`` (the tables) into ``--out``.
"""

import argparse
import collections
import contextlib
import datetime
import functools
import glob
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load():
    return [round(v, 2) for v in os.getloadavg()]


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(platform=platform.platform(), cpu=cpu, cores=os.cpu_count(),
                python=platform.python_version())


# ---------------------------------------------------------------------------
# The layer as it was: separate conv and BN calls, every tap.


def plain_bottleneck_call(self, inputs, training=None):
    """``Bottleneck.call`` before issue 22 (the reference of the rewrites)."""
    import keras

    def conv(layer, x):
        return keras.ops.conv(x, layer.kernel, strides=layer.strides, padding=layer.padding,
                              dilation_rate=layer.dilation_rate, data_format=layer.data_format)

    x = keras.ops.relu(self.bn1(conv(self.conv1, inputs), training=training))
    x = keras.ops.relu(self.bn2(conv(self.conv2, x), training=training))
    x = self.bn3(conv(self.conv3, x), training=training)
    shortcut = inputs
    if self.shortcut_conv is not None:
        shortcut = self.shortcut_bn(conv(self.shortcut_conv, inputs), training=training)
    return keras.ops.relu(x + shortcut)


@contextlib.contextmanager
def variant(name):
    """``"before"``: the plain Bottleneck call patched in; ``"after"``: the current one."""
    from keras_dpn.models import layers
    current = layers.Bottleneck.call
    if name == "before":
        layers.Bottleneck.call = plain_bottleneck_call
    try:
        yield
    finally:
        layers.Bottleneck.call = current


VARIANTS = ("before", "after")


# ---------------------------------------------------------------------------
# Models, shapes, MACs and bytes.


def build(name, input_size, seed=0):
    """A registered model with BN statistics far from the identity (a fold shows)."""
    import keras

    import keras_dpn
    keras.utils.set_random_seed(seed)
    model = keras_dpn.models.get_model(name, input_shape=(*input_size, 3))
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape))
        elif v.path.endswith(("moving_mean", "beta")):
            v.assign(rng.normal(0.0, 0.1, v.shape))
        elif v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, v.shape))
    return model


def conv_records(model, input_size):
    """``{layer path: (input shape, output shape, MACs, weight count)}`` of every leaf conv."""
    from keras_dpn.models.analysis import _leaf_layers, layer_macs
    paths = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            paths.setdefault(id(sub), f"{paths.get(id(layer), layer.name)}/{sub.name}")
        paths.setdefault(id(layer), layer.name)
    records = {}

    def record(layer, original, *args, **kwargs):
        out = original(*args, **kwargs)
        shape_in, shape_out = tuple(args[0].shape), tuple(out.shape)
        records[paths[id(layer)]] = (shape_in, shape_out, layer_macs(layer, shape_in, shape_out),
                                     int(sum(np.prod(w.shape) for w in layer.weights)))
        return out

    patched = _leaf_layers(model)
    try:
        for layer in patched:
            layer.call = functools.partial(record, layer, layer.call)
        # The current call: the conv layers are called (the plain call bypasses them).
        model(np.zeros((1, *input_size, 3), "float32"), training=False)
    finally:
        for layer in patched:
            del layer.call
    return records


def row_key(path):
    """The profile row of a layer or op path: a block (DPMs pooled by dilation) or a stage."""
    parts = [p for p in path.split("/") if p]
    top = parts[0]
    if re.match(r"dpm\d+$", top) and len(parts) > 1:
        return "dpm*/" + parts[1]
    if top.startswith(("conv1_block", "conv2_block")):
        return top
    for prefix in ("stem", "conv2_0", "conv2_out"):
        if top.startswith(prefix):
            return prefix
    m = re.match(r"stage(\d)_m\d+_b(\d)_block", top)
    if m:
        return f"stage{m.group(1)} branch{m.group(2)} blocks"
    m = re.match(r"(stage\d)_block", top)
    if m:
        return f"{m.group(1)} bottlenecks"
    m = re.match(r"(stage\d)_m\d+", top)
    if m:
        return f"{m.group(1)} fuse"
    m = re.match(r"transition(\d)", top)
    if m:
        return "transitions"
    return "head"


def rows_of(records, batch, dtype_bytes=4):
    """MACs, minimum bytes and map shape per profile row (batch ``batch``)."""
    rows = collections.OrderedDict()
    for path, (shape_in, shape_out, macs, weights) in records.items():
        row = rows.setdefault(row_key(path), dict(macs=0, bytes=0, convs=0, shape=None))
        row["macs"] += macs * batch
        row["bytes"] += dtype_bytes * (batch * (int(np.prod(shape_in[1:]))
                                                + int(np.prod(shape_out[1:]))) + weights)
        row["convs"] += 1
        row["shape"] = row["shape"] or "x".join(str(s) for s in shape_in[1:])
    return rows


# ---------------------------------------------------------------------------
# Timing (TensorFlow).


def matmul_fn(n):
    import tensorflow as tf
    a = tf.random.normal((n, n), seed=0)
    b = tf.random.normal((n, n), seed=1)
    product = tf.function(lambda: tf.matmul(a, b))
    return lambda: product().numpy(), 2.0 * n ** 3


def bandwidth_gbs(mib=512):
    """Read bandwidth from DRAM: a sum over a large float32 array (no output to allocate)."""
    import tensorflow as tf
    x = tf.random.normal((mib * 2 ** 18,))
    fn = tf.function(lambda: tf.reduce_sum(x))
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - start)
    return 4.0 * x.shape[0] / min(times) / 1e9


def interleaved(fns, rounds, matmul, calls=3):
    """Rounds of (matmul, then each fn ``calls`` times); per fn the per-call seconds of every
    round and the matmul GFLOP/s of that round."""
    run_matmul, flops = matmul
    for fn in fns.values():
        fn()
    result = {name: [] for name in fns}
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_matmul()
        rates.append(flops / (time.perf_counter() - start) / 1e9)
        for name, fn in fns.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            result[name].append(min(times))
    return result, rates


def summarize(seconds, rates, flops_per_call):
    """Median per-round fraction of the matmul rate, plus the timings."""
    fractions = [flops_per_call / t / 1e9 / r for t, r in zip(seconds, rates)]
    return dict(median_ms=1e3 * float(np.median(seconds)), min_ms=1e3 * float(min(seconds)),
                gflops_median=flops_per_call / float(np.median(seconds)) / 1e9,
                of_matmul_median=float(np.median(fractions)),
                of_matmul_best=float(max(fractions)))


def tf_profile(fn, calls=7):
    """Op time (ms per call) per op name of ``fn``'s TensorFlow graph, from a profiler trace."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    fn()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            fn()
        tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    ops = collections.defaultdict(list)
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                if ":" in name:  # "scope/op:OpType"; the rest are executor events
                    ops[name].append(event.duration_ps / 1e9)
    # Each op runs once per call: its median over the calls, robust to a call
    # that another process's burst slowed down.
    return {name: float(np.median(times + [0.0] * (calls - len(times))))
            for name, times in ops.items()}


def op_rows(ops):
    """Op time per profile row, with the part in convolutions and in other ops."""
    rows = collections.defaultdict(lambda: dict(ms=0.0, conv_ms=0.0, other_ms=0.0))
    for name, ms in ops.items():
        path, op_type = name.rsplit(":", 1)
        # "MODEL_1/dpm1_1/block2_d16_1/..." -> "dpm1/block2_d16/..."
        parts = [re.sub(r"_\d+$", "", p) for p in path.split("/")[1:]]
        if not parts:
            continue
        row = rows[row_key("/".join(parts))]
        row["ms"] += ms
        row["conv_ms" if "Conv" in op_type else "other_ms"] += ms
    return rows


# ---------------------------------------------------------------------------
# TFLite int8.


def tflite_int8(keras_model, path, calibration):
    """A full-integer, batch-1, builtin-ops TFLite file of ``keras_model``."""
    import tensorflow as tf

    from keras_dpn.deploy.calibration import apply_tflite_options, tflite_options
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    apply_tflite_options(converter, tflite_options("int8", calibration))
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


def interpreter(path, threads):
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=path, num_threads=threads)
    runner.allocate_tensors()
    detail = runner.get_input_details()[0]
    rng = np.random.default_rng(0)
    if detail["dtype"] == np.int8:
        value = rng.integers(-128, 128, size=detail["shape"]).astype(np.int8)
    else:
        value = rng.normal(size=detail["shape"]).astype(detail["dtype"])
    runner.set_tensor(detail["index"], value)
    ops = collections.Counter(op["op_name"] for op in runner._get_ops_details())
    return runner, dict(ops)


def time_interpreters(runners, rounds, calls=5):
    for runner in runners.values():
        runner.invoke()
    result = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                runner.invoke()
                times.append(time.perf_counter() - start)
            result[name].append(min(times))
    return {name: dict(median_ms=1e3 * float(np.median(t)), min_ms=1e3 * float(min(t)))
            for name, t in result.items()}


def int8_matmul_rate(folder, n, threads, rounds):
    """GMAC/s of an int8 ``n x n`` by ``n x n`` FULLY_CONNECTED in LiteRT (the int8 roof)."""
    import keras
    inputs = keras.Input((n,), batch_size=n)
    model = keras.Model(inputs, keras.layers.Dense(n, use_bias=False)(inputs))
    data = np.random.default_rng(0).normal(size=(2, n, n)).astype("float32")
    path = tflite_int8(model, os.path.join(folder, "matmul_int8.tflite"), data)
    runner, _ = interpreter(path, threads)
    timing = time_interpreters({"mm": runner}, rounds)["mm"]
    return n ** 3 / (timing["min_ms"] / 1e3) / 1e9


def block_units(model, input_size):
    """``[(row, layers, input shape)]``: the DPN's blocks, to run alone (one per DPM dilation)."""
    by_name = {layer.name: layer for layer in model.layers}
    h, w = input_size
    units = [("stem", [by_name[n] for n in ("stem_conv", "stem_bn", "stem_relu", "stem_pool")],
              (h, w, 3))]
    shape = (h // 4, w // 4, 64)
    for i in range(1, 4):
        block = by_name[f"conv1_block{i}"]
        units.append((f"conv1_block{i}", [block], shape))
        shape = shape[:2] + (256,)
    if "conv2_0_conv" in by_name:
        units.append(("conv2_0", [by_name[n] for n in ("conv2_0_conv", "conv2_0_bn",
                                                        "conv2_0_relu")], shape))
        shape = (h // 8, w // 8, 128)
    dpm = by_name["dpm1"]
    for block in dpm.blocks:
        units.append((f"dpm*/{block.name}", [block], shape))
    units.append(("head", [by_name["upsample"], by_name["heatmaps"]], shape))
    return units


# ---------------------------------------------------------------------------


def keras_part(args, name, matmul, result):
    import keras

    from keras_dpn.models.analysis import count_macs
    from keras_dpn.training.losses import JointsMSE
    import tensorflow as tf
    size, batch = tuple(args.input_size), args.batch_size
    model = build(name, size)
    macs = count_macs(model)
    records = conv_records(model, size)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, *size, 3)).astype("float32"))
    entry = dict(model=name, params=model.count_params(), gmacs=macs / 1e9,
                 rows=rows_of(records, batch), variants={})
    forward = {}
    outputs = {}
    for v in VARIANTS:
        with variant(v):
            fn = tf.function(lambda t: model(t, training=False))
            outputs[v] = fn(x).numpy()  # traces now, with this variant's call
            forward[v] = (lambda f: lambda: f(x).numpy())(fn)
    entry["max_abs_difference"] = float(np.abs(outputs["after"] - outputs["before"]).max())
    entry["output_max_abs"] = float(np.abs(outputs["before"]).max())
    print(f"{name}: {macs / 1e9:.2f} GMACs, after - before max |diff| "
          f"{entry['max_abs_difference']:.2e} (outputs up to {entry['output_max_abs']:.1f})",
          flush=True)
    seconds, rates = interleaved(forward, args.rounds, matmul)
    for v in VARIANTS:
        entry["variants"][v] = dict(inference=summarize(seconds[v], rates, 2.0 * macs * batch))
        entry["variants"][v]["profile"] = op_rows(tf_profile(forward[v]))
        print(f"  {v}: inference {entry['variants'][v]['inference']}", flush=True)
    if name in args.training_models:
        h, w, k = model.output_shape[1:]
        y = tf.constant(rng.uniform(size=(batch, h, w, k)).astype("float32"))
        sw = tf.ones((batch, k))
        steps = {}
        for v in VARIANTS:
            with variant(v):
                clone = build(name, size)
                clone.compile(keras.optimizers.Adam(1e-3), JointsMSE())
                clone.train_on_batch(x, y, sample_weight=sw)  # traces with this variant
            steps[v] = (lambda m: lambda: m.train_on_batch(x, y, sample_weight=sw))(clone)
        seconds, rates = interleaved(steps, max(2, args.rounds // 2), matmul, calls=1)
        for v in VARIANTS:
            entry["variants"][v]["training"] = summarize(seconds[v], rates,
                                                         6.0 * macs * batch)
            print(f"  {v}: training {entry['variants'][v]['training']}", flush=True)
    keras.backend.clear_session()
    result["keras"].append(entry)


def tflite_part(args, result, folder):
    import keras

    from keras_dpn.deploy.export import write_tflite
    from keras_dpn.models.analysis import count_macs
    size = tuple(args.input_size)
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(args.calibration, *size, 3)).astype("float32")
    files = {}
    model = build("DPN4_32", size)
    macs = count_macs(model)
    for v in VARIANTS:
        with variant(v):
            files[v] = os.path.join(folder, f"DPN4_32_{v}_int8.tflite")
            start = time.perf_counter()
            write_tflite(model, files[v], "int8", calibration)
            print(f"int8 {v}: converted in {time.perf_counter() - start:.0f} s", flush=True)
    runners, ops = {}, {}
    for v in VARIANTS:
        for threads in args.threads:
            runners[(v, threads)], ops[v] = interpreter(files[v], threads)
    timing = time_interpreters({f"{v} {t}": r for (v, t), r in runners.items()}, args.rounds)
    result["tflite"] = dict(gmacs=macs / 1e9, ops=ops, full={
        key: dict(timing[key], gmacs_per_s=macs / timing[key]["min_ms"] * 1e3 / 1e9)
        for key in timing})
    print("int8 full model:", result["tflite"]["full"], flush=True)
    result["tflite"]["int8_matmul_gmacs"] = {
        t: int8_matmul_rate(folder, args.int8_matmul_size, t, args.rounds) for t in args.threads}
    print("int8 matmul GMAC/s:", result["tflite"]["int8_matmul_gmacs"], flush=True)

    records = conv_records(model, size)
    rows = rows_of(records, 1, dtype_bytes=1)
    blocks = {}
    for row, layers, shape in block_units(model, size):
        inputs = keras.Input(shape, batch_size=1)
        x = inputs
        for layer in layers:
            x = layer(x)
        unit = keras.Model(inputs, x)
        data = rng.normal(size=(4, *shape)).astype("float32")
        if row != "stem":
            data = np.maximum(data, 0)  # block inputs follow a ReLU
        path = os.path.join(folder, re.sub(r"\W", "_", row) + ".tflite")
        tflite_int8(unit, path, data)
        runner, unit_ops = interpreter(path, max(args.threads))
        t = time_interpreters({"u": runner}, args.rounds)["u"]
        # The DPM rows pool the same block of every DPM: one block's share.
        copies = sum(1 for layer in model.layers if layer.name.startswith("dpm")) \
            if row.startswith("dpm*") else 1
        blocks[row] = dict(t, ops=unit_ops, copies=copies,
                           macs=rows.get(row, {}).get("macs", 0) // copies,
                           bytes=rows.get(row, {}).get("bytes", 0) // copies)
        print(f"int8 {row}: {t}", flush=True)
    result["tflite"]["blocks"] = blocks
    result["tflite"]["block_threads"] = max(args.threads)


def markdown(result):
    lines = [f"# DPN CPU profile ({result['date']})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             f"TensorFlow {result['versions']['tensorflow']}, Keras {result['versions']['keras']}; "
             f"load average {result['load_start']} at start, {result['load_end']} at end.",
             f"Command: `{result['command']}`", "",
             f"fp32 matmul ({result['matmul_n']}^2, tf.matmul, per round): median "
             f"{np.median(result['matmul_gflops']):.0f} GFLOP/s, best "
             f"{max(result['matmul_gflops']):.0f}; DRAM read bandwidth "
             f"{result['bandwidth_gbs']:.1f} GB/s.", ""]
    batch = result["batch_size"]
    lines += [f"## Keras / TensorFlow, batch {batch}", "",
              "| model | variant | inference ms (median / min) | inference % of matmul "
              "| training step ms (median / min) | training % of matmul |",
              "|---|---|---:|---:|---:|---:|"]
    for entry in result["keras"]:
        for v in VARIANTS:
            inf = entry["variants"][v]["inference"]
            tr = entry["variants"][v].get("training")
            train = (f"{tr['median_ms']:.0f} / {tr['min_ms']:.0f} | {tr['of_matmul_median']:.0%}"
                     if tr else "- | -")
            lines.append(f"| {entry['model']} | {v} | {inf['median_ms']:.1f} / {inf['min_ms']:.1f} "
                         f"| {inf['of_matmul_median']:.0%} | {train} |")
    lines += ["", "% of matmul: 2 x MACs (inference) or 6 x MACs (training) per example over the "
              "time, as a fraction of the matmul rate of the same round; median over rounds.", ""]
    peak = max(result["matmul_gflops"])
    bw = result["bandwidth_gbs"]
    for entry in result["keras"]:
        lines += [f"### {entry['model']}: op time per block (TensorFlow profiler, batch {batch})",
                  "", "| block | input | convs | MACs (M) | conv bytes (MB) | MACs/byte "
                  "| roofline floor ms | before ms (conv / other) | after ms (conv / other) "
                  "| after GFLOP/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        before = entry["variants"]["before"]["profile"]
        after = entry["variants"]["after"]["profile"]
        for key, row in entry["rows"].items():
            floor = max(2 * row["macs"] / peak / 1e9, row["bytes"] / bw / 1e9) * 1e3
            b = before.get(key, dict(ms=0, conv_ms=0, other_ms=0))
            a = after.get(key, dict(ms=0, conv_ms=0, other_ms=0))
            rate = 2 * row["macs"] / (a["ms"] / 1e3) / 1e9 if a["ms"] else 0
            lines.append(
                f"| {key} | {row['shape']} | {row['convs']} | {row['macs'] / 1e6:.0f} "
                f"| {row['bytes'] / 1e6:.1f} | {row['macs'] / row['bytes']:.1f} | {floor:.2f} "
                f"| {b['ms']:.2f} ({b['conv_ms']:.2f} / {b['other_ms']:.2f}) "
                f"| {a['ms']:.2f} ({a['conv_ms']:.2f} / {a['other_ms']:.2f}) | {rate:.0f} |")
        total_b = sum(r["ms"] for r in before.values())
        total_a = sum(r["ms"] for r in after.values())
        total_macs = sum(r["macs"] for r in entry["rows"].values())
        lines += [f"| total op time | | | {total_macs / 1e6:.0f} "
                  f"| | | | {total_b:.1f} | {total_a:.1f} | |", ""]
    if "tflite" in result:
        t = result["tflite"]
        lines += ["## TFLite full-integer int8 (LiteRT, XNNPACK), batch 1, DPN4_32", "",
                  f"Ops: before {t['ops']['before']}, after {t['ops']['after']}.", "",
                  "| variant | threads | latency ms (median / min) | GMAC/s (min) |",
                  "|---|---:|---:|---:|"]
        for key, row in t["full"].items():
            v, threads = key.split()
            lines.append(f"| {v} | {threads} | {row['median_ms']:.2f} / {row['min_ms']:.2f} "
                         f"| {row['gmacs_per_s']:.0f} |")
        lines += ["", "int8 matmul (FULLY_CONNECTED, same runtime): " + ", ".join(
            f"{threads} thread(s) {rate:.0f} GMAC/s"
            for threads, rate in t["int8_matmul_gmacs"].items()), "",
            f"Per block, alone at its input shape, {t['block_threads']} threads (after):", "",
            "| block | ops | MACs (M) | int8 bytes (MB) | ms (median / min) | GMAC/s "
            "| x copies | share of the sum |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        total = sum(b["min_ms"] * b["copies"] for b in t["blocks"].values())
        for key, b in t["blocks"].items():
            rate = b["macs"] / (b["min_ms"] / 1e3) / 1e9 if b["min_ms"] else 0
            ops = ", ".join(f"{n} {c}" for n, c in b["ops"].items())
            lines.append(f"| {key} | {ops} | {b['macs'] / 1e6:.1f} | {b['bytes'] / 1e6:.2f} "
                         f"| {b['median_ms']:.3f} / {b['min_ms']:.3f} | {rate:.0f} "
                         f"| {b['copies']} | {b['min_ms'] * b['copies'] / total:.0%} |")
        lines += ["", f"Sum of the blocks (min, times copies): {total:.2f} ms.", ""]
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="profile_out", help="output folder")
    p.add_argument("--models", nargs="+", default=["DPN4_32", "HRNetW32"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", type=int, nargs=2, default=(256, 192))
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="TFLite threads")
    p.add_argument("--calibration", type=int, default=8, help="random int8 calibration inputs")
    p.add_argument("--int8-matmul-size", type=int, default=1024)
    p.add_argument("--training-models", nargs="*", default=["DPN4_32"],
                   help="models whose training step is timed too (HRNet-W32's takes minutes)")
    p.add_argument("--no-tflite", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, to check that the script runs (figures meaningless)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.input_size, args.batch_size, args.rounds = (64, 48), 2, 2
        args.models, args.calibration, args.int8_matmul_size = ["DPN4_32"], 2, 128
    import keras
    import tensorflow as tf
    try:
        from ai_edge_litert import __version__ as litert
    except ImportError:
        litert = None
    os.makedirs(args.out, exist_ok=True)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  command=shlex.join([sys.executable, *sys.argv]), machine=machine(),
                  versions=dict(tensorflow=tf.__version__, keras=keras.__version__,
                                litert=litert),
                  load_start=load(), batch_size=args.batch_size,
                  input_size=list(args.input_size), keras=[])
    n = 1024 if args.quick else 4096
    matmul = matmul_fn(n)
    result["matmul_n"] = n
    result["bandwidth_gbs"] = bandwidth_gbs(64 if args.quick else 512)
    rates = []
    original = matmul[0]

    def recorded():  # every round's matmul rate goes into the report
        start = time.perf_counter()
        original()
        rates.append(matmul[1] / (time.perf_counter() - start) / 1e9)
    for name in args.models:
        keras_part(args, name, (recorded, matmul[1]), result)
    result["matmul_gflops"] = rates
    if not args.no_tflite:
        with tempfile.TemporaryDirectory() as folder:
            tflite_part(args, result, folder)
    result["load_end"] = load()
    with open(os.path.join(args.out, "profile_dpn.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    text = markdown(result)
    with open(os.path.join(args.out, "profile_dpn.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
