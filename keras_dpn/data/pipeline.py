"""``build_dataset``: TFRecord shards -> batches for ``model.fit`` / evaluation.

Reading: the shard list is checked against the builder's manifest (complete
set, sizes, keypoint count) before anything runs; shards are read in parallel
with ``interleave`` (deterministic on request). A record that is corrupt or
truncated on disk stops the run with an error that names its shard: each
shard is read with ``ignore_errors`` (which skips the rest of a damaged file)
and the number of records read is compared with the manifest when the shard
ends.
"""

import glob
import json
import logging
import os

import numpy as np
import tensorflow as tf

from keras_dpn.data.coco import load_json
from keras_dpn.data.decoder import decode_example
from keras_dpn.data.parser import PersonParser
from keras_dpn.data.shards import MANIFEST_SUFFIX, SHARD_RE
from keras_dpn.keypoints import get_keypoint_spec

logger = logging.getLogger("keras_dpn.data")

AUTOTUNE = tf.data.AUTOTUNE


class ShardSet:
    """The resolved shard files of a ``file_pattern`` and what their manifests say."""

    def __init__(self, files, expected_records, people, image_ids, manifests):
        self.files = files
        self.expected_records = expected_records  # -1 where unknown
        self.people = people  # None where unknown
        self.image_ids = image_ids  # None where unknown
        self.manifests = manifests


def resolve_shards(file_pattern, num_keypoints=None):
    """Expands ``file_pattern`` and checks the shard set against its manifest.

    Args:
        file_pattern: glob string, or a list of globs / file names.
        num_keypoints: if given, every manifest must agree.

    Returns:
        :class:`ShardSet`.

    Raises:
        ValueError: nothing matches, a shard of a numbered set is missing,
            sizes differ from the manifest, or the keypoint count differs.
    """
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
            logger.warning("No manifest %s: shard completeness and corrupt records cannot be "
                           "checked by name.", mpath)
    expected, people, image_ids = [], [], []
    for f in files:
        m = SHARD_RE.match(f)
        entry = None
        if m and (m["prefix"], int(m["total"])) in manifests:
            manifest = manifests[(m["prefix"], int(m["total"]))]
            if num_keypoints is not None and manifest["num_keypoints"] != num_keypoints:
                raise ValueError(
                    f"Shards {m['prefix']}-* hold {manifest['num_keypoints']} keypoints per "
                    f"person ({manifest['dataset']!r}); the requested keypoint spec has "
                    f"{num_keypoints}. Pass the matching `dataset=`.")
            entry = {s["file"]: s for s in manifest["shards"]}.get(os.path.basename(f))
            if entry is None:
                raise ValueError(f"Shard {f} is not listed in its manifest: stale file from "
                                 "another build?")
            size = os.path.getsize(f)
            if size != entry["bytes"]:
                raise ValueError(f"Shard {f} has {size} bytes, its manifest says {entry['bytes']}: "
                                 "truncated or modified. Rebuild the shards.")
        expected.append(entry["records"] if entry else -1)
        people.append(entry["people"] if entry else None)
        image_ids.append(entry["image_ids"] if entry else None)
    return ShardSet(files, expected, people, image_ids, manifests)


def _read_shard(filename, expected_records):
    """Records of one shard; a damaged shard fails with its name once read."""
    records = tf.data.TFRecordDataset(filename, buffer_size=1 << 20)
    # ignore_errors moves on to the end of a damaged file instead of failing
    # with a message that names no file; the record count then tells.
    records = records.ignore_errors().map(lambda r: (r, False))
    ends = tf.data.Dataset.from_tensors((tf.constant(b""), True))

    def count(n, item):
        return n + 1, (item[0], item[1], n)

    def check(record, is_end, n):
        ok = ~is_end | (expected_records < 0) | tf.equal(n, expected_records)
        assertion = tf.debugging.Assert(ok, [tf.strings.format(
            "Corrupt or truncated shard {}: read {} of {} records. Rebuild it "
            "(keras_dpn.data.check_shards finds the bad record).",
            (filename, n, expected_records))])
        with tf.control_dependencies([assertion]):
            return tf.identity(record), is_end

    return (records.concatenate(ends).scan(tf.constant(0, tf.int64), count)
            .map(check).filter(lambda r, e: ~e).map(lambda r, e: r))


