"""Shared test settings: a hypothesis profile that fits CI's 2 cores."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,  # torch's first calls (allocation, threads) are slow and jittery
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # a failure in CI reproduces with the same examples
)
settings.load_profile("ci")
