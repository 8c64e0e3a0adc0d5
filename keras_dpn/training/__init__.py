"""Training: the loop, its run folder, and what ``compile``/``fit`` take.

Modules: ``trainer`` (``Trainer``: the ``model.fit`` and tf.distribute loops),
``strategies`` (``get_strategy``, ``is_chief``), ``reproducibility`` (seeds,
deterministic ops, the reference head init), ``precision`` (dtype policies),
``schedules`` (``EpochPiecewiseSchedule``), ``checkpoints`` (epoch checkpoints,
``state.json``, best weights, resume), ``run_callbacks`` (what the Trainer adds to
every run: NaN guard, ``history.csv``, TensorBoard scalars, the epoch checkpoint),
``run_folder`` (the run folder contract, shared by the trainer and ``keras-dpn
publish``), ``callbacks`` (COCO / MPII evaluation during training), ``losses``
(``JointsMSE``), ``metrics`` (``HeatmapPCK``).
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules

# Each module on first use (``keras_dpn.training.<module>``).
__getattr__ = _lazy_submodules(__name__)
