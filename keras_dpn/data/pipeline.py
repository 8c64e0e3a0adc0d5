"""``build_dataset``: TFRecord shards -> batches for ``model.fit`` / evaluation.

Reading: the shard list is checked against the builder's manifest (complete
set, sizes, keypoint count) before anything runs, or, without a manifest,
against each file's own record framing and first record; shards are read in
parallel with ``interleave`` (deterministic on request). A record that is
corrupt, truncated, unparsable or of another keypoint set stops the run with
one line that names its shard and record (:func:`shard_error` finds it in the
TensorFlow error): each shard is read with ``ignore_errors`` and every record
is numbered and checked, so that a skipped or bad one is seen and named.

Parsing works per image record: the parser decodes the JPEG once for all the
people of the image (only the part their windows read) and warps each person;
people are un-batched after that, shuffled as uint8 crops, batched, and get
their normalization and targets a batch at a time.
"""

import dataclasses
import glob
import json
import logging
import os
import re
import struct

import numpy as np

from keras_dpn.core.optional import tf_data as tf
from keras_dpn.data.augment import reject_loose_settings, resolve_augment
from keras_dpn.data.coco import load_json
from keras_dpn.data.decoder import RECORD_PROBLEMS, decode_example, inspect_example
from keras_dpn.data.parser import PersonParser
from keras_dpn.data.shards import MANIFEST_SUFFIX, SHARD_RE
from keras_dpn.core.keypoints import get_keypoint_spec

logger = logging.getLogger("keras_dpn.data")

