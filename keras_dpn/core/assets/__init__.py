"""Files that ship inside the package, so that an installed keras-dpn needs no checkout.

``CALIBRATION_CROPS``: the default int8 calibration set of
:func:`keras_dpn.deploy.calibration.default_crops`. ``SAMPLE_IMAGE``: one photo
to try ``keras-dpn predict`` or :class:`keras_dpn.PoseEstimator` on. Sources,
licences and how to rebuild them: ``README.md`` in this folder.

Example:
>>> import os
>>> from keras_dpn.core import assets
>>> os.path.isfile(assets.SAMPLE_IMAGE)
True
"""

import os

ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))
CALIBRATION_CROPS = os.path.join(ASSETS_DIR, "calibration_crops.jpg")
SAMPLE_IMAGE = os.path.join(ASSETS_DIR, "sample_person.jpg")
