"""TFRecord shard writer shared by the COCO and MPII builders.

Work is split by shard: each worker process writes whole shards, so shards
never interleave writes and a shard is either finished and renamed into place
or absent. Every shard is written under a temporary name and renamed when
complete (``io_utils.atomic_path``); a ``PREFIX-manifest.json`` listing every
shard with its record and people counts and byte size is written last, so a
killed build leaves no manifest and the reader refuses an incomplete set.

Writer processes die with the build: a worker that finds its parent gone
(``PR_SET_PDEATHSIG`` on Linux, a watch on the parent's sentinel everywhere)
removes its unfinished shard and exits instead of renaming it into the
output folder. A rebuild into the same prefix first removes what an
interrupted build left there (unfinished ``.partial`` files and staging
folders, shards without a manifest, shards of another ``-of-`` count), so two
builds never mix.

A complete set (one with its manifest) is replaced only with
``overwrite=True``, and only once the new set is whole: the new shards and
manifest are written into a staging folder beside the prefix
(``.NAME-shards.partial-PID-XXXXXXXX``) and moved into place at the end, so a
rebuild that fails (no usable person, a full disk, a kill) leaves the old set
as it was. I/O faults of the writer (read-only folder, full disk) raise
:class:`ShardWriteError`, one line naming the path.

Images and annotations that cannot be used are skipped and counted by
reason; :func:`format_report` prints the counts with examples.
"""

import collections
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue as queue_lib
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

import numpy as np

from keras_dpn.core import io_utils
from keras_dpn.core.optional import tf_data as tf
from keras_dpn.core.keypoints import get_keypoint_spec

logger = logging.getLogger("keras_dpn.data")

SHARD_RE = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<total>\d{5})\.tfrecord$")
MANIFEST_SUFFIX = "-manifest.json"
# io_utils.atomic_path's temporary names: ".STEM.partial-XXXXXXXX.REST" for "STEM.REST".
PARTIAL_RE = re.compile(r"^\.(?P<stem>[^.]*)\.partial-[A-Za-z0-9_]{8}(?P<rest>.*)$")
# Seconds an orphaned worker waits for its SIGTERM handler (which removes the
# unfinished shard) before it exits without it.
ORPHAN_GRACE_S = 5.0

# Reasons that drop an annotation or an image (counted and printed).
SKIP_REASONS = {
    "crowd": "crowd annotation",
    "no_keypoints": "no labelled keypoints",
    "no_keypoints_in_image": "every labelled keypoint outside the image",
    "not_person_category": "category without keypoints",
    "annotation_for_unknown_image": "annotation names an image id not in `images`",
    "non_finite_values": "NaN or infinite box/keypoint values",
    "zero_area_box": "box of zero area after clipping to the image",
    "box_outside_image": "box entirely outside the image",
    "missing_image_file": "image file does not exist",
    "unreadable_image_file": "image file cannot be read (permissions, I/O error)",
    "corrupt_image": "image file cannot be decoded",
    "people_in_skipped_images": "people lost with a skipped image",
    "image_without_people_dropped": "image left without people (dropped by request)",
}
# Changes that keep the data but are worth knowing about.
# Spawning a worker costs seconds (it imports TensorFlow); below this many
# images per worker, writing in this process is faster.
MIN_IMAGES_PER_WORKER = 100

NOTE_REASONS = {
    "joints_outside_image_set_invisible": "labelled joints outside the image, marked invisible",
    "image_size_differs_from_annotation": "decoded size differs from the annotation's; decoded used",
    "reencoded_to_jpeg": "non-JPEG image re-encoded as JPEG (quality 95)",
    "images_without_people_kept": "images without usable people kept (evaluation with detections)",
}


class WorkerDiedError(RuntimeError):
    """A shard writer process died (killed from outside) before finishing its shards."""


class ShardWriteError(OSError):
    """The shards cannot be written (read-only folder, full disk, a file in the way).

    Its message is one line naming the path; nothing half-written is kept.
    """


