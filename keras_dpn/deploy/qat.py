"""Quantization-aware training and pruning (tensorflow-model-optimization).

tfmot works only through ``tf_keras`` (Keras 2), and importing it switches
``tf.keras`` for the whole process. This module is therefore run as its own
process::

    python -m keras_dpn.deploy.qat --model saved_models/dpn/model.keras \\
        --out model_qat_int8.tflite --mode qat --epochs 4

and nothing in the package imports it at import time; :func:`run_subprocess`
is the in-process entry point (it only spawns the command).

How it works:

1. The Keras 3 model is read, and its architecture is rebuilt layer by layer
   with ``tf_keras`` layers (custom ``Bottleneck`` / ``DilationPyramidModule``
   layers are expanded into plain Conv2D / BatchNormalization / ReLU / Add so
   that tfmot's default 8-bit scheme knows every layer); weights are copied
   across and the rebuilt model is checked against the original.
2. No labels are needed: the float model's own heatmaps on real sample crops
   (and their mirror images) are the targets, so fine-tuning teaches the
   quantized (or pruned) network to reproduce the float network.
3. ``qat``: ``tfmot.quantization.keras.quantize_model``, activation ranges
   calibrated on the data (tfmot's EMA would need thousands of steps to leave
   its [-6, 6] start), fine-tuning with BatchNormalization frozen, then a
   full-integer TFLite (int8 in / int8 out) using the learned ranges.
   ``prune``: ``prune_low_magnitude`` to ``--sparsity`` with a polynomial
   schedule + fine-tuning, ``strip_pruning``, then the same full-integer
   conversion (sparse weights compress well: see the gzip size printed).
4. The TFLite file has a fixed batch of 1 (dilated convs stay native
   CONV_2D) and is converted from a SavedModel, never from concrete
   functions.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

# The child reads the pid of the process it must not outlive from here.
PARENT_ENV = "KERAS_DPN_QAT_PARENT"


# The keyword arguments of run_subprocess that callers pass through (export's qat_kwargs).
RUN_OPTIONS = ("epochs", "batch_size", "learning_rate", "sparsity", "max_crops", "timeout",
               "report_path", "log_path")


class QATError(RuntimeError):
    """The QAT / pruning child process failed; the message is one line."""


def check_options(epochs=4, batch_size=8, learning_rate=None, sparsity=0.5, max_crops=64,
                  timeout=3600):
    """Raises a one-line ValueError for a QAT / pruning option out of range.

    Called before any work (export checks them before it writes a file).

    Example:
    >>> check_options(epochs=-1)
    Traceback (most recent call last):
    ...
    ValueError: `epochs` must be an integer >= 1 (--qat-epochs). Received: epochs=-1
    """
    def integer(value, name, flag):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1{flag}. Received: {name}={value!r}")

    integer(epochs, "epochs", " (--qat-epochs)")
    integer(batch_size, "batch_size", "")
    integer(max_crops, "max_crops", "")
    for value, name, low, high in ((learning_rate, "learning_rate", 0.0, math.inf),
                                   (sparsity, "sparsity", 0.0, 1.0),
                                   (timeout, "timeout", 0.0, math.inf)):
        if value is None and name == "learning_rate":
            continue
        if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                or not low < float(value) < high):
            bound = f"in ({low:g}, {high:g})" if high < math.inf else f"> {low:g}"
            raise ValueError(f"`{name}` must be a number {bound}. Received: {name}={value!r}")


def _last_error_line(output):
    """The line of a child's output that says what went wrong (its exception)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    pattern = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit)\b|[\w .-]+: error: )")
    for line in reversed(lines):
        if pattern.match(line):
            return line
    return lines[-1] if lines else "no output"


