"""Settings for every test and docstring example (pytest loads this file first).

Hermetic: Keras writes keras.json under KERAS_HOME, and so does the package
(weight and preset downloads, unpacked presets, the sample shards of
``keras-dpn train``: all under ``$KERAS_HOME/keras_dpn``); matplotlib writes its
font cache under MPLCONFIGDIR. Both always point at temporary folders of this
test process (also when the shell sets them: a test must neither read a cache
it did not fill nor leave files in the user's), removed at exit.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
for _var, _prefix in (("KERAS_HOME", "keras_dpn_tests_keras_"),
                      ("MPLCONFIGDIR", "keras_dpn_tests_mpl_")):
    os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
    atexit.register(shutil.rmtree, os.environ[_var], True)


import pytest  # noqa: E402  (after the environment above: nothing here imports Keras)


@pytest.fixture(autouse=True)
def _doctest_sample_shards(request, tmp_path_factory):
    """Gives docstring examples ``sample_shards()``: the shard pattern of the bundled COCO
    sample (``build_coco_shards`` on ``sample_data/coco``), built once per test session
    into pytest's temporary folder, on the first call."""
    from _pytest.doctest import DoctestItem
    if not isinstance(request.node, DoctestItem):
        return
    cache = {}

    def sample_shards():
        if "pattern" not in cache:
            import glob
            folder = tmp_path_factory.getbasetemp() / "doctest_sample_shards"
            if not glob.glob(str(folder / "coco-*.tfrecord")):
                from keras_dpn.data import build_coco_shards
                build_coco_shards(
                    "sample_data/coco/annotations/person_keypoints_sample.json",
                    "sample_data/coco/images", str(folder / "coco"), 2, progress=False,
                    verbose=False)
            cache["pattern"] = str(folder / "coco-*.tfrecord")
        return cache["pattern"]

    request.getfixturevalue("doctest_namespace")["sample_shards"] = sample_shards