AUTOTUNE = tf.data.AUTOTUNE
# protobuf comes with TensorFlow, which the line above imports (or names as missing).
from google.protobuf.message import DecodeError  # noqa: E402
# Appended to each shard's records by _read_shard: an Example (so that it
# parses) that no writer makes (an empty Example is b"", a foreign record).
_END_MARKER = tf.train.Example(features=tf.train.Features(feature={
    "keras_dpn/end_of_shard": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
)).SerializeToString()
# The line _read_shard's assertion puts into a TensorFlow error.
_SHARD_ASSERTION = re.compile(r"assertion failed: \[((?:Corrupt or truncated|Corrupt|Bad) shard "
                              r"[^\n]*)\]$", re.M)


class ShardSet:
    """The resolved shard files of a ``file_pattern`` and what their manifests say."""

    def __init__(self, files, expected_records, people, image_ids, manifests,
                 num_keypoints=None):
        self.files = files
        # From the manifest, else counted from the file's record framing.
        self.expected_records = expected_records
        self.people = people  # None where unknown
        self.image_ids = image_ids  # None where unknown
        self.manifests = manifests
        self.num_keypoints = num_keypoints  # every record is checked against it (None: any)


def _count_records(path):
    """Records in a TFRecord file, counted from its framing; and where it is cut short.

    Reads the 12-byte header of each record and seeks past its data (no
    checksums): milliseconds for a COCO-sized shard.

    Returns:
        ``(count, problem)``: ``problem`` is None for a whole file.
    """
    size = os.path.getsize(path)
    count = end = 0
    with open(path, "rb") as f:
        while end < size:
            header = f.read(12)  # uint64 length, uint32 checksum of the length
            if len(header) < 12:
                return count, (f"truncated: it ends inside the header of record {count} "
                               f"({size} bytes)")
            end += 12 + struct.unpack("<Q", header[:8])[0] + 4
            if end > size:
                return count, (f"truncated: it ends inside record {count} ({size} bytes, "
                               f"{end - size} missing)")
            f.seek(end)
            count += 1
    return count, None


def _first_record_problem(path, num_keypoints):
    """What makes a shard without a manifest unreadable as ours, from its first record."""
    try:
        data = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.DataLossError:
        return "record 0 cannot be read (bad checksum). Rebuild it"
    if data is None:
        return None  # no record: nothing to read
    try:
        feature = tf.train.Example.FromString(data.numpy()).features.feature
    except DecodeError:
        return "record 0 is not a tf.train.Example: not a keras_dpn shard"
    k = list(feature["image/num_keypoints"].int64_list.value) \
        if "image/num_keypoints" in feature else []
    if len(k) != 1 or "image/id" not in feature:
        return f"record 0 {RECORD_PROBLEMS[1]}"
    if num_keypoints is not None and k[0] != num_keypoints:
        return (f"its records hold {k[0]} keypoints per person; the keypoint spec has "
                f"{num_keypoints}. Pass the matching `dataset=`")
    return None


def _resolve_shards(file_pattern, num_keypoints=None, spec_name=None):
    """:func:`resolve_shards` that returns the problems of single files instead of raising."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    if not patterns:
        raise ValueError(f"`file_pattern` is empty. Received: file_pattern={file_pattern!r}")
    files = sorted({f for p in patterns for f in (glob.glob(os.fspath(p)) or
                                                 ([os.fspath(p)] if os.path.isfile(p) else []))})
    files = [f for f in files if not f.endswith(MANIFEST_SUFFIX) and ".partial" not in f]
    if not files:
        raise ValueError(f"No shard files match `file_pattern`. Received: file_pattern={file_pattern!r}")
    explicit = not any(ch in os.fspath(p) for p in patterns for ch in "*?[")
    groups = {}
    for f in files:
        m = SHARD_RE.match(f)
        if m:
            groups.setdefault((m["prefix"], int(m["total"])), set()).add(int(m["index"]))
    manifests = {}
    for (prefix, total), indices in groups.items():
        missing = sorted(set(range(total)) - indices)
        # Files named one by one may be a deliberate subset; a glob that
        # catches part of a numbered set is an interrupted or damaged build.
        if missing and not explicit:
            raise ValueError(
                f"Incomplete shard set {prefix}-*-of-{total:05d}.tfrecord: missing "
                f"{len(missing)} of {total} (e.g. index {missing[:5]}). The build was "
                f"interrupted or files were lost; rebuild. Received: file_pattern={file_pattern!r}")
        mpath = prefix + MANIFEST_SUFFIX
        if os.path.exists(mpath):
            with open(mpath) as fh:
                manifest = json.load(fh)
            if manifest.get("num_shards") != total:
                raise ValueError(f"{mpath} describes {manifest.get('num_shards')} shards but the "
                                 f"files say -of-{total:05d}: shards of two builds are mixed.")
            manifests[(prefix, total)] = manifest
        else:
            logger.warning("No manifest %s: whether the set is complete cannot be checked; "
                           "records are counted from the files themselves.", mpath)
    expected, people, image_ids, problems = [], [], [], []
    for f in files:
        m = SHARD_RE.match(f)
        entry = None
        if m and (m["prefix"], int(m["total"])) in manifests:
            manifest = manifests[(m["prefix"], int(m["total"]))]
            if num_keypoints is not None and manifest["num_keypoints"] != num_keypoints:
                asked = f" {spec_name!r}" if spec_name else ""
                raise ValueError(
                    f"Keypoint count mismatch: shards {m['prefix']}-* hold "
                    f"{manifest['num_keypoints']} keypoints per person (set "
                    f"{manifest['dataset']!r}, {m['prefix']}{MANIFEST_SUFFIX}); the requested "
                    f"keypoint set{asked} has {num_keypoints}. Pass the matching `dataset=` "
                    "(--keypoints), or leave it out to use the shards' own set.")
            entry = {s["file"]: s for s in manifest["shards"]}.get(os.path.basename(f))
            if entry is None:
                raise ValueError(f"Shard {f} is not listed in its manifest: stale file from "
                                 "another build?")
            size = os.path.getsize(f)
            if size != entry["bytes"]:
                problems.append(f"Shard {f} has {size} bytes, its manifest says {entry['bytes']}: "
                                "truncated or modified. Rebuild the shards.")
            count = entry["records"]
        else:
            # No manifest to compare with: the file's own framing says how many
            # records it holds, and whether it was cut short.
            count, problem = _count_records(f)
            problem = problem or _first_record_problem(f, num_keypoints)
            if problem:
                problems.append(f"Bad shard {f}: {problem}.")
        expected.append(count)
        people.append(entry["people"] if entry else None)
        image_ids.append(entry["image_ids"] if entry else None)
    return ShardSet(files, expected, people, image_ids, manifests, num_keypoints), problems


def resolve_shards(file_pattern, num_keypoints=None, spec_name=None):
    """Expands ``file_pattern`` and checks the shard set against its manifest.

    Without a manifest, each file's record framing is read (it must end on a
    record boundary) and its first record must be a keras_dpn record with
    ``num_keypoints`` keypoints.

    Args:
        file_pattern: glob string, or a list of globs / file names.
        num_keypoints: if given, every manifest (or first record) must agree.
        spec_name: the keypoint set's name, for the mismatch message.

    Returns:
        :class:`ShardSet`.

    Raises:
        ValueError: nothing matches, a shard of a numbered set is missing,
            sizes differ from the manifest, a shard without a manifest is
            cut short or not ours, or the keypoint count differs. The message
            names the (first) bad file and its problem in one line.
    """
    shards, problems = _resolve_shards(file_pattern, num_keypoints, spec_name)
    if problems:
        more = f" ({len(problems) - 1} more bad shard(s))" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
    return shards


def shard_keypoint_spec(file_pattern):
    """The keypoint set the shards' manifest records (None without a manifest).

    Manifests of keras-dpn 0.1 name a built-in set only; later ones carry the
    whole set (``KeypointSpec.to_dict``), flip pairs and sigmas included.

    Raises:
        ValueError: the shards fail :func:`resolve_shards`, their manifests
            name different sets, or a recorded set is invalid (naming the
            manifest and the field).
    """
    shards = resolve_shards(file_pattern)
    found = {}
    for (prefix, _), manifest in shards.manifests.items():
        path = prefix + MANIFEST_SUFFIX
        recorded = manifest.get("keypoints")
        if recorded is None and manifest.get("dataset") not in ("coco", "mpii"):
            raise ValueError(f"{path} names the keypoint set {manifest.get('dataset')!r} but "
                             "does not record it (an older manifest): pass the set "
                             "(dataset= / --keypoints FILE.json).")
        found[path] = get_keypoint_spec(recorded if recorded is not None
                                        else manifest["dataset"], source=path)
    specs = list(dict.fromkeys(found.values()))
    if len(specs) > 1:
        raise ValueError(f"The shards of `file_pattern` record different keypoint sets: "
                         + ", ".join(f"{s.name!r} ({p})" for p, s in found.items())
                         + f". Received: file_pattern={file_pattern!r}")
    return specs[0] if specs else None


def _bad_record_message(filename, index, is_end, code, k, expected_index, expected_records,
                        num_keypoints):
    """The one line that names the shard, the record and what is wrong with it."""
    name = tf.strings.as_string

    def line(*parts):
        return tf.strings.join([tf.constant(p) if isinstance(p, str) else p for p in parts])

    unparsable = line("Corrupt shard ", filename, ": record ", name(expected_index),
                      " cannot be parsed (not a tf.train.Example, or a key of another type). "
                      "Rebuild it; keras_dpn.data.check_shards lists every bad record.")
    unread = line("Corrupt or truncated shard ", filename, ": record ", name(index),
                  " cannot be read (bad checksum or cut short); read ", name(index), " of ",
                  name(expected_records), " records. Rebuild it; keras_dpn.data.check_shards "
                  "lists every bad record.")
    other_k = line("Bad shard ", filename, ": record ", name(index), " holds ", name(k),
                   f" keypoints per person; the keypoint spec has {num_keypoints}. Pass the "
                   "matching `dataset=`.")
    problem = line("Bad shard ", filename, ": record ", name(index), " ",
                   tf.gather(tf.constant(RECORD_PROBLEMS), code), ".")
    return tf.where(tf.not_equal(index, expected_index), unparsable,
                    tf.where(is_end, unread, tf.where(tf.equal(code, 2), other_k, problem)))


def _read_shard(filename, expected_records, num_keypoints=-1):
    """Records of one shard, each checked; a bad one stops the run naming shard and record.

    TensorFlow's own errors name neither. Records are numbered as read, with
    ``ignore_errors`` after the reader and after the parse: a record that
    cannot be read (bad checksum, file cut short) ends the shard early, which
    the count tells when the shard ends (at an end marker); one that does
    not parse leaves a gap in the numbers; one that parses is checked by
    :func:`~keras_dpn.data.decoder.inspect_example`. Few stages: each costs
    per record (about 90 us per record in all, against 5 ms of decoding).
    """
    def inspect(index, record):
        code, k = inspect_example(record, num_keypoints)
        return index, record, code, k

    end_marker = tf.constant(_END_MARKER)

    def check(expected_index, item):
        index, record, code, k = item
        is_end = tf.equal(record, end_marker)
        ok = tf.equal(index, expected_index) & tf.where(
            is_end, (expected_records < 0) | tf.equal(index, expected_records), tf.equal(code, 0))
        message = _bad_record_message(filename, index, is_end, code, k, expected_index,
                                      expected_records, num_keypoints)
        with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
            return index + 1, tf.identity(record)

    def is_record(record):
        return tf.not_equal(record, end_marker)

    end = tf.data.Dataset.from_tensors(end_marker)
    return (tf.data.TFRecordDataset(filename, buffer_size=1 << 20).ignore_errors()
            .concatenate(end).enumerate().map(inspect).ignore_errors()
            .scan(tf.constant(0, tf.int64), check).filter(is_record))


def read_records(shards, shuffle_files=False, seed=None, deterministic=True, cycle_length=None,
                 input_context=None):
    """Serialized records of a :class:`ShardSet`, shards read in parallel, every record checked."""
    files = tf.data.Dataset.from_tensor_slices(
        (tf.constant(shards.files), tf.constant(shards.expected_records, tf.int64)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        if input_context.num_input_pipelines > len(shards.files):
            raise ValueError(
                f"{input_context.num_input_pipelines} input pipelines share "
                f"{len(shards.files)} shard files: each pipeline needs at least one. Build "
                "more shards (--num-shards). Received: "
                f"input_context.num_input_pipelines={input_context.num_input_pipelines}")
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_files:
        files = files.shuffle(len(shards.files), seed=seed, reshuffle_each_iteration=True)
    cycle = cycle_length or min(len(shards.files), 4)
    k = -1 if shards.num_keypoints is None else int(shards.num_keypoints)

    def read(filename, expected_records):
        return _read_shard(filename, expected_records, k)

    return files.interleave(read, cycle_length=cycle, block_length=1,
                            num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def shard_error(error):
    """The line naming the bad shard and record inside a TensorFlow error, or None.

    A bad record met while a pipeline runs (``model.fit``, evaluation)
    surfaces as a ``tf.errors.InvalidArgumentError`` whose message holds this
    line among graph details; a command line prints just the line.

    Example (not run: needs a damaged shard; ``tests/test_bad_shards.py`` makes them):

    >>> try:  # doctest: +SKIP
    ...     model.fit(build_dataset("shards/coco_train-*.tfrecord"))
    ... except tf.errors.OpError as e:
    ...     raise SystemExit(shard_error(e) or e)
    """
    found = _SHARD_ASSERTION.search(str(error))
    return found[1] if found else None


def _people_of_record(record):
    """The people of one record (P on the first axis) with the image's bytes and id once.

    The JPEG is not copied per person: the parser decodes it once for all of them.
    """
    people = {key: record[key] for key in ("bbox", "keypoints", "center", "scale", "has_center",
                                           "person_id", "encoded", "image_id")}
    people["score"] = tf.ones([record["num_people"]], tf.float32)
    return people


def load_detections(detections, image_ids=None, score_threshold=0.0, category_id=1,
                    verbose=True):
    """Reads a COCO detection-results json into per-image boxes.

    Args:
        detections: path of a json list of ``{"image_id", "bbox", "score",
            "category_id"}`` (or the list itself).
        image_ids: ids the shards hold; detections on other images raise.
        score_threshold: boxes scoring below are dropped (counted).
        category_id: keep only this category (None: all).
        verbose: print the kept / dropped counts.

    Returns:
        dict ``image_id -> (boxes (N, 4) float32, scores (N,) float32)``.
    """
    name = detections if isinstance(detections, (str, os.PathLike)) else "<detections>"
    rows = load_json(detections, "detection file") if isinstance(detections, (str, os.PathLike)) \
        else detections
    if not isinstance(rows, list):
        raise ValueError(f"{name}: a detection file is a JSON list of results. "
                         f"Received: a {type(rows).__name__}")
    counts = {"below_threshold": 0, "other_category": 0, "invalid_box": 0}
    out = {}
    for i, d in enumerate(rows):
        missing = [k for k in ("image_id", "bbox", "score") if not isinstance(d, dict) or k not in d]
        if missing:
            raise ValueError(f"{name}: detection [{i}] misses key(s) {missing}. Received: {d!r:.150}")
        if category_id is not None and d.get("category_id", category_id) != category_id:
            counts["other_category"] += 1
            continue
        box = np.asarray(d["bbox"], np.float64).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            counts["invalid_box"] += 1
            continue
        if d["score"] < score_threshold:
            counts["below_threshold"] += 1
            continue
        out.setdefault(int(d["image_id"]), []).append((box, float(d["score"])))
    if image_ids is not None:
        unknown = sorted(set(out) - set(int(i) for i in image_ids))
        if unknown:
            raise ValueError(
                f"{name}: {len(unknown)} image id(s) with detections are not in the shards "
                f"(e.g. {unknown[:10]}). Wrong detection file, or shards built with "
                "--drop-empty-images?")
    kept = sum(len(v) for v in out.values())
    if kept == 0:
        raise ValueError(f"{name}: no detection left of {len(rows)} (score >= {score_threshold}, "
                         f"category {category_id}): {counts}. Received: "
                         f"score_threshold={score_threshold!r}")
    if verbose:
        print(f"Detections {os.path.basename(os.fspath(name))}: kept {kept} of {len(rows)} boxes "
              f"on {len(out)} images; dropped {counts}.")
    return {k: (np.array([b for b, _ in v], np.float32), np.array([s for _, s in v], np.float32))
            for k, v in out.items()}


def _scan_image_ids(shards):
    """Image ids and people counts by reading the shards (when no manifest).

    Every record is checked as it is read, so a bad shard fails here, before
    the pipeline runs, with its one-line ``ValueError``.
    """
    feats = {"image/id": tf.io.FixedLenFeature([], tf.int64),
             "person/area": tf.io.VarLenFeature(tf.float32)}
    ids, people = [], 0
    ds = read_records(shards).map(lambda r: tf.io.parse_single_example(r, feats),
                                  num_parallel_calls=AUTOTUNE)
    try:
        for ex in ds:
            ids.append(int(ex["image/id"]))
            people += int(tf.size(ex["person/area"].values))
    except tf.errors.InvalidArgumentError as e:
        line = shard_error(e)
        if line is None:
            raise
        raise ValueError(line) from None
    return ids, people


@dataclasses.dataclass(frozen=True)
class Detections:
    """Evaluation boxes from a COCO detection-results file, and which of them to keep.

    ``build_dataset(..., detections="dets.json")`` is ``Detections("dets.json")``.

    Args:
        source: path of a json list of ``{"image_id", "bbox", "score",
            "category_id"}`` results, or the list itself.
        score_threshold: drop boxes scoring below.
        category_id: keep boxes of this category (None: all).
    """

    source: object
    score_threshold: float = 0.0
    category_id: object = 1


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How :func:`build_dataset` reads and parallelizes: speed and memory, not results.

    Args:
        shuffle_buffer: people in the training shuffle buffer, held as uint8
            crops (H x W x 3 bytes each: 75 MB for 512 at 256x192); 0 or 1:
            no shuffling of people.
        cycle_length: shards read at once (None: ``min(num_shards, 4)``).
        num_parallel_calls: parallelism of the per-image decode and warp and
            of the per-batch targets (default ``tf.data.AUTOTUNE``).
        dct_min_zoom: decode a JPEG at 1/2, 1/4 or 1/8 size (libjpeg's DCT
            scaling) when every crop of the image still reads at least this
            many decoded pixels per crop pixel; 0 always decodes at full size
            (see :func:`keras_dpn.data.parser.decode_window`). This one
            changes the crops' pixels slightly (smoother).
    """

    shuffle_buffer: int = 512
    cycle_length: object = None
    num_parallel_calls: int = AUTOTUNE
    dct_min_zoom: float = 2.0

    def __post_init__(self):
        for name, low in (("shuffle_buffer", 0), ("cycle_length", 1)):
            value = getattr(self, name)
            if value is None and name == "cycle_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}. Received: {name}={value!r}")
        if not (isinstance(self.dct_min_zoom, (int, float)) and np.isfinite(self.dct_min_zoom)
                and self.dct_min_zoom >= 0):
            raise ValueError("`dct_min_zoom` must be a finite number >= 0 (0: no DCT scaling). "
                             f"Received: dct_min_zoom={self.dct_min_zoom!r}")
        n = self.num_parallel_calls
        if isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != AUTOTUNE):
            raise ValueError("`num_parallel_calls` must be a positive int or tf.data.AUTOTUNE. "
                             f"Received: num_parallel_calls={n!r}")