def run_subprocess(model_path, out_path, calibration_path=None, mode="qat", epochs=4,
                   batch_size=8, learning_rate=None, sparsity=0.5, max_crops=64,
                   timeout=3600, report_path=None, log_path=None):
    """Runs QAT or pruning in a fresh Python process; returns its JSON report.

    Args:
        model_path: a ``.keras`` heatmap model.
        out_path: the ``.tflite`` to write.
        calibration_path: ``.npy`` of normalized float32 crops ``(N, H, W, 3)``;
            defaults to the person crops that ship with the package
            (:func:`keras_dpn.deploy.calibration.default_crops`).
        mode: ``"qat"`` or ``"prune"``.
        epochs, batch_size: fine-tuning settings.
        learning_rate: Adam rate; None for the measured defaults (1e-5 for
            QAT, which only adapts to the rounding; 3e-4 for pruning, which
            must recover from removed weights).
        sparsity: final sparsity for ``"prune"``.
        max_crops: default crops when ``calibration_path`` is None.
        timeout: seconds before the child is killed.
        report_path: where the child writes its JSON report (default: beside
            ``out_path`` with ``.json``).
        log_path: where the child's whole output goes when it fails (default:
            beside ``out_path`` with ``.log``); the error names it.

    Returns:
        The report dict (fidelity of the rebuilt model, training loss, sizes).

    Raises:
        ValueError: an option out of range (before the child starts).
        QATError: the child failed or timed out: one line with its last
            error line and the log file holding its whole output.

    Example (not run: QAT of even a tiny model takes about two minutes on two cores):

    >>> from keras_dpn.deploy import qat
    >>> qat.run_subprocess("model.keras", "model_qat_int8.tflite")  # doctest: +SKIP
    """
    if mode not in ("qat", "prune"):
        raise ValueError(f"`mode` must be 'qat' or 'prune'. Received: mode={mode!r}")
    check_options(epochs, batch_size, learning_rate, sparsity, max_crops, timeout)
    report_path = report_path or os.path.splitext(os.fspath(out_path))[0] + ".json"
    log_path = os.fspath(log_path or os.path.splitext(os.fspath(out_path))[0] + ".log")
    cmd = [sys.executable, "-m", "keras_dpn.deploy.qat", "--model", os.fspath(model_path),
           "--out", os.fspath(out_path), "--mode", mode, "--epochs", str(epochs),
           "--batch-size", str(batch_size), "--sparsity", str(sparsity), "--max-crops", str(max_crops),
           "--report", report_path]
    if learning_rate is not None:
        cmd += ["--learning-rate", str(learning_rate)]
    if calibration_path is not None:
        cmd += ["--calibration", os.fspath(calibration_path)]
    env = dict(os.environ)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The child must import this checkout of keras_dpn (the folder above
    # keras_dpn/, three up from keras_dpn/deploy/qat.py).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    # The child's temporary files go where the caller's go (export: a folder
    # that a rerun removes once this process is dead), and it dies with us.
    import tempfile
    env["TMPDIR"] = tempfile.gettempdir()
    env[PARENT_ENV] = str(os.getpid())
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        output, failure = proc.stdout + proc.stderr, proc.returncode != 0
        reason = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                         for x in (e.stdout, e.stderr))
        failure, reason = True, f"killed after timeout={timeout} s"
    if failure:
        from keras_dpn.core import io_utils
        with io_utils.atomic_file(log_path, "w") as f:
            f.write(f"$ {' '.join(cmd)}\n{output}")
        raise QATError(f"`python -m keras_dpn.deploy.qat --mode {mode}` failed ({reason}): "
                       f"{_last_error_line(output)} (its whole output: {log_path})")
    with open(report_path) as f:
        return json.load(f)