class SkipCounter:
    """Counts skips by reason and keeps a few examples of each."""

    def __init__(self, max_examples=5):
        self.counts = collections.Counter()
        self.examples = collections.defaultdict(list)
        self.max_examples = max_examples

    def add(self, reason, example=None, count=1):
        self.counts[reason] += count
        if example is not None and len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append(str(example))

    def update(self, other):
        for reason, n in other.counts.items():
            self.counts[reason] += n
            room = self.max_examples - len(self.examples[reason])
            self.examples[reason].extend(other.examples.get(reason, [])[:max(room, 0)])

    def to_dict(self):
        return {r: {"count": n, "examples": self.examples.get(r, [])}
                for r, n in sorted(self.counts.items())}

    @classmethod
    def from_dict(cls, d):
        out = cls()
        for r, v in d.items():
            out.counts[r] = v["count"]
            out.examples[r] = list(v["examples"])
        return out


def shard_name(prefix, index, total):
    return f"{prefix}-{index:05d}-of-{total:05d}.tfrecord"


def manifest_path(prefix):
    return f"{prefix}{MANIFEST_SUFFIX}"


def _is_jpeg(data):
    return data[:3] == b"\xff\xd8\xff"


def clean_person(person, height, width, skips, where):
    """Clips the box to the image and checks it (the reference's ``clean_bbox``)."""
    kp = np.asarray(person["keypoints"], np.float32)
    x, y, w, h = (float(v) for v in person["bbox"])
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        skips.add("box_outside_image", where)
        return None
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    area = float(person.get("area", w * h))
    if area <= 0 or x2 - x1 <= 0 or y2 - y1 <= 0:
        skips.add("zero_area_box", where)
        return None
    labelled = kp[:, 2] > 0
    outside = labelled & ((kp[:, 0] < 0) | (kp[:, 1] < 0) | (kp[:, 0] > width - 1)
                          | (kp[:, 1] > height - 1))
    if labelled.any() and not (labelled & ~outside).any():
        # Checked after the clipping: a person whose joints all fall outside
        # the image would train with zero weight on every joint.
        skips.add("no_keypoints_in_image", where)
        return None
    if outside.any():
        kp = kp.copy()
        kp[outside, 2] = 0
        skips.add("joints_outside_image_set_invisible", where, count=int(outside.sum()))
    out = dict(person, keypoints=kp, bbox=[x1, y1, x2 - x1, y2 - y1], area=area)
    return out


def _encode_image(entry, skips, decode_jpeg):
    """Reads and checks one image; returns (bytes, height, width) or None."""
    where = f"{entry['filename']} (image id {entry['image_id']})"
    path = entry["path"]
    if not os.path.isfile(path):
        skips.add("missing_image_file", f"{path} (image id {entry['image_id']})")
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        skips.add("unreadable_image_file", f"{path} (image id {entry['image_id']}): "
                                           f"{e.strerror or e}")
        return None
    try:
        if _is_jpeg(data):
            shape = decode_jpeg(data).shape
        else:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            data = tf.io.encode_jpeg(image, quality=95).numpy()
            skips.add("reencoded_to_jpeg", where)
            shape = image.shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError) as e:
        skips.add("corrupt_image", f"{path} (image id {entry['image_id']}): "
                                   f"{str(e).splitlines()[0][:120]}")
        return None
    height, width = int(shape[0]), int(shape[1])
    if (entry.get("height"), entry.get("width")) != (height, width) and entry.get("height"):
        skips.add("image_size_differs_from_annotation",
                  f"{where}: annotation {entry.get('height')}x{entry.get('width')}, "
                  f"file {height}x{width}")
    return data, height, width


def _serialize(entry, data, height, width, people, num_keypoints):
    from keras_dpn.data.decoder import make_example
    p = len(people)
    has_center = p > 0 and people[0].get("center") is not None
    ex = make_example(
        data, entry["image_id"], entry["filename"], height, width,
        bbox=np.array([q["bbox"] for q in people], np.float32).reshape(p, 4),
        keypoints=np.array([q["keypoints"] for q in people], np.float32).reshape(p, num_keypoints, 3),
        area=[q["area"] for q in people], iscrowd=[q.get("iscrowd", 0) for q in people],
        person_id=[q["id"] for q in people],
        center=[q["center"] for q in people] if has_center else None,
        scale=[q["scale"] for q in people] if has_center else None)
    return ex.SerializeToString()


_PROGRESS = None
# What a SIGTERM finds a writer doing: "idle", "writing" (a shard is open) or
# "unwinding" (removing it after the first SIGTERM).
_WRITER_STATE = "idle"
# True in a pool writer process: only there does a shard install its SIGTERM handler.
_IN_WORKER = False


