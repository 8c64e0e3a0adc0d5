"""keras-dpn: Dilation Pyramid Net pose estimation for Keras 3 (TensorFlow, JAX, PyTorch)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "keras_dpn" / "__init__.py").read_text()).group(1)

setup(
    name="keras-dpn",
    version=VERSION,
    description="Dilation Pyramid Net (DPN) pose estimation for Keras 3: TensorFlow, JAX, PyTorch",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["keras_dpn", "keras_dpn.*"]),
    # The default int8 calibration crops and a sample photo (keras_dpn/assets/):
    # an installed package exports and predicts without a checkout.
    package_data={"keras_dpn.assets": ["*.jpg", "README.md"]},
    install_requires=[
        # tensorflow-addons is deliberately absent: it is end-of-life and fails
        # to import on TF 2.21; affine warps use tf.raw_ops.ImageProjectiveTransformV3.
        # The TensorFlow path (tf.data, SavedModel / TFLite export, tf.distribute);
        # the package imports and trains on JAX / PyTorch without it.
        "tensorflow==2.21.*",
        "keras>=3.15",
        "numpy",
        "pycocotools",
        # Tested with 4.x and 5.x (5.0 dropped HOG and the cascade files,
        # which the package does not use).
        "opencv-python-headless>=4.8,<6",
        "tqdm",
        "matplotlib",
        "scipy",
        "h5py",
    ],
    extras_require={
        # jax[cpu]: the default test run checks the JAX backend (tests/test_backends.py);
        # PyTorch is too large for CI, its runs skip unless torch is installed.
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "jax[cpu]"],
        "export": ["tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"],
        # tfmot works only through tf_keras; keras_dpn.qat imports it lazily,
        # in its own process, so the rest of the package never sees tf_keras.
        "qat": ["tensorflow-model-optimization", "tf-keras==2.21.*"],
    },
    entry_points={"console_scripts": ["keras-dpn=keras_dpn.cli:main"]},
)
