"""`keras-dpn benchmark`: one row per format, sizes as on disk, consistent AP, bad input.

The run goes through the real command line (``keras_dpn.cli.main.main``) on
the memorized DPN1_32 fixture at 128x96 (a real AP to compare: an untrained
model scores 0.0 in every format, which any mix-up of files would still match);
every expected value is computed here independently of the benchmark's code:
file sizes with ``os.stat``, file names from the export layout, the AP bounds
from the model being the same in every float format.
"""

import json
import os
import resource
import time

import pytest

from keras_dpn.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DPN1_32 at 128x96 trained until it memorized the bundled sample (tests/data/README.md).
MEMORIZED = os.path.join(ROOT, "tests", "data", "dpn1_32_128x96_memorized_coco_sample.weights.h5")
FORMATS = ("keras", "tflite_fp32", "tflite_fp16", "tflite_int8", "onnx")
FLOAT_FORMATS = ("keras", "tflite_fp32", "tflite_fp16", "onnx")
# Where `keras-dpn export` puts each format (docs/guide/deployment.md), under --output/export.
EXPECTED_FILES = {"keras": "model.keras", "saved_model": "saved_model",
                  "tflite_fp32": "model_fp32.tflite", "tflite_fp16": "model_fp16.tflite",
                  "tflite_int8": "model_int8.tflite", "onnx": "model.onnx"}


def _disk_size(path):
    """Bytes on disk of a file, or of every file under a folder (a SavedModel)."""
    if os.path.isdir(path):
        return sum(os.stat(os.path.join(d, f)).st_size for d, _, names in os.walk(path)
                   for f in names)
    return os.stat(path).st_size


def _cpu_seconds():
    """CPU time of this process and of its finished children (the timing processes)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``keras-dpn benchmark DPN1_32 --weights MEMORIZED --quick`` once:
    ``(exit code, output folder, CPU seconds)``."""
    out = tmp_path_factory.mktemp("benchmark") / "dpn1_32"
    start = _cpu_seconds()
    code = cli.main(["benchmark", "DPN1_32", "--weights", MEMORIZED, "--input-size", "128", "96",
                     "--quick", "--max-images", "10", "--threads", "2", "--formats", *FORMATS,
                     "--output", str(out)])
    return code, out, _cpu_seconds() - start