def _exit_on_sigterm(signum, frame):
    global _WRITER_STATE
    if _WRITER_STATE == "writing":
        # SystemExit unwinds through io_utils.atomic_path, which removes the
        # unfinished .partial file; the default SIGTERM action would leave it.
        _WRITER_STATE = "unwinding"
        raise SystemExit(128 + signum)
    if _WRITER_STATE == "unwinding":
        return  # a second SIGTERM (parent death + pool.terminate) must not cut the cleanup
    # Nothing open: exit at once. Raised here, a SystemExit could land in an
    # atexit callback of the finishing worker and print "Exception ignored in
    # atexit callback ... SystemExit: 143" above the build's own error line.
    os._exit(128 + signum)


def _set_parent_death_signal(sig):
    """Linux: the kernel sends ``sig`` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1  # <linux/prctl.h>
        return libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(sentinel):
    """Thread: once the parent process is gone, stop this worker."""
    multiprocessing.connection.wait([sentinel])
    if hasattr(signal, "pthread_kill"):
        # To the main thread itself: a process-directed signal (the parent
        # death signal) may land on one of TensorFlow's threads and leave the
        # main thread asleep in a read, its handler never run.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    else:
        os.kill(os.getpid(), signal.SIGTERM)
    # The handler runs between bytecodes of the main thread; one stuck in a
    # long native call does not get there, and this process must not outlive
    # the build whatever it is doing.
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _init_worker(progress_queue, parent_pid):
    """Pool initializer: progress queue, and die with the parent.

    A worker outliving a killed build would go on writing and renaming
    shards into the output folder, racing a rebuild, then hang waiting for
    work that never comes.
    """
    global _PROGRESS, _IN_WORKER
    _PROGRESS = progress_queue
    _IN_WORKER = True
    # Progress is advisory: never let exit wait to flush it into a pipe
    # nobody reads any more.
    progress_queue.cancel_join_thread()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Idle, the kernel's default action ends the writer whichever of its threads
    # the SIGTERM lands on. A Python handler runs only in the main thread, between
    # bytecodes: an idle writer asleep in the task queue's lock never ran it, and
    # Pool.terminate then waited for it forever. _write_one_shard installs the
    # handler for the time a shard is open.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_parent_death_signal(signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent.sentinel,), daemon=True,
                         name="keras_dpn-watch-parent").start()
    if os.getppid() != parent_pid:  # died before the watches were set
        raise SystemExit(1)


def _write_one_shard(job):
    """Worker: writes one shard from its image entries; returns its summary."""
    # The pipeline decodes with tf.io.decode_jpeg; checking with the same
    # decoder is what guarantees a training run never meets a bad image.
    global _WRITER_STATE
    _WRITER_STATE = "writing"
    if _IN_WORKER:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _write_shard_file(job)
    except (OSError, tf.errors.OpError) as e:
        # Read errors of images are skips inside; what arrives here is a write
        # fault. One picklable line: it crosses the pool from a worker.
        raise ShardWriteError(_write_fault(e, job["output_prefix"], job["path"])) from None
    finally:
        _WRITER_STATE = "idle"
        if _IN_WORKER:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_fault(error, output_prefix, path=None):
    """One line for an I/O fault while writing ``output_prefix``'s shards."""
    if isinstance(error, ShardWriteError):
        return str(error)
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:  # tf.errors.OpError: "PATH; No space left on device"
        reason = str(getattr(error, "message", error)).strip().splitlines()[0]
        reason = reason.rsplit("; ", 1)[-1] if "; " in reason else reason
    what = f"shard {os.path.basename(path)}" if path else "the shards"
    return (f"Cannot write {what} of {output_prefix}: {reason}; nothing of this build was "
            f"kept (an existing set is untouched). Received: output_prefix={output_prefix!r}")


