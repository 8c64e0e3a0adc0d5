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
