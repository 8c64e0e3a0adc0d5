"""The package version, in a module of its own: the modules that record it
(presets, run_config.json) read it from here, not from the package root,
which imports every other module."""

__version__ = "0.1.0"
