"""Optional dependencies and the Keras backend: one place for "X needs Y" errors.

keras-dpn runs on every Keras 3 backend. TensorFlow is a default dependency,
but only the TensorFlow path needs it: the tf.data input pipeline
(``keras_dpn.data.build_dataset``), SavedModel / TFLite export, the
``tf.distribute`` strategies and TF checkpoints of :mod:`keras_dpn.training.trainer`.
Those modules import it through :func:`tensorflow` (or a :class:`LazyModule`),
so that without it ``import keras_dpn`` still works and the feature that needs
it fails with one line naming the feature and the install command.

Example:
>>> from keras_dpn.core import optional as _optional
>>> _optional.require("no_such_module_xyz", "Reading .xyz files", "pip install xyz")
... # doctest: +ELLIPSIS
Traceback (most recent call last):
keras_dpn.core.optional.MissingDependencyError: Reading .xyz files needs no_such_module_xyz, ...
"""

import importlib
import importlib.util
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# What to install for each backend (TensorFlow: the version the package is tested with).
INSTALL = {"tensorflow": 'pip install "tensorflow==2.21.*"',
           "jax": 'pip install "jax[cpu]"  (GPU: pip install "jax[cuda12]")',
           "torch": "pip install torch"}


class MissingDependencyError(ImportError):
    """A feature needs a package that cannot be imported here.

    An ``ImportError``, so ``except ImportError`` around optional features
    keeps working; its message names the feature and the install command.
    """


def require(module, feature, install):
    """Imports ``module`` or raises :class:`MissingDependencyError` naming ``feature``.

    Args:
        module: importable name, e.g. ``"tensorflow"``.
        feature: what needs it, as the start of a sentence ("Writing TFRecord shards").
        install: the command that installs it.

    Returns:
        The imported module.
    """
    # Already imported: no import machinery (which tf.autograph, tracing the
    # tf.data functions that call this, would try to convert and warn about).
    loaded = sys.modules.get(module)
    if loaded is not None:
        return loaded
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # from None: the one line says everything; the import machinery's
        # traceback would only bury it.
        raise MissingDependencyError(
            f"{feature} needs {module}, which cannot be imported ({e}). "
            f"Install it with: {install}") from None


def tensorflow(feature):
    """The ``tensorflow`` module, or a one-line error naming ``feature``."""
    return require("tensorflow", feature, INSTALL["tensorflow"])


def is_installed(module):
    """True when ``module`` can be found, without importing it (cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class LazyModule:
    """A module imported on first attribute access, with :func:`require`'s error.

    For modules written against ``tf.`` throughout: ``tf = LazyModule(
    "tensorflow", "The tf.data input pipeline")`` keeps their code as it is,
    while importing the module costs nothing until TensorFlow is really used.
    """

    def __init__(self, module, feature, install=None):
        self._module_name = module
        self._feature = feature
        self._install = install or INSTALL.get(module, f"pip install {module}")
        self._module = None

    def __getattr__(self, name):
        if self._module is None:
            self._module = require(self._module_name, self._feature, self._install)
        return getattr(self._module, name)

    def __repr__(self):
        state = "imported" if self._module is not None else "not imported yet"
        return f"<LazyModule {self._module_name!r} ({state})>"



# TensorFlow as the modules of keras_dpn.data use it: `from keras_dpn.core.optional
# import tf_data as tf`. Numpy readers (read_coco, read_mpii, PersonCrops) never touch it.
tf_data = LazyModule("tensorflow", "The tf.data input pipeline and TFRecord shards "
                     "(keras_dpn.data: build_dataset, build_coco_shards, ...)")


def lazy_exports(package, exports):
    """Module ``__getattr__`` / ``__dir__`` that import submodules on first use.

    For names whose module needs an optional package (the tf.data pipeline):
    the package imports without it, and the name fails only when used, with
    the error of that module's :func:`require`.

    Args:
        package: the package's ``__name__``.
        exports: ``{submodule: (names...)}`` re-exported by the package.

    Returns:
        ``(__getattr__, names)``: the namespace hook and the lazy names.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        if name in exports:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where) + sorted(exports)


def lazy_submodules(package):
    """Module ``__getattr__`` that imports a package's submodule on first attribute use.

    ``keras_dpn.inference.video`` then works after ``import keras_dpn`` alone,
    as it did when the modules sat at the package root, while nothing is
    imported before it is used.

    Args:
        package: the package's ``__name__``.

    Returns:
        The ``__getattr__`` for the package's namespace.
    """
    def __getattr__(name):
        if not name.startswith("__"):
            try:
                found = importlib.util.find_spec(f"{package}.{name}") is not None
            except (ImportError, ValueError):
                found = False
            if found:
                return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


# ---------------------------------------------------------------------------
# The Keras backend.


def backend():
    """The Keras backend's name (``"tensorflow"``, ``"jax"``, ``"torch"``, ...)."""
    import keras
    return keras.backend.backend()


def require_tensorflow_backend(feature, hint=""):
    """Raises a one-line ``ValueError`` unless Keras runs on TensorFlow.

    Args:
        feature: what needs it, as the start of a sentence.
        hint: what to do instead on other backends (appended).
    """
    name = backend()
    if name != "tensorflow":
        raise ValueError(
            f"{feature} needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
            f"Keras runs on {name!r} here.{' ' + hint if hint else ''} "
            f"Received: KERAS_BACKEND={os.environ.get('KERAS_BACKEND', name)!r}")


def check_backend_name(name, argument="backend"):
    """Checks a backend name and that its package is installed, before Keras loads it.

    Args:
        name: ``"tensorflow"``, ``"jax"`` or ``"torch"``.
        argument: the argument or flag to name in the error.

    Returns:
        ``name``.

    Raises:
        ValueError: unknown name, or the backend's package is not installed.
    """
    if name not in BACKENDS:
        raise ValueError(f"`{argument}` must be one of {BACKENDS}. Received: {argument}={name!r}")
    if not is_installed(name):
        raise ValueError(f"The {name} backend is not installed. Install it with: "
                         f"{INSTALL[name]}. Received: {argument}={name!r}")
    return name


def has_gpu():
    """True when the active backend sees a GPU."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf
        return bool(tf.config.list_logical_devices("GPU"))
    if name == "jax":
        import jax
        return any(d.platform == "gpu" for d in jax.devices())
    if name == "torch":
        import torch
        return bool(torch.cuda.is_available())
    return False
