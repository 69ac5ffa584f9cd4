import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A private data root so tests never read or write the user's data/ folder."""
    return tmp_path_factory.mktemp("data")
