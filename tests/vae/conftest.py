"""One intra-op thread for these tiny models: on a shared, loaded CPU two spinning threads are 10x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
