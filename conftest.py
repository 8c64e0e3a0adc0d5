"""Settings for every test and docstring example (pytest loads this file first).

Hermetic: Keras writes keras.json (and weight downloads) under KERAS_HOME,
matplotlib its font cache under MPLCONFIGDIR; both point at temporary folders,
never at the home folder.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
for _var, _prefix in (("KERAS_HOME", "keras_dpn_tests_keras_"),
                      ("MPLCONFIGDIR", "keras_dpn_tests_mpl_")):
    if _var not in os.environ:
        os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
        atexit.register(shutil.rmtree, os.environ[_var], True)