# Where the keyword arguments of the old signature went (one line names the new home).
_MOVED = {"shuffle_buffer": "options=PipelineOptions(shuffle_buffer=...)",
          "cycle_length": "options=PipelineOptions(cycle_length=...)",
          "num_parallel_calls": "options=PipelineOptions(num_parallel_calls=...)",
          "dct_min_zoom": "options=PipelineOptions(dct_min_zoom=...)",
          "det_score_threshold": "detections=Detections(path, score_threshold=...)",
          "det_category_id": "detections=Detections(path, category_id=...)"}


def build_dataset(file_pattern, dataset=None, training=True, batch_size=32,
                  input_size=(256, 192), heatmap_size=None, *, sigma=2.0,
                  use_joint_weights=False, unbiased_encoding=False, augment=True,
                  detections=None, seed=None, deterministic=False, repeat=False,
                  drop_remainder=None, input_context=None, options=None, verbose=True,
                  **moved):
    """Top-down pose batches from TFRecord shards.

    Training yields ``(images, heatmaps, target_weight)``:

    - ``images``: float32 ``(B, H, W, 3)``, RGB, ImageNet-normalized;
    - ``heatmaps``: float32 ``(B, h, w, K)`` Gaussian targets;
    - ``target_weight``: float32 ``(B, K)``, 0 for invisible joints and joints
      whose Gaussian falls outside the heatmap.

    Keras reads the third element as ``sample_weight``, so
    ``model.fit(ds)`` with ``keras_dpn.training.losses.JointsMSE`` weighs joints.
    Evaluation yields ``(images, meta)`` with meta ``image_id`` int64 (B,),
    ``center`` / ``scale`` float32 (B, 2) (crop window in image pixels, for
    :meth:`keras_dpn.core.codec.HeatmapCodec.decode_to_image`), ``score`` float32
    (B,) (box score, 1.0 for ground-truth boxes), ``bbox`` float32 (B, 4),
    ``person_id`` int64 (B,) (annotation id, -1 for detections) and
    ``keypoints`` float32 (B, K, 3) (ground truth, zeros for detections).

    Args:
        file_pattern: shard glob (``"shards/coco_train-*.tfrecord"``) or a list.
        dataset: the keypoint set: ``"coco"``, ``"mpii"``, a keypoint-set
            ``.json`` file, a dict or a ``KeypointSpec``; None: the set the
            shards' manifest records (:func:`shard_keypoint_spec`), else coco.
        training: augment, shuffle, sample people, yield targets.
        batch_size: examples per batch (the global batch under a strategy).
        input_size: ``(height, width)`` of the crops.
        heatmap_size: ``(height, width)`` of the targets; default a quarter
            of ``input_size`` (what every registered variant predicts).
        sigma: Gaussian sigma in heatmap pixels.
        use_joint_weights: multiply target weights by the keypoint set's
            joint weights.
        unbiased_encoding: sub-pixel Gaussian centres (see the codec).
        augment: the training augmentation: a
            :class:`~keras_dpn.data.AugmentConfig`, True (the HRNet reference
            recipe, ``AugmentConfig()``) or None / False (none).
        detections: evaluation boxes: a COCO detection-results json (path or
            list) or a :class:`Detections` (score threshold, category); None
            uses the ground-truth boxes.
        seed: seed of shuffling and augmentation.
        deterministic: fixed element order (with ``seed``: reproducible).
        repeat: repeat forever (training).
        drop_remainder: default True for training, False for evaluation.
        input_context: ``tf.distribute.InputContext``: read only this
            pipeline's share of the shards.
        options: :class:`PipelineOptions` (shuffle buffer, shards read at
            once, parallelism, DCT-scaled decoding); None: the defaults.
        verbose: print detection counts.

    Returns:
        ``tf.data.Dataset``; its cardinality is known when the shards have a
        manifest (or always, in evaluation).

    Example:
    >>> pattern = sample_shards()  # the bundled sample's shards (build_coco_shards)
    >>> ds = build_dataset(pattern, batch_size=8, input_size=(64, 48), verbose=False)
    >>> images, heatmaps, weights = next(iter(ds))
    >>> images.shape, heatmaps.shape, weights.shape
    (TensorShape([8, 64, 48, 3]), TensorShape([8, 16, 12, 17]), TensorShape([8, 17]))
    >>> from keras_dpn.data import AugmentConfig
    >>> ds = build_dataset(pattern, batch_size=8, input_size=(64, 48), verbose=False,
    ...                    augment=AugmentConfig(rotation_prob=0.0, flip_prob=0.0))
    """
    reject_loose_settings(moved, "build_dataset")
    for name, value in moved.items():
        home = _MOVED.get(name)
        if home is None:
            raise TypeError(f"build_dataset() got an unexpected keyword argument {name!r}")
        raise TypeError(f"build_dataset() takes `{name}` as {home}. Received: {name}={value!r}")
    options = PipelineOptions() if options is None else options
    if not isinstance(options, PipelineOptions):
        raise ValueError("`options` must be a keras_dpn.data.PipelineOptions or None. "
                         f"Received: options={options!r}")
    if detections is not None and not isinstance(detections, Detections):
        detections = Detections(detections)
    spec = get_keypoint_spec(dataset) if dataset is not None else (
        shard_keypoint_spec(file_pattern) or get_keypoint_spec("coco"))
    if heatmap_size is None:
        try:
            heatmap_size = (input_size[0] // 4, input_size[1] // 4)
        except (TypeError, IndexError, KeyError):
            heatmap_size = input_size  # the parser's check names the bad input_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if detections is not None and training:
        raise ValueError("`detections` are evaluation boxes; use them with training=False. "
                         f"Received: training={training!r}")
    augment = resolve_augment(augment, spec)
    parser = PersonParser(spec, input_size, heatmap_size, sigma, augment=augment,
                          use_joint_weights=use_joint_weights,
                          unbiased_encoding=unbiased_encoding, dct_min_zoom=options.dct_min_zoom)
    shuffle_buffer, num_parallel_calls = options.shuffle_buffer, options.num_parallel_calls
    shards = resolve_shards(file_pattern, spec.num_keypoints, spec.name)
    if drop_remainder is None:
        drop_remainder = bool(training)
    k = spec.num_keypoints
    records = read_records(shards, shuffle_files=training, seed=seed, deterministic=deterministic,
                           cycle_length=options.cycle_length, input_context=input_context)
    records = records.map(lambda r: decode_example(r, k), num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic)
    have_manifest = all(p is not None for p in shards.people)
    # With an input context this pipeline reads a share of the shards only;
    # its size is then not the manifest's total.
    known = have_manifest and input_context is None

    if training:
        total = sum(shards.people) if known else None
        if total == 0:
            raise ValueError(f"Empty result: the shards {file_pattern!r} hold no people to train on.")
        if total is not None and drop_remainder and total < batch_size and not repeat:
            raise ValueError(f"`batch_size` ({batch_size}) exceeds the {total} people in the shards, "
                             f"and drop_remainder=True yields no batch. Received: batch_size={batch_size!r}")
        images = records.filter(lambda r: r["num_people"] > 0).map(_people_of_record)
        if repeat:
            images = images.repeat()
        # One seed per image; the parser splits it among the image's people.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        # An image is decoded once for all its people; the people are then
        # shuffled as uint8 crops (what the buffer holds: H x W x 3 bytes
        # each) and finished (normalization, targets) a batch at a time.
        people = tf.data.Dataset.zip((images, seeds)).map(
            parser.parse_record_train, num_parallel_calls=num_parallel_calls,
            deterministic=deterministic).unbatch()
        if shuffle_buffer and shuffle_buffer > 1:
            people = people.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if not repeat and total is not None:
            people = people.apply(tf.data.experimental.assert_cardinality(total))
        ds = people.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic).map(
            lambda b: parser.targets(b["crop"], b["joints"], b["visible"]),
            num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    else:
        if detections is None:
            people = records.filter(lambda r: r["num_people"] > 0).map(_people_of_record)
            total = sum(shards.people) if have_manifest else _scan_image_ids(shards)[1]
        else:
            ids = ([i for chunk in shards.image_ids for i in chunk] if have_manifest
                   else _scan_image_ids(shards)[0])
            dets = load_detections(detections.source, ids, detections.score_threshold,
                                   detections.category_id, verbose=verbose)
            people = _detection_people(records, dets, k)
            present = set(ids)
            total = sum(len(v[1]) for i, v in dets.items() if i in present)
        if total == 0:
            raise ValueError(f"Empty result: the shards {file_pattern!r} hold no people to evaluate.")
        people = people.map(parser.parse_record_eval, num_parallel_calls=num_parallel_calls,
                            deterministic=deterministic).unbatch()
        if input_context is None:
            people = people.apply(tf.data.experimental.assert_cardinality(total))
        ds = people.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic).map(
            lambda crops, meta: (parser.normalize(crops), meta),
            num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.with_options(options).prefetch(AUTOTUNE)


def _detection_people(records, dets, num_keypoints):
    """Per-image elements whose people are the detection boxes looked up by image id."""
    ids = np.array(sorted(dets), np.int64)
    starts, counts, boxes, scores = [], [], [], []
    offset = 0
    for i in ids:
        b, s = dets[int(i)]
        starts.append(offset)
        counts.append(len(s))
        boxes.append(b)
        scores.append(s)
        offset += len(s)
    boxes = tf.constant(np.concatenate(boxes), tf.float32)
    scores = tf.constant(np.concatenate(scores), tf.float32)
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(ids),
                                               tf.constant(np.stack([starts, counts], 1)[:, 0],
                                                           tf.int64))
    start_table = tf.lookup.StaticHashTable(init, default_value=-1)
    count_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.constant(counts, tf.int64)),
        default_value=0)

    def people(record):
        start = tf.maximum(start_table.lookup(record["image_id"]), 0)
        n = count_table.lookup(record["image_id"])
        b = boxes[start:start + n]
        p = tf.shape(b)[0]
        return {"bbox": b, "score": scores[start:start + n],
                "keypoints": tf.zeros([p, num_keypoints, 3], tf.float32),
                "center": tf.zeros([p, 2]), "scale": tf.zeros([p, 2]),
                "has_center": tf.zeros([p], tf.bool),
                "person_id": tf.fill([p], tf.constant(-1, tf.int64)),
                "encoded": record["encoded"], "image_id": record["image_id"]}

    return records.map(people).filter(lambda r: tf.shape(r["bbox"])[0] > 0)


