"""One run per run folder: its files, ``run_config.json``, the lock and the resume check.

The run folder's contract lives here, shared by the writer
(:class:`keras_dpn.training.trainer.Trainer`) and the reader (``keras-dpn publish``,
:mod:`keras_dpn.hub.publish`), which import this module and not each other: the
file names (:data:`RUN_CONFIG`, :data:`BEST_WEIGHTS`, ...), ``run_config.json``
(:func:`record_run`, :func:`read_run_config`), ``checkpoints/state.json``
(:func:`read_state`) and the :func:`architecture_fingerprint` both record.

A training run (:class:`keras_dpn.training.trainer.Trainer`) holds ``OUTPUT/.lock``
(JSON: pid, host, start time) from before its first write until it ends,
exceptions included. A second run into the same folder is refused, and so
is ``keras-dpn publish`` of a folder whose run is still going. A lock whose
process is gone (same host, pid not alive, or alive but started later: a
reused pid) is stale, e.g. after ``kill -9``: the next run takes it over
with a one-line note. A lock of another host cannot be checked and is
refused; the message says which file to delete once that run is over.

``--resume`` continues a run with the settings it was started with
(:func:`check_resume_settings`): every recorded setting must be the same,
except those in :data:`RESUME_MAY_CHANGE` (they change no weight of the
epochs still to come, or extend the run).

No TensorFlow here: ``keras-dpn publish`` reads locks without it.
"""

import contextlib
import datetime
import hashlib
import json
import os
import socket
import tempfile

import numpy as np

from keras_dpn._version import __version__
from keras_dpn.core.io_utils import atomic_file
from keras_dpn.core.keypoints import check_keypoint_count, get_keypoint_spec, keypoint_source
from keras_dpn.models.config import builder_config

LOCK_FILE = ".lock"
# The files of a run folder (OUTPUT/...): declared once, here.
RUN_CONFIG = "run_config.json"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"  # in CHECKPOINT_DIR
BEST_WEIGHTS = "best.weights.h5"
BEST_JSON = "best.json"
HISTORY_CSV = "history.csv"
LOG_DIR = "logs"
EXPORT_DIR = "export"

# Settings that may differ on --resume: how long the run goes (epochs, to
# extend it), how loud it is, how often and with which flip test it
# evaluates, what it exports at the end, and --backend spelled out (a real
# backend change is refused by the checkpoint format). Everything else
# recorded in run_config.json (model, input size, batch, learning rate and
# schedule, augmentation, seed, determinism, precision, strategy, data)
# must match. The last five are bookkeeping, not settings.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "verbose", "eval_every", "flip_test", "export_formats", "backend",
    "resume", "output", "updated", "created", "keras_dpn_version"})
_BOOKKEEPING = frozenset({"resume", "output", "updated", "created", "keras_dpn_version"})


class RunFolderLockedError(FileExistsError):
    """Raised when another live process holds a run folder's lock."""


class RunFolderWriteError(OSError, ValueError):
    """Raised when the run folder cannot be written (full disk, read-only, removed).

    One line naming the path (and, while training, the epoch whose files were
    not written: the previous checkpoint stays the newest and ``history.csv``
    does not list the epoch). A ``ValueError`` too, so that the commands
    report it as one line.
    """


class ResumeSettingsError(ValueError):
    """Raised when ``--resume`` asks for settings the run was not started with."""


def _process_start(pid):
    """The process's start time in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            # Field 22; the command name (field 2) may hold spaces, so split after ')'.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def read_lock(run_dir):
    """The lock record of a run folder (a dict), or None when it has no lock."""
    path = os.path.join(os.fspath(run_dir), LOCK_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"path": path}  # unreadable: treated as held by an unknown process
    if not isinstance(record, dict):
        return {"path": path}
    record["path"] = path
    return record


def lock_is_stale(record):
    """True when the process of a lock ``record`` is certainly gone (checked on its host)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if not _pid_alive(record["pid"]):
        return True
    start = _process_start(record["pid"])
    # Alive, but another process than the one that locked: the pid was reused.
    return start is not None and record.get("pid_start") is not None \
        and start != record["pid_start"]


def _describe(record):
    if "pid" not in record:
        return f"an unreadable lock file {record['path']}"
    return (f"process {record.get('pid')} on {record.get('host')} (since "
            f"{record.get('started', '?')})")


def check_not_locked(run_dir, action="publish it"):
    """Raises :class:`RunFolderLockedError` when a live run holds ``run_dir``'s lock.

    A stale lock (its process is gone) is no obstacle.
    """
    record = read_lock(run_dir)
    if record is None or lock_is_stale(record):
        return
    raise RunFolderLockedError(
        f"The run folder {os.fspath(run_dir)} is in use by a training run: "
        f"{_describe(record)} holds {record['path']}. Wait for it to finish before you "
        f"{action} (delete the lock file only if that run is gone).")


