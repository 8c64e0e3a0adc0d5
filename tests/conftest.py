import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
TEST_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def sample_dir():
    return SAMPLE


@pytest.fixture(scope="session")
def test_data_dir():
    return TEST_DATA


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """One export of a small seeded DPN, shared by the deployment tests:
    ``(keras model, export folder, uint8 crops)``."""
    import deploy_helpers
    return deploy_helpers.fresh_export(tmp_path_factory.getbasetemp() / "deploy")