def _die_with_parent():
    """Child: exit when the process that started it dies (Linux; kill -9 included)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # died before the signal was set
        sys.exit(1)


# ---------------------------------------------------------------------------
# Everything below runs inside the child process only.
# ---------------------------------------------------------------------------

def _plan(model):
    """Flattens a sequential Keras 3 DPN into ``(kind, config, weights)`` steps.

    Custom blocks are expanded here into plain layers, so the tf_keras model
    has only layers tfmot's default 8-bit scheme supports.
    """
    import keras

    from keras_dpn.models.layers import Bottleneck, DilationPyramidModule

    steps = []

    def conv(layer, name):
        cfg = layer.get_config()
        steps.append(("conv", dict(name=name, filters=cfg["filters"],
                                   kernel_size=cfg["kernel_size"], strides=cfg["strides"],
                                   padding=cfg["padding"], dilation_rate=cfg["dilation_rate"],
                                   use_bias=cfg["use_bias"]),
                      [w.numpy() for w in layer.weights]))

    def bn(layer, name):
        cfg = layer.get_config()
        steps.append(("bn", dict(name=name, epsilon=cfg["epsilon"], momentum=cfg["momentum"]),
                      [w.numpy() for w in layer.weights]))

    def bottleneck(block, prefix):
        steps.append(("push", {}, []))  # remember the block input for the shortcut
        conv(block.conv1, f"{prefix}_conv1")
        bn(block.bn1, f"{prefix}_bn1")
        steps.append(("relu", dict(name=f"{prefix}_relu1"), []))
        conv(block.conv2, f"{prefix}_conv2")
        bn(block.bn2, f"{prefix}_bn2")
        steps.append(("relu", dict(name=f"{prefix}_relu2"), []))
        conv(block.conv3, f"{prefix}_conv3")
        bn(block.bn3, f"{prefix}_bn3")
        if block.shortcut_conv is not None:
            steps.append(("shortcut_begin", {}, []))
            conv(block.shortcut_conv, f"{prefix}_shortcut_conv")
            bn(block.shortcut_bn, f"{prefix}_shortcut_bn")
            steps.append(("shortcut_end", {}, []))
        steps.append(("add", dict(name=f"{prefix}_add"), []))
        steps.append(("relu", dict(name=f"{prefix}_out"), []))

    previous = model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            single_path = layer.input is previous
        except (AttributeError, ValueError):  # a layer called more than once
            single_path = False
        if not single_path:
            raise ValueError(
                "QAT / pruning supports single-path models built by keras_dpn.DPN. "
                f"Received: a model whose layer {layer.name!r} does not take the previous "
                "layer's output")
        previous = layer.output
        if isinstance(layer, keras.layers.Conv2D):
            conv(layer, layer.name)
        elif isinstance(layer, keras.layers.BatchNormalization):
            bn(layer, layer.name)
        elif isinstance(layer, keras.layers.ReLU):
            steps.append(("relu", dict(name=layer.name), []))
        elif isinstance(layer, keras.layers.MaxPooling2D):
            cfg = layer.get_config()
            steps.append(("maxpool", dict(name=layer.name, pool_size=cfg["pool_size"],
                                          strides=cfg["strides"], padding=cfg["padding"]), []))
        elif isinstance(layer, keras.layers.UpSampling2D):
            cfg = layer.get_config()
            steps.append(("upsample", dict(name=layer.name, size=cfg["size"],
                                           interpolation=cfg["interpolation"]), []))
        elif isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] == "linear":
            continue  # the float32 output cast of mixed precision: nothing to do
        elif isinstance(layer, Bottleneck):
            bottleneck(layer, layer.name)
        elif isinstance(layer, DilationPyramidModule):
            for block in layer.blocks:
                bottleneck(block, f"{layer.name}_{block.name}")
        else:
            raise ValueError(
                "QAT / pruning cannot rebuild this layer with tf_keras. Received: "
                f"layer {layer.name!r} of type {type(layer).__name__}")
    return steps


def _build_tf_keras(steps, input_shape, batch_size=None):
    """Builds the tf_keras functional model of a plan and sets its weights."""
    import tf_keras as tfk

    inputs = tfk.Input(shape=input_shape, batch_size=batch_size, name="image")
    x = inputs
    stack = []
    branch = None
    with_weights = []
    for kind, cfg, weights in steps:
        if kind == "push":
            stack.append(x)
            continue
        if kind == "shortcut_begin":
            branch, x = x, stack[-1]
            continue
        if kind == "shortcut_end":
            stack[-1], x = x, branch
            continue
        if kind == "conv":
            layer = tfk.layers.Conv2D(**cfg)
        elif kind == "bn":
            layer = tfk.layers.BatchNormalization(**cfg)
        elif kind == "relu":
            layer = tfk.layers.ReLU(**cfg)
        elif kind == "maxpool":
            layer = tfk.layers.MaxPooling2D(**cfg)
        elif kind == "upsample":
            layer = tfk.layers.UpSampling2D(**cfg)
        elif kind == "add":
            x = tfk.layers.Add(**cfg)([x, stack.pop()])
            continue
        x = layer(x)
        if weights:
            with_weights.append((layer, weights))
    model = tfk.Model(inputs, x, name="dpn_tf_keras")
    for layer, weights in with_weights:
        layer.set_weights(weights)
    return model


def _batch1_tflite(model, input_shape, calibration, workdir):
    """Full-integer TFLite of a (quantization-aware or plain) tf_keras model."""
    import tensorflow as tf
    spec = tf.TensorSpec([1] + list(input_shape), tf.float32, name="image")
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda image: {"heatmaps": model(image, training=False)},
                               input_signature=[spec])
    path = os.path.join(workdir, "batch1_saved_model")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    # The same converter settings as export's post-training int8 file.
    from keras_dpn.deploy import calibration as calibration_lib
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    options = calibration_lib.tflite_options("int8", calibration)
    return calibration_lib.apply_tflite_options(converter, options).convert()


def _calibrate_activation_ranges(qat_model, x, batch_size):
    """Sets the QAT activation ranges to the data's before fine-tuning.

    tfmot's activation quantizers start at [-6, 6] and follow the observed
    range with an EMA of decay 0.999, i.e. they need thousands of steps to
    settle. A few epochs on a small set leave them near [-6, 6]: heatmaps
    peaking at ~1 then get ~15 levels and the QAT model is worse than plain
    post-training quantization (measured: 6 px against 1.6 px mean keypoint
    error). So: one eager pass over the data in training mode with the decay
    replaced by a running mean (first batch exact), then the normal decay.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    original = quant_ops.MovingAvgQuantize
    decay = {"value": None}

    def moving_avg_quantize(*args, ema_decay=0.999, **kwargs):
        if decay["value"] is not None:
            ema_decay = decay["value"]
        return original(*args, ema_decay=ema_decay, **kwargs)

    quant_ops.MovingAvgQuantize = moving_avg_quantize
    try:
        for i, start in enumerate(range(0, len(x), batch_size)):
            decay["value"] = i / (i + 1.0)
            qat_model(x[start:start + batch_size], training=True)
    finally:
        quant_ops.MovingAvgQuantize = original


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_dpn.deploy.qat",
        description="Quantization-aware training or pruning of a keras_dpn model, "
                    "ending in a full-integer batch-1 TFLite file.")
    parser.add_argument("--model", required=True, help=".keras heatmap model")
    parser.add_argument("--out", required=True, help="output .tflite path")
    parser.add_argument("--mode", choices=("qat", "prune"), default="qat")
    parser.add_argument("--calibration", help=".npy normalized crops (N, H, W, 3)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam rate (default: 1e-5 for qat, 3e-4 for prune)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--max-crops", type=int, default=64)
    parser.add_argument("--report", help="JSON report path")
    args = parser.parse_args(argv)
    _die_with_parent()
    if not args.out.endswith(".tflite"):
        parser.error(f"--out must end with .tflite. Received: --out={args.out!r}")
    try:
        check_options(args.epochs, args.batch_size, args.learning_rate, args.sparsity,
                      args.max_crops)
    except ValueError as e:
        parser.error(str(e))

    if args.learning_rate is None:
        args.learning_rate = 1e-5 if args.mode == "qat" else 3e-4
    # Must precede the TensorFlow import: tf.keras is tf_keras in this process.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tempfile

    import keras  # Keras 3, to read the source model
    import tensorflow as tf

    # The custom layers are registered: `python -m keras_dpn.deploy.qat` imports the
    # package root (keras_dpn/__init__.py) first, which imports them.
    from keras_dpn.deploy import calibration
    from keras_dpn.core import io_utils

    source = keras.saving.load_model(args.model, compile=False)
    input_shape = tuple(int(s) for s in source.input_shape[1:])
    data = np.load(args.calibration) if args.calibration else None
    data = calibration.calibration_data(data, input_shape[:2], args.max_crops)
    # Fine-tuning targets: the float model's own heatmaps on the crops and
    # their mirror images (distillation; no labels needed).
    train_x = np.concatenate([data, data[:, :, ::-1]], axis=0)
    teacher = np.asarray(source.predict(train_x, batch_size=8, verbose=0), np.float32)

    steps = _plan(source)
    import tensorflow_model_optimization as tfmot
    import tf_keras as tfk

    rebuilt = _build_tf_keras(steps, input_shape)
    rebuilt_out = rebuilt.predict(train_x[:4], verbose=0)
    rebuild_diff = float(np.abs(rebuilt_out - teacher[:4]).max())
    if rebuild_diff > 1e-3:
        raise RuntimeError(f"The tf_keras rebuild disagrees with the Keras 3 model by "
                           f"{rebuild_diff:.3g} (max abs heatmap difference).")

    # Frozen BatchNormalization runs in inference mode in tf_keras: fine-tuning
    # on a few crops must not replace the statistics the model was trained with
    # by those of small batches (measured: it costs more than quantization).
    for layer in rebuilt.layers:
        if isinstance(layer, tfk.layers.BatchNormalization):
            layer.trainable = False
    steps_per_epoch = int(np.ceil(len(train_x) / args.batch_size))
    callbacks = []
    if args.mode == "qat":
        trainee = tfmot.quantization.keras.quantize_model(rebuilt)
        _calibrate_activation_ranges(trainee, train_x, args.batch_size)
    else:
        # The default mask update frequency (100 steps) exceeds a short
        # fine-tuning; update a few times per epoch, reach the target one
        # epoch before the end so that the last epoch recovers from it.
        end_step = max(1, steps_per_epoch * max(1, args.epochs - 1))
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=args.sparsity, begin_step=0,
            end_step=end_step, frequency=max(1, min(steps_per_epoch // 4, end_step // 4)))
        trainee = tfmot.sparsity.keras.prune_low_magnitude(rebuilt, pruning_schedule=schedule)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    trainee.compile(optimizer=tfk.optimizers.Adam(args.learning_rate), loss="mse")
    history = trainee.fit(train_x, teacher, batch_size=args.batch_size, epochs=args.epochs,
                          shuffle=True, verbose=2, callbacks=callbacks)
    if args.mode == "prune":
        trainee = tfmot.sparsity.keras.strip_pruning(trainee)
        kernels = [w for w in trainee.weights if "kernel" in w.name]
        zeros = sum(int(np.sum(w.numpy() == 0)) for w in kernels)
        total = sum(int(np.prod(w.shape)) for w in kernels)
        achieved_sparsity = zeros / max(1, total)
    with tempfile.TemporaryDirectory(prefix="keras_dpn_qat_") as work:
        content = _batch1_tflite(trainee, input_shape, data, work)
    with io_utils.atomic_file(args.out, "wb") as f:
        f.write(content)
    import gzip
    report = dict(
        mode=args.mode, out=os.path.abspath(args.out), rebuild_max_abs_diff=rebuild_diff,
        epochs=args.epochs, learning_rate=args.learning_rate, train_examples=int(len(train_x)),
        loss=[float(v) for v in history.history["loss"]],
        tflite_bytes=len(content), tflite_gzip_bytes=len(gzip.compress(content)),
        tensorflow=tf.__version__, tfmot=tfmot.__version__)
    if args.mode == "prune":
        report["sparsity"] = achieved_sparsity
    if args.report:
        with io_utils.atomic_file(args.report, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
