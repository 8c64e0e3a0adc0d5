"""One run per run folder (keras_dpn.training.run_folder): the lock, the --resume settings check,
deterministic resume, and a run folder that cannot be written (full disk).

Issue 19 item 1: two trainings into one folder mixed their files; a resume
with other settings trained on silently; a resumed deterministic run
differed from an uninterrupted one (weights by up to 3.0); a full disk
printed 122 lines and left history.csv listing an epoch with no checkpoint.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dpn
from fault_helpers import unmount
from keras_dpn.hub import publish
from keras_dpn.training import run_folder
from keras_dpn.training import trainer as training
from keras_dpn.training.trainer import RunFolderWriteError, Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "run_folder_child.py")
STEPS = 2


def _dataset(n=8, batch=4, k=3, size=32):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size, 3)).astype("float32")
    heatmaps = rng.uniform(size=(n, size // 4, size // 4, k)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(
        (images, heatmaps, np.ones((n, k), "float32"))).batch(batch)


def _model():
    return keras_dpn.DPN(num_modules=1, num_keypoints=3, input_shape=(32, 32, 3))


def _trainer(out, epochs=2, **kwargs):
    kwargs.setdefault("seed", 3)
    kwargs.setdefault("verbose", 0)
    return Trainer(_model, output_dir=out, strategy="default", epochs=epochs,
                   steps_per_epoch=STEPS, tensorboard=False, **kwargs)


def _epochs(out):
    with open(os.path.join(out, "history.csv"), newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(folder, **record):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, run_folder.LOCK_FILE), "w") as f:
        json.dump(record, f)


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def test_a_second_run_into_a_held_folder_is_refused(tmp_path):
    """Two real processes: a training holds the folder; a second start and publish are refused."""
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, CHILD, "hold", out], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not os.path.exists(out + ".started"):
            assert holder.poll() is None, holder.communicate()[0][-3000:]
            assert time.time() < deadline, "the child did not start training"
            time.sleep(0.2)
        lock = run_folder.read_lock(out)
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        before = sorted(os.listdir(out))

        with pytest.raises(run_folder.RunFolderLockedError) as refused:
            _trainer(out, epochs=1).fit(_dataset())
        message = str(refused.value)
        assert "\n" not in message and out in message and f"process {holder.pid}" in message
        with pytest.raises(FileExistsError, match=f"in use by a training run.*{holder.pid}"):
            publish.publish_run(out, "held", out_dir=str(tmp_path / "presets"))
        assert not os.path.exists(tmp_path / "presets")
        # The refused run wrote nothing; the holder's files are as they were.
        assert sorted(os.listdir(out)) == before
        assert run_folder.read_lock(out)["pid"] == holder.pid
    finally:
        open(out + ".release", "w").close()
        output = holder.communicate(timeout=120)[0]
    assert holder.returncode == 0, output[-3000:]
    # Released at the end, also when the run ends by an exception (SystemExit here).
    assert not os.path.exists(os.path.join(out, run_folder.LOCK_FILE))
    run_folder.check_not_locked(out)


def test_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    out = str(tmp_path / "run")
    dead = _dead_pid()
    _write_lock(out, pid=dead, host=socket.gethostname(), started="2026-01-01T00:00:00+00:00")
    run_folder.check_not_locked(out)  # publish is not blocked by a dead run
    with run_folder.RunLock(out):  # what Trainer.fit takes first
        assert run_folder.read_lock(out)["pid"] == os.getpid()
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if "stale lock" in line]
    assert len(notes) == 1 and f"process {dead}" in notes[0], printed
    assert not os.path.exists(os.path.join(out, run_folder.LOCK_FILE))
    assert sorted(os.listdir(out)) == []


def test_lock_states(tmp_path):
    out = str(tmp_path / "run")
    # A reused pid: alive (this process) but started at another time than the locker.
    _write_lock(out, pid=os.getpid(), host=socket.gethostname(), pid_start=1)
    assert run_folder.lock_is_stale(run_folder.read_lock(out))
    with run_folder.RunLock(out, verbose=False) as lock:
        assert run_folder.read_lock(out)["pid"] == os.getpid()
        # Held by this live process: a second lock and publish are refused.
        with pytest.raises(run_folder.RunFolderLockedError, match=f"process {os.getpid()}"):
            run_folder.RunLock(out).acquire()
        with pytest.raises(run_folder.RunFolderLockedError):
            run_folder.check_not_locked(out)
        assert lock.record["pid_start"] is not None
    assert not os.path.exists(os.path.join(out, run_folder.LOCK_FILE))
    # Another host's lock cannot be checked: refused, naming the file to delete.
    _write_lock(out, pid=_dead_pid(), host="elsewhere.example")
    with pytest.raises(run_folder.RunFolderLockedError, match=r"elsewhere\.example.*\.lock"):
        run_folder.RunLock(out).acquire()
    # A lock that is not JSON: refused too (never deleted on a guess).
    with open(os.path.join(out, run_folder.LOCK_FILE), "w") as f:
        f.write("{half")
    with pytest.raises(run_folder.RunFolderLockedError, match="unreadable lock file"):
        run_folder.RunLock(out).acquire()
    # A run refused before it wrote anything leaves no folder behind.
    new = str(tmp_path / "new")
    with run_folder.RunLock(new, verbose=False):
        pass
    assert not os.path.exists(new)


def test_resume_refuses_other_settings_and_keeps_the_record(tmp_path):
    out = str(tmp_path / "run")
    info = dict(recipe={"input_size": [64, 48], "batch_size": 4, "epochs": 1, "verbose": 0})
    _trainer(out, epochs=1, run_info=info).fit(_dataset())
    config = os.path.join(out, "run_config.json")
    with open(config, "rb") as f:
        recorded = f.read()
    changed = dict(recipe={"input_size": [96, 64], "batch_size": 4, "epochs": 2, "verbose": 2})
    with pytest.raises(run_folder.ResumeSettingsError) as refused:
        _trainer(out, epochs=2, run_info=changed).fit(_dataset(), resume=True)
    message = str(refused.value)
    assert message.startswith("--resume: input_size differs from run_config.json: "
                              "(64, 48) there, (96, 64) now"), message
    assert "\n" not in message and "epochs" not in message.split(". ")[0]
    # Trainer settings without a recipe: the learning rate and the seed.
    with pytest.raises(ValueError, match=r"training\.learning_rate differs.*0\.001 there, "
                                         r"0\.01 now; training\.seed differs.*3 there, 4 now"):
        _trainer(out, epochs=2, run_info=info, learning_rate=1e-2, seed=4).fit(
            _dataset(), resume=True)
    with open(config, "rb") as f:
        assert f.read() == recorded
    assert training.read_state(out)["epoch"] == 1
    # More epochs, another verbosity: allowed, and the record follows.
    more = dict(recipe=dict(info["recipe"], epochs=2, verbose=1))
    assert _trainer(out, epochs=2, run_info=more).fit(_dataset(), resume=True)["epoch"] == [1]
    assert publish.read_run_config(out)["training"]["epochs"] == 2
    assert _epochs(out) == [1, 2]


class _FullDisk:
    """Makes the tf.train checkpoint of epoch ``epoch`` (1-based) fail like a full disk."""

    def __init__(self, monkeypatch, epoch):
        self.epoch = epoch
        real = tf.train.CheckpointManager.save

        def save(manager, checkpoint_number=None, **kwargs):
            if checkpoint_number == self.epoch:
                os.makedirs(os.path.join(manager.directory, f"ckpt-{self.epoch}_temp"))
                raise tf.errors.ResourceExhaustedError(
                    None, None, f"{manager.directory}/ckpt-{self.epoch}_temp/part-00000; No "
                    "space left on device [Op:SaveV2]")
            return real(manager, checkpoint_number=checkpoint_number, **kwargs)

        monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def test_full_disk_one_line_and_history_follows_checkpoints(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    _FullDisk(monkeypatch, epoch=2)
    with pytest.raises(RunFolderWriteError) as failed:
        _trainer(out, epochs=3).fit(_dataset())
    message = str(failed.value)
    assert "\n" not in message and out in message and "No space left on device" in message
    assert "epoch 2" in message and isinstance(failed.value, ValueError)
    # history.csv lists only the checkpointed epoch; no half checkpoint, no lock.
    assert training.read_state(out)["epoch"] == 1
    assert _epochs(out) == [1]
    assert not [n for n in os.listdir(os.path.join(out, "checkpoints")) if n.endswith("_temp")]
    assert not os.path.exists(os.path.join(out, run_folder.LOCK_FILE))

    # A kill between a checkpoint and its history row looks like this: the row is missing.
    path = os.path.join(out, "history.csv")
    with open(path, newline="") as f:
        row = next(csv.DictReader(f))
    with open(path, "w") as f:
        f.write("epoch,loss,lr\n")

    # Space again: the resume follows the written rows (the missing one comes back from
    # state.json), no epoch missing or twice.
    monkeypatch.undo()
    assert _trainer(out, epochs=3).fit(_dataset(), resume=True)["epoch"] == [1, 2]
    assert _epochs(out) == [1, 2, 3]
    with open(path, newline="") as f:
        restored = next(csv.DictReader(f))
    assert float(restored["loss"]) == pytest.approx(float(row["loss"]))
    assert float(restored["lr"]) == pytest.approx(float(row["lr"]))


def _mount_tmpfs(path, size):
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True)
    return done.returncode == 0


def test_training_on_a_real_full_disk_prints_one_line(tmp_path):
    """A small tmpfs (root on Linux): the whole stderr is the one error line, no h5py noise."""
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "12m"):
        pytest.skip("needs root and tmpfs to make a small file system")
    try:
        out = os.path.join(disk, "run")
        env = dict(_env(), TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, CHILD, "full", out], env=env,
                              capture_output=True, text=True, timeout=400)
        lines = [line for line in done.stderr.splitlines()
                 if line.strip() and not line.startswith(("WARNING: All log", "I0000", "W0000",
                                                          "E0000", "To enable"))]
        assert done.returncode == 2, done.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith(f"error: Could not write"), lines[:20]
        assert "No space left on device" in lines[0] and out in lines[0]
        state = training.read_state(out)
        written = state["epoch"] if state else 0
        assert written < 3
        assert (_epochs(out) if os.path.exists(os.path.join(out, "history.csv")) else []) == \
            list(range(1, written + 1))
        assert not os.path.exists(os.path.join(out, run_folder.LOCK_FILE))
    finally:
        unmount(disk)


def test_read_only_output_is_refused_before_the_model_is_built(tmp_path):
    disk = str(tmp_path / "ro")
    if not _mount_tmpfs(disk, "1m,ro"):
        pytest.skip("needs root and tmpfs to make a read-only file system")
    try:
        def model_fn():
            raise AssertionError("the model was built")

        out = os.path.join(disk, "run")
        with pytest.raises(RunFolderWriteError) as refused:
            Trainer(model_fn, output_dir=out, strategy="default", epochs=1,
                    steps_per_epoch=STEPS, verbose=0).fit(_dataset())
        message = str(refused.value)
        assert "\n" not in message and out in message and "Read-only file system" in message
        assert isinstance(refused.value, ValueError)
    finally:
        unmount(disk)


def test_deterministic_resume_is_bit_identical(tmp_path):
    """--deterministic --seed 1 through build_dataset (shuffle, reference augmentation)
    and model.fit: stopped after epoch 1 and resumed == uninterrupted, bit for bit."""
    done = subprocess.run([sys.executable, CHILD, "resume", str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    result = np.load(tmp_path / "result.npz")
    assert len(result["straight_loss"]) == 3
    np.testing.assert_array_equal(result["resumed_loss"], result["straight_loss"])
    names = [k.split("/", 1)[1] for k in result.files if k.startswith("straight/")]
    assert len(names) == len([k for k in result.files if k.startswith("resumed/")]) > 150
    for name in names:  # model weights, BN statistics, Adam moments and step counter
        np.testing.assert_array_equal(result[f"resumed/{name}"], result[f"straight/{name}"],
                                      err_msg=name)


def test_person_crops_resume_at_their_epoch(tmp_path, sample_dir):
    """A PyDataset (PersonCrops, the path without TensorFlow) continues at the resumed
    epoch's order and draws, not at epoch 0's."""
    from keras_dpn.data import PersonCrops
    coco = sample_dir / "coco"
    args = (str(coco / "annotations" / "person_keypoints_sample.json"), str(coco / "images"))
    kwargs = dict(batch_size=16, input_size=(64, 48), heatmap_size=(16, 12), seed=3)
    straight = PersonCrops(*args, **kwargs)
    first = straight[0]
    straight.on_epoch_end()
    straight.on_epoch_end()
    resumed = PersonCrops(*args, **kwargs)
    resumed.set_epoch(2)
    assert len(resumed[0]) == len(straight[0]) == 3
    for a, b in zip(resumed[0], straight[0]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(resumed[0][1], first[1])

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def __len__(self):
            return STEPS

        def __getitem__(self, index):
            x = np.zeros((2, 32, 32, 3), "float32")
            return x, np.zeros((2, 8, 8, 3), "float32"), np.ones((2, 3), "float32")

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    out = str(tmp_path / "run")
    batches = Batches()
    _trainer(out, epochs=1).fit(batches)
    _trainer(out, epochs=2).fit(batches, resume=True)
    assert batches.epochs == [1]


def test_train_command_exits_3_when_the_loss_diverges(tmp_path, capsys):
    """An absurd learning rate: one error line, exit status 3, no checkpoint, no lock."""
    from keras_dpn.cli import train as train_command
    shards = str(tmp_path / "shards")
    train_command.sample_shards("coco", shards)
    out = str(tmp_path / "run")
    status = train_command.main([
        "--model", "DPN1_32", "--input-size", "64", "48", "--batch-size", "4",
        "--steps-per-epoch", "2", "--strategy", "default", "--verbose", "0", "--seed", "0",
        "--shards-dir", shards, "--output", out, "--epochs", "2", "--lr", "1e30",
        "--export-formats", "none"])
    err = capsys.readouterr().err
    assert status == 3, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: Training diverged"), err
    assert training.read_state(out) is None
    assert not os.path.exists(os.path.join(out, "history.csv"))
    assert not os.path.exists(os.path.join(out, run_folder.LOCK_FILE))
