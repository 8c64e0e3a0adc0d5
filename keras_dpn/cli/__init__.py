"""The ``keras-dpn`` command (the top layer).

Modules: ``main`` (the subcommands: export, predict, publish, ... and the entry
point ``keras_dpn.cli.main:main``), ``train`` (``keras-dpn train``, also run by
``recipes/train_coco.py`` and ``recipes/train_mpii.py``).
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules

# Each module on first use (``keras_dpn.cli.<module>``).
__getattr__ = _lazy_submodules(__name__)