class RunLock:
    """``OUTPUT/.lock``: held by one training run from its first write to its end.

    Use as a context manager, or ``acquire()`` / ``release()``. Created
    complete or not at all: written to a temporary file, then hard-linked to
    ``.lock``, which fails when the file exists (``O_CREAT | O_EXCL``
    semantics without a moment where the file is empty).

    Args:
        run_dir: the run folder (created when missing).
        verbose: print the note when a stale lock is taken over.

    Raises (from ``acquire``):
        RunFolderLockedError: a live process holds the lock.
        OSError: the folder cannot be written (read-only, full disk), with a
            message naming it.
    """

    def __init__(self, run_dir, verbose=True):
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.path = os.path.join(self.run_dir, LOCK_FILE)
        self.verbose = verbose
        self.record = None
        self._created = False

    def _try_create(self):
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "pid_start": _process_start(os.getpid()),
                       "started": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")}
        fd, tmp = tempfile.mkstemp(prefix=".lock.partial-", dir=self.run_dir)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
                f.write("\n")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:
                # No hard links here (some network or FUSE file systems): exclusive create.
                try:
                    fd2 = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd2, "w") as f:
                    json.dump(self.record, f)
                    f.write("\n")
            return True
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def acquire(self):
        try:
            self._created = not os.path.isdir(self.run_dir)
            os.makedirs(self.run_dir, exist_ok=True)
            if self._try_create():
                return self
            record = read_lock(self.run_dir)
            if record is not None and lock_is_stale(record):
                # Renamed away first: of two runs taking over at once, one rename wins.
                aside = f"{self.path}.stale-{os.getpid()}"
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    pass
                else:
                    os.remove(aside)
                    if self.verbose:
                        print(f"Note: took over the stale lock {self.path} of "
                              f"{_describe(record)}, which is no longer running.", flush=True)
                if self._try_create():
                    return self
                record = read_lock(self.run_dir)
        except OSError as e:
            error = RunFolderWriteError(f"Cannot write the run folder {self.run_dir} "
                                        f"({e.strerror or e}); nothing was written. "
                                        f"Received: output_dir={self.run_dir!r}")
            error.errno = e.errno
            raise error from None
        self.record = None
        raise RunFolderLockedError(
            f"The run folder {self.run_dir} is in use by another training run: "
            f"{_describe(record or {'path': self.path})} holds {self.path}. Choose another "
            "output folder, or wait for that run to end (delete the lock file only if that run "
            "is gone); nothing was written.")

    def release(self):
        """Removes the lock if this process still holds it."""
        if self.record is None:
            return
        current = read_lock(self.run_dir)
        if current is not None and current.get("pid") == self.record["pid"] \
                and current.get("started") == self.record["started"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)
                if self._created:
                    os.rmdir(self.run_dir)  # only when empty: a run refused before writing
        self.record = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# ---------------------------------------------------------------------------
# --resume settings


