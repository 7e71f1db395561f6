import os

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
