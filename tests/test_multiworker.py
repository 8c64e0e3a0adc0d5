"""Two-worker MultiWorkerMirroredStrategy training on 127.0.0.1.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so ``keras_dpn.training.trainer.Trainer`` runs its custom
loop there. This test starts two real worker processes (each with its own
``TF_CONFIG``), trains a tiny DPN for a few steps on synthetic data and checks
that both workers end with identical weights that differ from the start,
that only the chief wrote checkpoints, and that the run can be resumed.

The file doubles as the worker program: ``python tests/test_multiworker.py
--worker OUT`` (reads ``TF_CONFIG``).
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 120
EPOCHS, STEPS = 2, 3


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _worker(out_dir, epochs):
    """Runs inside a worker process: train, then save the weights per worker."""
    import tensorflow as tf

    import keras_dpn
    from keras_dpn.training import trainer as training

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    # First TF call of the process: collective ops must be configured before
    # anything (even a dataset) initializes the runtime.
    strategy = training.get_strategy("multi_worker")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(24, 32, 32, 3)).astype("float32")
    heatmaps = rng.uniform(size=(24, 8, 8, 3)).astype("float32")
    weights = np.ones((24, 3), "float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, heatmaps, weights)).batch(4)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)

    initial = {}

    def model_fn():
        model = keras_dpn.DPN(num_modules=1, width=32, num_keypoints=3, input_shape=(32, 32, 3))
        initial.update({v.path: v.numpy() for v in model.trainable_weights})
        return model

    trainer = training.Trainer(model_fn, output_dir=os.path.join(out_dir, "run"),
                               strategy=strategy, epochs=epochs, steps_per_epoch=STEPS,
                               learning_rate=1e-2, lr_boundaries=(1,), verbose=0,
                               seed=1)  # same initial weights on every worker
    assert trainer.loop == "custom"
    assert trainer.strategy.num_replicas_in_sync == 2
    history = trainer.fit(dataset, resume=True)
    final = {v.path: v.numpy() for v in trainer.model.trainable_weights}
    np.savez(os.path.join(out_dir, f"worker{task}_initial.npz"), **initial)
    np.savez(os.path.join(out_dir, f"worker{task}_final.npz"), **final)
    with open(os.path.join(out_dir, f"worker{task}.json"), "w") as f:
        json.dump({"history": history, "chief": trainer.chief,
                   "step": int(trainer.optimizer.iterations.numpy())}, f)


def _run_cluster(out_dir, epochs):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    env_base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                    PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for index in range(2):
        env = dict(env_base, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(os.path.join(out_dir, f"worker{index}.log"), "w")
        procs.append((subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", out_dir, str(epochs)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
    deadline = time.time() + TIMEOUT_S
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for index, (proc, _) in enumerate(procs):
        if proc.returncode != 0:
            with open(os.path.join(out_dir, f"worker{index}.log")) as f:
                tail = f.read()[-3000:]
            pytest.fail(f"worker {index} exited with {proc.returncode}:\n{tail}")


def _load(out_dir, index, which):
    with np.load(os.path.join(out_dir, f"worker{index}_{which}.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.timeout(2 * TIMEOUT_S + 30)
def test_two_workers_train_identical_weights_and_resume(tmp_path):
    out = str(tmp_path)
    _run_cluster(out, EPOCHS)
    w0, w1 = _load(out, 0, "final"), _load(out, 1, "final")
    init = _load(out, 0, "initial")
    assert w0.keys() == w1.keys() == init.keys()
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    changed = [n for n in w0 if not np.array_equal(w0[n], init[n])]
    assert len(changed) == len(w0), "every trainable weight should have moved"

    infos = [json.load(open(os.path.join(out, f"worker{i}.json"))) for i in range(2)]
    assert [i["chief"] for i in infos] == [True, False]
    assert infos[0]["history"]["epoch"] == list(range(EPOCHS))
    assert infos[0]["step"] == infos[1]["step"] == EPOCHS * STEPS
    run = os.path.join(out, "run")
    state = json.load(open(os.path.join(run, "checkpoints", "state.json")))
    assert state["epoch"] == EPOCHS and state["step"] == EPOCHS * STEPS
    # The non-chief's throw-away checkpoint copy is gone.
    assert sorted(p for p in os.listdir(run) if p.startswith(".tmp")) == []

    # A second launch with one more epoch resumes from the chief's checkpoint.
    _run_cluster(out, EPOCHS + 1)
    infos = [json.load(open(os.path.join(out, f"worker{i}.json"))) for i in range(2)]
    assert infos[0]["history"]["epoch"] == [EPOCHS]
    assert infos[0]["step"] == infos[1]["step"] == (EPOCHS + 1) * STEPS
    w0, w1 = _load(out, 0, "final"), _load(out, 1, "final")
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: test_multiworker.py --worker OUT_DIR EPOCHS")
