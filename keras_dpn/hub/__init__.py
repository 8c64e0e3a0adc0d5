"""Weights and presets: the registry of released weights, presets, ``publish`` and the cache.

Modules: ``weights`` (registered ``arch.tag`` weights: URL, sha256, keypoint set,
metric; download and verify), ``presets`` (``from_preset``: a folder or a
registered name with its config, weights and preprocessing), ``pretrained`` (the
``weights=`` argument of every builder), ``publish`` (a run folder to a preset).
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules

# Each module on first use (``keras_dpn.hub.<module>``).
__getattr__ = _lazy_submodules(__name__)