def read_records(shards, shuffle_files=False, seed=None, deterministic=True, cycle_length=None,
                 input_context=None):
    """Serialized records of a :class:`ShardSet`, shards read in parallel."""
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
    return files.interleave(_read_shard, cycle_length=cycle, block_length=1,
                            num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _people_of_record(record):
    """Per-person tensors of one record, the image's scalars repeated per person."""
    p = record["num_people"]
    person = {key: record[key] for key in ("bbox", "keypoints", "center", "scale", "has_center",
                                           "person_id")}
    person["encoded"] = tf.fill([p], record["encoded"])
    person["image_id"] = tf.fill([p], record["image_id"])
    person["score"] = tf.ones([p], tf.float32)
    return person


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
                         f"det_score_threshold={score_threshold!r}")
    if verbose:
        print(f"Detections {os.path.basename(os.fspath(name))}: kept {kept} of {len(rows)} boxes "
              f"on {len(out)} images; dropped {counts}.")
    return {k: (np.array([b for b, _ in v], np.float32), np.array([s for _, s in v], np.float32))
            for k, v in out.items()}


def _scan_image_ids(shards):
    """Image ids and people counts by reading the shards (when no manifest)."""
    feats = {"image/id": tf.io.FixedLenFeature([], tf.int64),
             "person/area": tf.io.VarLenFeature(tf.float32)}
    ids, people = [], 0
    ds = tf.data.TFRecordDataset(shards.files).map(
        lambda r: tf.io.parse_single_example(r, feats), num_parallel_calls=AUTOTUNE)
    for ex in ds:
        ids.append(int(ex["image/id"]))
        people += int(tf.size(ex["person/area"].values))
    return ids, people


