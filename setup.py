"""keras-dpn: Dilation Pyramid Net pose estimation for Keras 3 (TensorFlow, JAX, PyTorch)."""

import pathlib
import re

import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).parent

# The bundled samples `keras-dpn train` runs without data (keras_dpn/cli/train.py):
# copied from the checkout into the built package (keras_dpn/core/assets/sample_data/)
# rather than kept twice in the repository. Source -> place in the package.
SAMPLE_FILES = {
    "sample_data/coco/annotations/person_keypoints_sample.json":
        "coco/annotations/person_keypoints_sample.json",
    "sample_data/coco/images": "coco/images",
    "sample_data/mpii/valid_sample.json": "mpii/valid_sample.json",
    "sample_data/mpii/images": "mpii/images",
    "tests/data/mpii/gt_valid.mat": "mpii/gt_valid.mat",
}


class BuildWithSamples(build_py):
    """build_py, plus the bundled samples (when the checkout has them) as package data."""

    def run(self):
        super().run()
        target = pathlib.Path(self.build_lib) / "keras_dpn" / "core" / "assets" / "sample_data"
        for source, dest in SAMPLE_FILES.items():
            source, dest = HERE / source, target / dest
            if source.is_dir():
                shutil.copytree(source, dest, dirs_exist_ok=True)
            elif source.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "keras_dpn" / "_version.py").read_text()).group(1)

setup(
    name="keras-dpn",
    version=VERSION,
    description="Dilation Pyramid Net (DPN) pose estimation for Keras 3: TensorFlow, JAX, PyTorch",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["keras_dpn", "keras_dpn.*"]),
    # The default int8 calibration crops and a sample photo (keras_dpn/core/assets/):
    # an installed package exports and predicts without a checkout.
    package_data={"keras_dpn.core.assets": ["*.jpg", "README.md"]},
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
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "jax[cpu]",
                # lint-imports: the layering contract (.importlinter, tests/test_layering.py).
                "import-linter"],
        "export": ["tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"],
        # tfmot works only through tf_keras; keras_dpn.deploy.qat imports it lazily,
        # in its own process, so the rest of the package never sees tf_keras.
        "qat": ["tensorflow-model-optimization", "tf-keras==2.21.*"],
        # The documentation site: `mkdocs build --strict` (tests/test_docs.py runs it).
        "docs": ["mkdocs-material", "mkdocstrings[python]"],
    },
    entry_points={"console_scripts": ["keras-dpn=keras_dpn.cli.main:main"]},
    cmdclass={"build_py": BuildWithSamples},
)