def _write_shard_file(job):
    decode_jpeg = lambda b: tf.io.decode_jpeg(b, channels=3)  # noqa: E731
    skips = SkipCounter()
    path, entries, num_keypoints, keep_empty = (job["path"], job["entries"],
                                                job["num_keypoints"], job["keep_empty"])
    records = people_count = 0
    image_ids = []
    with io_utils.atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for i, entry in enumerate(entries):
                got = _encode_image(entry, skips, decode_jpeg)
                if got is None:
                    if entry["people"]:
                        skips.add("people_in_skipped_images", count=len(entry["people"]))
                else:
                    data, height, width = got
                    people = []
                    for person in entry["people"]:
                        where = (f"{entry['filename']} (image id {entry['image_id']}, "
                                 f"person {person['id']})")
                        cleaned = clean_person(person, height, width, skips, where)
                        if cleaned is not None:
                            people.append(cleaned)
                    if people or keep_empty:
                        if not people:
                            skips.add("images_without_people_kept",
                                      f"{entry['filename']} (image id {entry['image_id']})")
                        writer.write(_serialize(entry, data, height, width, people, num_keypoints))
                        records += 1
                        people_count += len(people)
                        image_ids.append(int(entry["image_id"]))
                    else:
                        skips.add("image_without_people_dropped",
                                  f"{entry['filename']} (image id {entry['image_id']})")
                if _PROGRESS is not None:
                    _PROGRESS.put(1)
    return {"file": os.path.basename(path), "records": records, "people": people_count,
            "bytes": os.path.getsize(path), "image_ids": image_ids, "skips": skips.to_dict()}