def build_dataset(file_pattern, dataset="coco", training=True, batch_size=32,
                  input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0, detections=None,
                  det_score_threshold=0.0, det_category_id=1, deterministic=False, seed=None,
                  shuffle_buffer=512, repeat=False, drop_remainder=None, cycle_length=None,
                  num_parallel_calls=AUTOTUNE, input_context=None, scale_factor=0.3,
                  rotation_factor=40.0, rotation_prob=0.6, flip_prob=0.5, half_body_prob=None,
                  half_body_min_joints=8, use_joint_weights=False, unbiased_encoding=False,
                  verbose=True):
    """Top-down pose batches from TFRecord shards.

    Training yields ``(images, heatmaps, target_weight)``:

    - ``images``: float32 ``(B, H, W, 3)``, RGB, ImageNet-normalized;
    - ``heatmaps``: float32 ``(B, h, w, K)`` Gaussian targets;
    - ``target_weight``: float32 ``(B, K)``, 0 for invisible joints and joints
      whose Gaussian falls outside the heatmap.

    Keras reads the third element as ``sample_weight``, so
    ``model.fit(ds)`` with ``keras_dpn.losses.JointsMSE`` weighs joints.
    Evaluation yields ``(images, meta)`` with meta ``image_id`` int64 (B,),
    ``center`` / ``scale`` float32 (B, 2) (crop window in image pixels, for
    :meth:`keras_dpn.codec.HeatmapCodec.decode_to_image`), ``score`` float32
    (B,) (box score, 1.0 for ground-truth boxes), ``bbox`` float32 (B, 4),
    ``person_id`` int64 (B,) (annotation id, -1 for detections) and
    ``keypoints`` float32 (B, K, 3) (ground truth, zeros for detections).

    Args:
        file_pattern: shard glob (``"shards/coco_train-*.tfrecord"``) or a list.
        dataset: ``"coco"``, ``"mpii"`` or a ``KeypointSpec``.
        training: augment, shuffle, sample people, yield targets.
        batch_size: examples per batch (the global batch under a strategy).
        input_size: ``(height, width)`` of the crops.
        heatmap_size: ``(height, width)`` of the targets.
        sigma: Gaussian sigma in heatmap pixels.
        detections: evaluation boxes from a COCO detection-results json
            (path or list); None uses the ground-truth boxes.
        det_score_threshold: drop detections scoring below.
        det_category_id: keep detections of this category (None: all).
        deterministic: fixed element order (with ``seed``: reproducible).
        seed: seed of shuffling and augmentation.
        shuffle_buffer: people in the shuffle buffer (training).
        repeat: repeat forever (training).
        drop_remainder: default True for training, False for evaluation.
        cycle_length: shards read at once (default ``min(num_shards, 4)``).
        num_parallel_calls: parallelism of decode and warp.
        input_context: ``tf.distribute.InputContext``: read only this
            pipeline's share of the shards.
        scale_factor, rotation_factor, rotation_prob, flip_prob,
        half_body_prob, half_body_min_joints, use_joint_weights,
        unbiased_encoding: see :class:`keras_dpn.data.parser.PersonParser`.
        verbose: print detection counts.

    Returns:
        ``tf.data.Dataset``; its cardinality is known when the shards have a
        manifest (or always, in evaluation).

    Example:
    >>> ds = build_dataset("/tmp/shards/coco_sample-*.tfrecord", batch_size=8)  # doctest: +SKIP
    >>> images, heatmaps, weights = next(iter(ds))  # doctest: +SKIP
    """
    spec = get_keypoint_spec(dataset)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if detections is not None and training:
        raise ValueError("`detections` are evaluation boxes; use them with training=False. "
                         f"Received: training={training!r}")
    parser = PersonParser(spec, input_size, heatmap_size, sigma, scale_factor=scale_factor,
                          rotation_factor=rotation_factor, rotation_prob=rotation_prob,
                          flip_prob=flip_prob, half_body_prob=half_body_prob,
                          half_body_min_joints=half_body_min_joints,
                          use_joint_weights=use_joint_weights,
                          unbiased_encoding=unbiased_encoding)
    shards = resolve_shards(file_pattern, spec.num_keypoints)
    if drop_remainder is None:
        drop_remainder = bool(training)
    k = spec.num_keypoints
    records = read_records(shards, shuffle_files=training, seed=seed, deterministic=deterministic,
                           cycle_length=cycle_length, input_context=input_context)
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
        people = (records.filter(lambda r: r["num_people"] > 0).map(_people_of_record)
                  .unbatch())
        if shuffle_buffer and shuffle_buffer > 1:
            people = people.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            people = people.repeat()
        elif total is not None:
            people = people.apply(tf.data.experimental.assert_cardinality(total))
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((people, seeds)).map(
            parser.parse_train, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
        if total is not None and drop_remainder and total < batch_size and not repeat:
            raise ValueError(f"`batch_size` ({batch_size}) exceeds the {total} people in the shards, "
                             f"and drop_remainder=True yields no batch. Received: batch_size={batch_size!r}")
    else:
        if detections is None:
            people = records.map(_people_of_record).unbatch()
            total = sum(shards.people) if have_manifest else _scan_image_ids(shards)[1]
        else:
            ids = ([i for chunk in shards.image_ids for i in chunk] if have_manifest
                   else _scan_image_ids(shards)[0])
            dets = load_detections(detections, ids, det_score_threshold, det_category_id,
                                   verbose=verbose)
            people = _detection_people(records, dets, k)
            present = set(ids)
            total = sum(len(v[1]) for i, v in dets.items() if i in present)
        if total == 0:
            raise ValueError(f"Empty result: the shards {file_pattern!r} hold no people to evaluate.")
        if input_context is None:
            people = people.apply(tf.data.experimental.assert_cardinality(total))
        ds = people.map(parser.parse_eval, num_parallel_calls=num_parallel_calls,
                        deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                  deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.with_options(options).prefetch(AUTOTUNE)


def _detection_people(records, dets, num_keypoints):
    """Per-person elements built from detection boxes looked up by image id."""
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
                "encoded": tf.fill([p], record["encoded"]),
                "image_id": tf.fill([p], record["image_id"])}

    return records.map(people).unbatch()


def check_shards(file_pattern, dataset=None, decode_images=True, progress=True):
    """Reads every record of every shard and reports problems by shard name.

    Checks record framing (CRC), the Example layout, the image sha256 and,
    optionally, that every JPEG decodes.

    Args:
        file_pattern: shard glob or list.
        dataset: keypoint spec to check K against (None: any).
        decode_images: also decode every JPEG.
        progress: tqdm bar.

    Returns:
        dict ``{"records": n, "people": p, "problems": [str, ...]}``.
    """
    import hashlib
    shards = resolve_shards(file_pattern)
    problems, n_records, n_people = [], 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(shards.files), unit="shard", desc="check shards")
    for f in shards.files:
        index = -1
        try:
            for index, raw in enumerate(tf.data.TFRecordDataset(f)):
                ex = tf.train.Example.FromString(raw.numpy())
                feat = ex.features.feature
                k = feat["image/num_keypoints"].int64_list.value[0]
                if dataset is not None and k != get_keypoint_spec(dataset).num_keypoints:
                    problems.append(f"{f} record {index}: K={k}")
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
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            problems.append(f"{f}: corrupt after record {index} ({str(e).splitlines()[0][:120]})")
        except Exception as e:  # a record that is not an Example with our keys
            problems.append(f"{f} record {index + 1}: {type(e).__name__}: {e}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"records": n_records, "people": n_people, "problems": problems}
