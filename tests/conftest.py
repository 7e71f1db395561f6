import os
import shutil

import pytest
import torch


def pytest_configure(config):
    # `make test` runs one xdist worker per core: each takes one torch thread (and so do the
    # processes it starts), so the workers do not fight over the cores
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``module_tmp(name)`` makes a folder for files the tests of one module share; all are
    removed when the module's tests end, as each test's ``tmp_path`` is when it passes (the
    retention policy in pyproject.toml). The suite writes some 16 GB of checkpoints in all; so
    a run holds only the few modules' files in flight, not all of them, on a small disk."""
    made: list = []

    def make(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