def write_shards(entries, output_prefix, num_shards, dataset="coco", num_workers=2,
                 keep_empty_images=True, reader_skips=None, source=None, progress=True,
                 overwrite=False):
    """Writes image entries into ``PREFIX-00000-of-000NN.tfrecord`` shards.

    The shards and the manifest are written into a staging folder beside the
    prefix and moved into place only when the whole set is written, so a
    build that fails leaves an existing set as it was.

    Args:
        entries: list of image dicts from :func:`keras_dpn.data.coco.read_coco`
            or :func:`keras_dpn.data.mpii.read_mpii`.
        output_prefix: path prefix of the shards (folders are created).
        num_shards: number of shard files.
        dataset: ``"coco"``, ``"mpii"`` or a ``KeypointSpec``.
        num_workers: processes writing shards in parallel (1: in this process).
            Sets of fewer than ``MIN_IMAGES_PER_WORKER`` (100) images per
            worker are written in this process; the environment variable
            ``KERAS_DPN_MIN_IMAGES_PER_WORKER`` changes that number (1 forces
            workers on any set).
        keep_empty_images: keep images whose people were all skipped (needed
            to evaluate with detection boxes on every image).
        reader_skips: the reader's ``SkipCounter``, merged into the report.
        source: dict stored in the manifest (where the data came from).
        progress: show a tqdm progress bar.
        overwrite: replace a complete set (one with its manifest) already
            under ``output_prefix``, whatever its shard count; without it
            such a set is refused before anything is written.

    Returns:
        The manifest dict (also written to ``PREFIX-manifest.json``).

    Raises:
        ValueError: no images, bad ``num_shards``, an output path that
            cannot be written, or nothing usable written.
        FileExistsError: ``output_prefix`` holds a complete set and
            ``overwrite`` is False.
        ShardWriteError: an I/O fault while writing (full disk, ...).
        WorkerDiedError: a writer process was killed (out of memory?).
    """
    spec = get_keypoint_spec(dataset)
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"`num_shards` must be a positive integer. Received: num_shards={num_shards!r}")
    if not entries:
        raise ValueError("No images to write: the annotation file lists no usable images. "
                         f"Skips so far: {dict(reader_skips.counts) if reader_skips else {}}")
    if num_shards > len(entries):
        raise ValueError(f"`num_shards` ({num_shards}) exceeds the number of images "
                         f"({len(entries)}); every shard must hold at least one image. "
                         f"Received: num_shards={num_shards!r}")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"`num_workers` must be a positive integer. Received: num_workers={num_workers!r}")
    min_images = min_images_per_worker()
    tf.io  # noqa: B018  imports TensorFlow now: without it, fail before anything is written
    output_prefix = os.fspath(output_prefix)
    check_output_prefix(output_prefix, num_shards, overwrite)
    try:
        _remove_unfinished(output_prefix)
    except OSError as e:
        raise ShardWriteError(_write_fault(e, output_prefix)) from None
    staging = _make_staging(output_prefix)
    try:
        manifest = _write_into(staging, entries, output_prefix, num_shards, spec, num_workers,
                               min_images, keep_empty_images, reader_skips, source, progress)
        _swap_in(staging, output_prefix)
    except (OSError, tf.errors.OpError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise ShardWriteError(_write_fault(e, output_prefix)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def min_images_per_worker():
    """Images per writer process below which shards are written in this process:
    ``KERAS_DPN_MIN_IMAGES_PER_WORKER`` if set, else ``MIN_IMAGES_PER_WORKER``."""
    value = os.environ.get("KERAS_DPN_MIN_IMAGES_PER_WORKER", "").strip()
    if not value:
        return MIN_IMAGES_PER_WORKER
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError("The environment variable KERAS_DPN_MIN_IMAGES_PER_WORKER must be a "
                         f"positive integer. Received: {value!r}")
    return n


def check_output_prefix(output_prefix, num_shards=None, overwrite=False):
    """Refuses, in one line and before anything is written, an output prefix that
    cannot take a new set: no file name part, a folder that cannot be written
    (a file in its path, read-only), a folder standing at a shard's or the
    manifest's name, or a complete set already there without ``overwrite``.

    Raises:
        ValueError: the prefix or its folder cannot be used.
        FileExistsError: a complete set is there and ``overwrite`` is False.
    """
    output_prefix = os.fspath(output_prefix)
    folder = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.basename(output_prefix):
        raise ValueError("`output_prefix` must end in a file name prefix (shards are named "
                         f"PREFIX-00000-of-000NN.tfrecord), e.g. {os.path.join(output_prefix, 'coco')!r}. "
                         f"Received: output_prefix={output_prefix!r}")
    try:
        io_utils.check_output_folder(folder, name="output_prefix")
    except ValueError as e:  # its line names the folder as received; ours, the prefix
        raise ValueError(str(e).rsplit(" Received: ", 1)[0]
                         + f" Received: output_prefix={output_prefix!r}") from None
    found = [p for p in build_leftovers(output_prefix) if not _is_staging(p)]
    for path in found:
        if os.path.isdir(path) and not os.path.islink(path):
            raise ValueError(f"A folder stands where the build writes a file: {path}; it is left "
                             f"as it is. Move it or pick another prefix. "
                             f"Received: output_prefix={output_prefix!r}")
    manifest = os.path.abspath(manifest_path(output_prefix))
    if manifest in found and not overwrite:
        shards = [p for p in found if SHARD_RE.match(os.path.basename(p))]
        counts = sorted({int(SHARD_RE.match(os.path.basename(p))["total"]) for p in shards})
        other = (f"; this build writes {num_shards}" if num_shards is not None
                 and counts != [num_shards] else "")
        raise FileExistsError(
            f"{output_prefix} already holds a complete shard set ({len(found)} files: "
            f"{len(shards)} shard(s) of {'/'.join(map(str, counts)) or '?'} and the manifest"
            f"{other}); nothing was written. Pass overwrite=True (--overwrite) to replace it "
            f"once the new set is complete. Received: output_prefix={output_prefix!r}")


STAGING_INFIX = "-shards.partial-"


def _staging_re(base):
    # ".BASE-shards.partial-PID-XXXXXXXX": mkdtemp adds 8 characters.
    return re.compile(rf"^\.{re.escape(base)}{re.escape(STAGING_INFIX)}(?P<pid>\d+)-[a-z0-9_]{{8}}$")


def _is_staging(path):
    return STAGING_INFIX in os.path.basename(path) and os.path.isdir(path)


def _make_staging(output_prefix):
    folder = os.path.dirname(os.path.abspath(output_prefix))
    base = os.path.basename(output_prefix)
    try:
        os.makedirs(folder, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{base}{STAGING_INFIX}{os.getpid()}-", dir=folder)
    except OSError as e:
        raise ShardWriteError(_write_fault(e, output_prefix)) from None


def _pid_alive(pid):
    if pid == os.getpid():
        return False  # this process starts one build at a time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _remove_unfinished(output_prefix):
    """Removes what killed builds of ``output_prefix`` left: staging folders of
    dead processes, ``.partial`` files, and shards without a manifest (a complete
    set stays until the new one replaces it); returns their paths."""
    found = build_leftovers(output_prefix)
    staging_re = _staging_re(os.path.basename(output_prefix))
    staging = [p for p in found if staging_re.match(os.path.basename(p))]
    # A live build's staging folder is its own business.
    stale = [p for p in staging if not _pid_alive(int(staging_re.match(os.path.basename(p))["pid"]))]
    files = [p for p in found if p not in staging]
    partial = [p for p in files if ".partial-" in os.path.basename(p)]
    unfinished = partial if os.path.abspath(manifest_path(output_prefix)) in files else files
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    for path in unfinished:
        os.remove(path)
    if unfinished or stale:
        logger.warning("Removed %d file(s) that an interrupted build of %s left (%d unfinished "
                       ".partial%s); building all shards again.", len(unfinished) + len(stale),
                       output_prefix, len(partial),
                       f", {len(stale)} staging folder(s)" if stale else "")
    return unfinished + stale


def _swap_in(staging, output_prefix):
    """Replaces the old set (if any) with the complete one in ``staging``.

    The old manifest goes first, the new one comes last: a kill between the
    two leaves shards without a manifest, which the reader refuses and the
    next build removes, never a manifest vouching for a mix.
    """
    folder = os.path.dirname(os.path.abspath(output_prefix))
    new = sorted(os.listdir(staging))
    new_manifest = os.path.basename(manifest_path(output_prefix))
    old = [p for p in build_leftovers(output_prefix) if not _is_staging(p)]
    old_manifest = os.path.abspath(manifest_path(output_prefix))
    for path in sorted(old, key=lambda p: p != old_manifest):
        os.remove(path)
    for name in sorted(new, key=lambda n: n == new_manifest):
        os.replace(os.path.join(staging, name), os.path.join(folder, name))
    os.rmdir(staging)



def _collect(pending, progress_queue, bar, writers, output_prefix, num_workers):
    """Waits for the writers' results, forwarding their progress to ``bar``."""
    while True:
        try:
            n = progress_queue.get(timeout=0.2)
            if bar is not None:
                bar.update(n)
        except queue_lib.Empty:
            if pending.ready():
                break
            # The pool replaces a writer that dies (killed by the system: out of
            # memory?) but never finishes its shard: without this, a wait forever.
            if not {p.pid for p in multiprocessing.active_children()} <= writers:
                raise WorkerDiedError(
                    f"A shard writer process died while writing {output_prefix}; no "
                    "manifest was written. Out of memory? Rerun with fewer "
                    f"--num-workers. Received: num_workers={num_workers}")
    return pending.get()


def _stop_writers(writers, grace_s=10.0):
    """SIGTERM to each writer (a busy one removes its partial shard), SIGKILL to one
    that has not left after ``grace_s`` (an idle one can miss the SIGTERM)."""
    procs = [p for p in multiprocessing.active_children() if p.pid in writers]
    for p in procs:
        p.terminate()
    deadline = time.time() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join()

def _write_into(staging, entries, output_prefix, num_shards, spec, num_workers, min_images,
                keep_empty_images, reader_skips, source, progress):
    """Writes the shards and the manifest of ``output_prefix`` into ``staging``."""
    base = os.path.basename(output_prefix)
    entries = sorted(entries, key=lambda e: e["image_id"])
    jobs = [{"path": shard_name(os.path.join(staging, base), i, num_shards),
             "output_prefix": output_prefix,
             # Round-robin keeps shards of equal size and mixes image ids.
             "entries": entries[i::num_shards], "num_keypoints": spec.num_keypoints,
             "keep_empty": keep_empty_images} for i in range(num_shards)]
    start = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(entries), unit="img", desc=f"shards -> {base}")
    workers = min(num_workers, num_shards, max(1, len(entries) // min_images))
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_write_one_shard(job))
            if bar is not None:
                bar.update(len(job["entries"]))
    else:
        ctx = multiprocessing.get_context("spawn")  # TF is not fork-safe
        # A plain queue, not a Manager's: a manager is one more process, and
        # one that outlives a killed build.
        progress_queue = ctx.Queue()
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(progress_queue, os.getpid())) as pool:
            writers = {p.pid for p in multiprocessing.active_children()}
            pending = pool.map_async(_write_one_shard, jobs, chunksize=1)
            try:
                results = _collect(pending, progress_queue, bar, writers, output_prefix,
                                   num_workers)
                # Idle writers leave on the pool's sentinel. Pool.terminate's SIGTERM
                # can land on a TensorFlow thread of an idle writer whose main thread
                # sleeps in the task queue's lock, and Pool.__exit__ then waits forever.
                pool.close()
                pool.join()
            except BaseException:
                _stop_writers(writers)
                raise
        progress_queue.close()
    if bar is not None:
        bar.update(bar.total - bar.n)  # progress still in flight when the last shard ended
        bar.close()
    skips = SkipCounter()
    if reader_skips is not None:
        skips.update(reader_skips)
    for r in results:
        skips.update(SkipCounter.from_dict(r.pop("skips")))
    total_people = sum(r["people"] for r in results)
    total_records = sum(r["records"] for r in results)
    manifest = {
        "format": "keras_dpn.tfrecord.v1",
        "dataset": spec.name,
        "num_keypoints": spec.num_keypoints,
        "keypoint_names": list(spec.names),
        # The whole set (flip pairs, sigmas, ...): training and evaluation can
        # take it from the shards (keras_dpn.data.pipeline.shard_keypoint_spec).
        "keypoints": spec.to_dict(),
        "num_shards": num_shards,
        "records": total_records,
        "people": total_people,
        "shards": results,
        "skipped": {r: v for r, v in skips.to_dict().items() if r in SKIP_REASONS},
        "notes": {r: v for r, v in skips.to_dict().items() if r not in SKIP_REASONS},
        "source": source or {},
        "num_workers": workers,
        "seconds": round(time.time() - start, 2),
    }
    if total_records == 0 or total_people == 0:
        # Nothing usable: the staging folder goes, an existing set stays.
        raise ValueError(
            f"Empty result: no usable person in {len(entries)} images; no shards kept.\n"
            + format_report(manifest))
    with io_utils.atomic_file(manifest_path(os.path.join(staging, base)), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def build_leftovers(output_prefix):
    """Files an earlier build of ``output_prefix`` left: shards of any ``-of-`` count,
    the manifest, unfinished ``.partial`` files of either and staging folders."""
    folder = os.path.dirname(os.path.abspath(output_prefix))
    base = os.path.basename(os.fspath(output_prefix))
    staging = _staging_re(base)
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        partial = PARTIAL_RE.match(name)
        final = partial["stem"] + partial["rest"] if partial else name
        shard = SHARD_RE.match(final)
        if ((shard and shard["prefix"] == base) or final == base + MANIFEST_SUFFIX
                or staging.match(name)):
            found.append(os.path.join(folder, name))
    return found


def format_report(manifest):
    """Human-readable summary: shards, counts, skips by reason with examples."""
    lines = [f"Wrote {manifest['records']} images / {manifest['people']} people "
             f"({manifest['dataset']}, K={manifest['num_keypoints']}) into "
             f"{manifest['num_shards']} shards in {manifest.get('seconds', 0):.1f} s."]
    for title, group, names in (("Skipped", manifest["skipped"], SKIP_REASONS),
                                ("Notes", manifest["notes"], NOTE_REASONS)):
        if not group:
            lines.append(f"{title}: none.")
            continue
        lines.append(f"{title}:")
        for reason, v in group.items():
            ex = "; ".join(v["examples"][:3])
            lines.append(f"  {reason:38s} {v['count']:7d}  ({names.get(reason, '')})"
                         + (f"\n      e.g. {ex}" if ex else ""))
    return "\n".join(lines)


def build_from_reader(reader, annotation_file, image_dir, output_prefix, num_shards, dataset,
                      num_workers=2, keep_empty_images=True, progress=True, verbose=True,
                      overwrite=False):
    """Reads annotations with ``reader``, writes the shards and prints the report.

    Args:
        reader: ``reader(annotation_file, image_dir, dataset) -> (entries, skips)``,
            e.g. :func:`keras_dpn.data.coco.read_coco`.
        annotation_file, image_dir, output_prefix, num_shards, dataset,
        num_workers, keep_empty_images, progress, overwrite: as :func:`write_shards`.
        verbose: print the skip report.

    Returns:
        The manifest dict.
    """
    # The output is checked before the annotations are read (seconds to
    # minutes at COCO's size); write_shards checks it again.
    if not os.path.isdir(image_dir):
        raise ValueError(f"The image folder does not exist (or is not a folder). "
                         f"Received: image_dir={os.fspath(image_dir)!r}")
    check_output_prefix(output_prefix, num_shards, overwrite)
    entries, skips = reader(annotation_file, image_dir, dataset)
    manifest = write_shards(
        entries, output_prefix, num_shards, dataset=dataset, num_workers=num_workers,
        keep_empty_images=keep_empty_images, reader_skips=skips, progress=progress,
        source={"annotations": os.path.abspath(annotation_file),
                "images": os.path.abspath(image_dir)}, overwrite=overwrite)
    if verbose:
        print(format_report(manifest))
    return manifest
