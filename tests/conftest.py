"""Shared test settings: Triton's interpreter on CPU, a hypothesis profile for CI's 2 cores."""

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined: without a GPU, run its
# kernels on the CPU through the interpreter (how CI tests them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,  # torch's first calls (allocation, threads) are slow and jittery
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # a failure in CI reproduces with the same examples
)
settings.load_profile("ci")


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (the env's and the heads' tiny ops), the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
