import os
import sys

# make tests/oracle.py importable as `oracle` from every test module
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """Every tensor in the suite is small: intra-op threads only add wake-up costs, and on a
    busy 2-core machine spinning workers made small einsums 100-1000x slower. One thread for
    the whole session (the library itself never sets the thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
