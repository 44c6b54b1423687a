"""Shared test settings: Triton's interpreter on CPU, a hypothesis profile for CI's 2 cores."""

import os

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