def _plain(value):
    """JSON-normal form: tuples become lists, unknown objects their str()."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _show(value):
    if isinstance(value, list):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return repr(value) if isinstance(value, str) else json.dumps(value)


def _differences(before, now, prefix=""):
    """``(key, before, now)`` for every recorded setting that changed.

    Keys missing on either side (records of older versions) are skipped, and
    so are the keys of :data:`RESUME_MAY_CHANGE` at any depth.
    """
    if isinstance(before, dict) and isinstance(now, dict):
        found = []
        for key in sorted(set(before) & set(now)):
            if key in RESUME_MAY_CHANGE:
                continue
            found += _differences(before[key], now[key], f"{prefix}{key}.")
        return found
    if before != now:
        return [(prefix.rstrip("."), before, now)]
    return []


def check_resume_settings(recorded, current, run_dir):
    """Refuses a resume whose settings differ from the run's ``run_config.json``.

    Args:
        recorded: the run's ``run_config.json`` (dict).
        current: what this run would record (same layout:
            :func:`run_record`).
        run_dir: the run folder, for the message.

    Raises:
        ResumeSettingsError: one line naming each differing setting, its
            recorded value and the new one. The recipe's own flags
            (``recipe.*``) are reported when they differ; otherwise the
            trainer's settings, the model's builder arguments, the keypoint
            set and the data.
    """
    before, now = _plain(recorded), _plain(current)
    recipe = _differences(before.get("recipe", {}), now.get("recipe", {}))
    # The architecture is checked against the checkpoint itself (with a message
    # of its own), and its auto-generated model name may differ in one process.
    rest = {"recipe", "architecture"}
    found = recipe or _differences({k: v for k, v in before.items() if k not in rest},
                                   {k: v for k, v in now.items() if k not in rest})
    if not found:
        return
    parts = [f"{key} differs from run_config.json: {_show(old)} there, {_show(new)} now"
             for key, old, new in found]
    raise ResumeSettingsError(
        f"--resume: {'; '.join(parts)}. Resume with the run's settings (only "
        f"{', '.join(sorted(RESUME_MAY_CHANGE - _BOOKKEEPING))}"
        f" may change) or start a new run in another folder; nothing was written. "
        f"Received: output_dir={os.fspath(run_dir)!r}")


# ---------------------------------------------------------------------------
# The run folder's files and run_config.json: written by the Trainer
# (keras_dpn.training.trainer), read by keras-dpn publish (keras_dpn.hub.publish).


def architecture_fingerprint(model):
    """Describes a model's variables: name, count and a hash of paths and shapes.

    Two models share a fingerprint exactly when every checkpointed variable
    has the same path and shape, i.e. when a checkpoint of one restores
    into the other.
    """
    entries = [f"{v.path}:{tuple(v.shape)}" for v in model.weights]
    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
    return {"name": model.name, "num_weights": len(entries),
            "num_params": int(sum(int(np.prod(v.shape)) for v in model.weights)),
            "sha256_16": digest}


def read_state(output_dir):
    """Returns the ``state.json`` of a training folder, or None if it has none."""
    path = os.path.join(os.fspath(output_dir), CHECKPOINT_DIR, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _trainer_settings(trainer):
    names = ("learning_rate", "lr_boundaries", "lr_factor", "epochs", "steps_per_epoch",
             "precision", "loop", "jit_compile", "monitor", "monitor_mode", "seed",
             "deterministic")
    settings = {k: getattr(trainer, k) for k in names if hasattr(trainer, k)}
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None:
        settings["strategy"] = type(strategy).__name__
        settings["replicas"] = int(getattr(strategy, "num_replicas_in_sync", 1))
    return settings


def record_run(output_dir, trainer=None, model=None, **info):
    """Records what a run trains in ``OUTPUT/run_config.json`` (atomic; merged on resume).

    Args:
        output_dir: the run folder.
        trainer: a :class:`keras_dpn.training.trainer.Trainer` (its model and
            settings are recorded).
        model: the model, when there is no trainer.
        **info: more entries, e.g. ``keypoints="coco"``, ``dataset={...}``,
            ``training={...}`` (merged into the trainer's settings),
            ``recipe={...}``.

    Returns:
        The recorded dict.
    """
    path = os.path.join(os.fspath(output_dir), RUN_CONFIG)
    previous = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}  # a damaged record is rewritten whole
    record = dict(previous)
    record.setdefault("created", _now())
    record["updated"] = _now()
    record["keras_dpn_version"] = __version__
    current = run_record(trainer=trainer, model=model, **info)
    record["training"] = {**(previous.get("training") or {}), **current.pop("training")}
    if "keypoints" in current and "keypoints" not in info and not (
            trainer is not None and "keypoints" in (getattr(trainer, "run_info", None) or {})):
        record.setdefault("keypoints", current.pop("keypoints"))
    record.update(current)
    with atomic_file(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return record


def run_record(trainer=None, model=None, **info):
    """What :func:`record_run` records of this run's settings (no file is read or written).

    ``--resume`` compares it with the run's ``run_config.json``
    (:func:`check_resume_settings`).
    """
    model = model if model is not None else getattr(trainer, "model", None)
    training = {}
    if trainer is not None:
        training.update(_trainer_settings(trainer))
        info = {**(getattr(trainer, "run_info", None) or {}), **info}
    training.update(info.pop("training", None) or {})
    record = {"training": training}
    if model is not None:
        record["model"] = builder_config(model)
        record["architecture"] = architecture_fingerprint(model)
        num_k = int(model.output_shape[-1])
        record["keypoints"] = {17: "coco", 16: "mpii"}.get(num_k)
    record.update(info)
    if record.get("keypoints") is not None:
        record["keypoints"] = keypoints_record(
            record["keypoints"], None if model is None else int(model.output_shape[-1]))
    return record


def keypoints_record(keypoints, num_keypoints=None):
    """``run_config.json``'s ``keypoints``: the whole set as data (``KeypointSpec.to_dict``).

    Args:
        keypoints: a set name, a keypoint-set file, a dict or a ``KeypointSpec``.
        num_keypoints: the model's heatmap count, checked against the set.

    Raises:
        ValueError: an invalid set, or one of another joint count than the model.
    """
    spec = get_keypoint_spec(keypoints)
    if num_keypoints is not None:
        check_keypoint_count(spec, num_keypoints, "the model's head",
                             keypoint_source(keypoints))
    return spec.to_dict()


def read_run_config(run_dir):
    """The ``run_config.json`` of a run folder.

    Raises:
        ValueError: the folder or the file is missing or unreadable.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ValueError(f"The run folder does not exist. Received: run_dir={run_dir!r}")
    path = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        raise ValueError(
            f"The run folder holds no {RUN_CONFIG}, so its builder arguments are unknown (runs "
            "record it from keras-dpn 0.2: Trainer, recipes/train_coco.py). "
            f"Received: run_dir={run_dir!r}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{RUN_CONFIG} cannot be read ({e}). Received: run_dir={run_dir!r}") from e