def test_quick_benchmark_has_one_row_per_format(quick_run):
    code, out, _ = quick_run
    assert code == 0
    with open(out / "benchmark.json") as f:
        report = json.load(f)
    assert [r["format"] for r in report["rows"]] == list(FORMATS)
    assert report["command"].startswith("keras-dpn benchmark DPN1_32 --weights")
    assert report["input_size"] == [128, 96] and report["threads"] == [1, 2]
    assert report["machine"]["cores"] == os.cpu_count() and report["machine"]["cpu"]
    assert report["machine"]["versions"]["keras"] and report["date"].startswith("20")
    for row in report["rows"]:
        path = out / "export" / EXPECTED_FILES[row["format"]]
        assert row["file"] == os.path.join("export", EXPECTED_FILES[row["format"]])
        assert row["size_bytes"] == _disk_size(path), row["format"]
        assert "error" not in row, row
        for threads in ("1", "2"):
            stats = row["latency"][threads]
            assert 0 < stats["min_ms"] <= stats["p25_ms"] <= stats["median_ms"] \
                <= stats["p75_ms"] <= stats["max_ms"]
        assert row["throughput"] > 0 and 0 < row["matmul_fraction"]
    markdown = (out / "benchmark.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(FORMATS)  # the header and one line per format
    assert report["command"] in markdown


def test_quick_benchmark_ap_agrees_across_formats(quick_run):
    """One model in every format: the float files score the Keras AP, int8 close to it."""
    _, out, _ = quick_run
    with open(out / "benchmark.json") as f:
        rows = {r["format"]: r for r in json.load(f)["rows"]}
    for fmt, row in rows.items():
        assert 0.0 <= row["AP"] <= 1.0, fmt
    assert rows["keras"]["AP"] >= 0.5  # memorized: far above an untrained model's 0.0
    for fmt in FLOAT_FORMATS:
        assert abs(rows[fmt]["AP"] - rows["keras"]["AP"]) <= 0.01, fmt
    # test_export_ground_truth.py bounds this int8 file's drop on all 52 images.
    assert abs(rows["tflite_int8"]["AP"] - rows["tflite_fp32"]["AP"]) <= 0.1


def test_quick_benchmark_is_quick(quick_run):
    # CPU seconds, not wall time: a loaded machine stretches the latter, not the former.
    # About 40-60 s on the development machine, most of it the export of four formats.
    assert quick_run[2] < 150


@pytest.mark.parametrize("argv, named", [
    (["DPN9_99"], "source='DPN9_99'"),
    (["DPN1_32", "--formats", "tflite_int9"], "--formats tflite_int9"),
    (["DPN1_32", "--formats", "tflite_qat"], "--formats tflite_qat"),
    (["DPN1_32", "--threads", "0"], "--threads=0"),
    (["DPN1_32", "--repeats", "0"], "--repeats=0"),
    (["DPN1_32", "--input-size", "100", "48"], "input_shape=(100, 48, 3)"),
    (["DPN1_32", "--input-size", "0", "48"], "--input-size 0 48"),
    (["DPN1_32", "--annotations", "missing.json"], "--images=None"),
    (["DPN1_32", "--annotations", "missing.json", "--images", "."], "missing.json"),
    (["DPN1_32", "--no-ap", "--max-images", "3"], "--max-images=3"),
    (["DPN1_32", "--max-images", "0"], "--max-images=0"),
    (["DPN1_32", "--weights", "missing.weights.h5"], "missing.weights.h5"),
    (["{tmp}", "--input-size", "64", "48"], "source="),
    (["{tmp}"], "source="),
])
def test_bad_input_is_one_line_before_any_work(argv, named, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "out"
    start = time.time()
    code = cli.main(["benchmark", *argv, "--quick", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("keras-dpn benchmark: error: ") and named in err, err
    assert not out.exists() and time.time() - start < 60


def test_an_earlier_benchmark_is_kept_without_overwrite(quick_run, capsys):
    _, out, _ = quick_run
    before = (out / "benchmark.json").read_bytes()
    code = cli.main(["benchmark", "DPN1_32", "--quick", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err, err
    assert (out / "benchmark.json").read_bytes() == before


def test_unknown_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["benchmark", "DPN1_32", "--formts", "onnx"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--formts" in err


def test_benchmark_of_a_preset_reuses_its_export(quick_run, tmp_path):
    """A preset (what `keras-dpn publish` writes) benchmarks its own weights and files.

    The preset holds the memorized model and the quick run's export folder: its Keras
    row must score the quick run's Keras AP (the same weights, the same images), and its
    int8 row must be the preset's own file (same size), not a new export.
    """
    import keras_dpn
    from keras_dpn.hub.presets import save_preset

    _, out, _ = quick_run
    model = keras_dpn.DPN1_32(input_shape=(128, 96, 3))
    model.load_weights(MEMORIZED)
    preset = save_preset(model, tmp_path / "dpn1_32_sample", keypoints="coco",
                         export_dir=str(out / "export"))
    bench = tmp_path / "bench"
    code = cli.main(["benchmark", str(preset.path), "--quick", "--max-images", "10",
                     "--threads", "1", "--formats", "keras", "tflite_int8",
                     "--output", str(bench)])
    assert code == 0
    with open(bench / "benchmark.json") as f:
        rows = {r["format"]: r for r in json.load(f)["rows"]}
    with open(out / "benchmark.json") as f:
        first = {r["format"]: r for r in json.load(f)["rows"]}
    assert sorted(rows) == ["keras", "tflite_int8"]
    assert abs(rows["keras"]["AP"] - first["keras"]["AP"]) <= 1e-6
    int8 = os.path.join(str(preset.path), "export", "model_int8.tflite")
    assert rows["tflite_int8"]["size_bytes"] == os.stat(int8).st_size
    assert abs(rows["tflite_int8"]["AP"] - first["tflite_int8"]["AP"]) <= 1e-6
    assert not os.path.exists(bench / "export" / "model_int8.tflite")  # reused, not exported
