import pathlib

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


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """The briefly trained tiny DPN of the slow deployment tests, trained once per
    session into a temporary folder: ``(model, path)``."""
    import deploy_helpers
    return deploy_helpers.trained_tiny_dpn(tmp_path_factory.mktemp("trained_tiny"))
