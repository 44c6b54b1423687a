"""examples/: the custom-algorithm example (REINFORCE in plain torch) trains and runs as a Controller."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import ahm  # noqa: F401  (registers the env ids)
from ahm.agents import Controller

torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def reinforce():
    spec = importlib.util.spec_from_file_location("ahm_example_reinforce", EXAMPLES / "reinforce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_reinforce_updates_change_the_policy_with_finite_losses(reinforce) -> None:
    config = reinforce.ReinforceConfig(seq_len=1024, chunk_size=64, updates=3, episodes_per_update=1)
    env = gym.make("ahm:AHMMemory-v0", seq_len=1024, chunk_size=64)
    initial = reinforce.make_policy(env, config.hidden, config.seed)  # the same init as train() draws
    result = reinforce.train(config, log=lambda line: None)
    assert len(result.history) == 3
    assert all(math.isfinite(s.loss) for s in result.history)
    assert all(1 <= s.mean_length <= 16 for s in result.history)  # at most 1024 / 64 chunks
    before, after = initial.state_dict(), result.policy.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    # determinism: the seed fixes init, sampling and episodes
    again = reinforce.train(config, log=lambda line: None)
    assert [s.loss for s in again.history] == [s.loss for s in result.history]


def test_reinforce_controller_is_a_valid_batched_controller(reinforce, tmp_path) -> None:
    result = reinforce.main(["--seq-len", "1024", "--chunk-size", "64", "--updates", "2",
                             "--episodes-per-update", "1", "--save", str(tmp_path / "policy.safetensors")])
    loaded = reinforce.ReinforceController(reinforce.load_policy(tmp_path / "policy.safetensors"))
    sampled = reinforce.ReinforceController(result.policy, deterministic=False, seed=1)
    for controller in (result.controller, loaded, sampled):
        assert isinstance(controller, Controller)
    env = gym.make_vec("AHMMemory-v0", num_envs=3, vectorization_mode="vector_entry_point", seq_len=1024,
                       chunk_size=64)
    obs, _ = env.reset(seed=0)
    nvec = env.single_action_space.nvec
    offsets = np.concatenate(([0], np.cumsum(nvec)[:-1]))
    for _ in range(20):
        masks = env.action_masks()
        greedy, reloaded, drawn = (c.act(obs, masks) for c in (result.controller, loaded, sampled))
        np.testing.assert_array_equal(greedy, reloaded)
        for actions in (greedy, drawn):
            assert actions.shape == (3, 5) and actions.dtype == np.int64
            assert np.take_along_axis(masks, offsets + actions, axis=1).all()
        obs = env.step_arrays(drawn).observation  # raises on an invalid action


def test_reinforce_saved_policy_runs_through_the_benchmark_cli(reinforce, tmp_path) -> None:
    """The README's promise: the example's --save output plugs into `python -m ahm.benchmark --controllers PATH`."""
    import csv
    import subprocess

    from ahm.agents.evaluation import evaluate

    path = tmp_path / "policy.safetensors"
    reinforce.main(["--seq-len", "1024", "--chunk-size", "64", "--updates", "2", "--episodes-per-update", "1",
                    "--save", str(path)])
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "ahm.benchmark", "--tasks", "AHMMemory-v0", "--lengths", "1024",
                           "--chunk-size", "64", "--seeds", "1", "--no-plots", "--no-progress", "--controllers",
                           f"{path},none", "--out-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(out / "benchmark.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["controller"] for r in rows] == ["policy", "none"]  # a file's checkpoint is named after its stem
    direct = evaluate(reinforce.ReinforceController(reinforce.load_policy(path)), "AHMMemory-v0", episodes=1, seed=0,
                      seq_len=1024, chunk_size=64)
    assert float(rows[0]["accuracy_mean"]) == direct.accuracy
    assert float(rows[0]["ops_per_1k_tokens"]) == pytest.approx(direct.ops_per_1k_tokens)
    assert float(rows[0]["ops_per_1k_tokens"]) != float(rows[1]["ops_per_1k_tokens"])  # it acted: not `none`