def check_shards(file_pattern, dataset=None, decode_images=True, progress=True):
    """Reads every record of every shard and reports problems by shard name.

    Checks each file against its manifest (size) or its own framing, record
    framing and checksums, the record layout
    (:func:`~keras_dpn.data.decoder.inspect_example`), the record count, the
    image sha256 and, optionally, that every JPEG decodes.

    Args:
        file_pattern: shard glob or list.
        dataset: keypoint spec to check K against (None: any).
        decode_images: also decode every JPEG.
        progress: tqdm bar.

    Returns:
        dict ``{"records": n, "people": p, "problems": [str, ...]}``.
    """
    import hashlib
    k = None if dataset is None else get_keypoint_spec(dataset).num_keypoints
    shards, problems = _resolve_shards(file_pattern, k)
    inspect = tf.function(lambda r: inspect_example(r, -1 if k is None else k))
    n_records, n_people = 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(shards.files), unit="shard", desc="check shards")
    for f, expected in zip(shards.files, shards.expected_records):
        index, count = -1, 0
        try:
            for index, raw in enumerate(tf.data.TFRecordDataset(f)):
                count += 1
                try:
                    feat = tf.train.Example.FromString(raw.numpy()).features.feature
                    code, found_k = (int(t) for t in inspect(raw))
                except (DecodeError, tf.errors.InvalidArgumentError):
                    problems.append(f"{f} record {index}: cannot be parsed (not a "
                                    "tf.train.Example, or a key of another type)")
                    continue
                if code:
                    problems.append(f"{f} record {index}: {RECORD_PROBLEMS[code]}"
                                    + (f" (K={found_k})" if code == 2 else ""))
                    continue
                data = feat["image/encoded"].bytes_list.value[0]
                image_id = feat["image/id"].int64_list.value[0]
                if hashlib.sha256(data).hexdigest().encode() != feat["image/sha256"].bytes_list.value[0]:
                    problems.append(f"{f} record {index} (image id {image_id}): sha256 mismatch")
                if decode_images:
                    try:
                        tf.io.decode_jpeg(data, channels=3)
                    except tf.errors.InvalidArgumentError as e:
                        problems.append(f"{f} record {index} (image id {image_id}): JPEG: "
                                        f"{str(e).splitlines()[0][:100]}")
                n_records += 1
                n_people += len(feat["person/area"].float_list.value)
            if count != expected:
                problems.append(f"{f}: {count} records, {expected} expected")
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            problems.append(f"{f}: corrupt after record {index} ({str(e).splitlines()[0][:120]})")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"records": n_records, "people": n_people, "problems": problems}
