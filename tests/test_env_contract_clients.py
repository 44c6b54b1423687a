"""Third-party RL clients run on the env as their documentation says, without action masks (issue 17).

Each client (CleanRL-style PPO, SB3 PPO with an EvalCallback, torchrl's GymEnv,
``gymnasium.make_vec`` sync / async / native) runs a few hundred steps at a tiny size
(2048 tokens, chunks of 64: 32 steps an episode; random backbone). Each test asserts
that it ran (steps taken, episodes finished) and that nothing invalid happened: no
exception, the client did send masked-invalid components (so the path is exercised),
and the env counted exactly those as no-ops (``info["memory"]["invalid_noops"]``,
checked after every step by ``InvalidActionAudit``). The clients themselves live in
``benchmarks/rl_clients.py``, which prints the client x id table; docs/rl_clients.md
shows how each plugs in.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import ahm  # noqa: F401  (registers the env ids)

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "AHMMemory-v0"
SMALL = {"seq_len": 2048, "chunk_size": 64, "backbone": "random"}
EPISODE_STEPS = 2048 // 64  # an upper bound: passkey ends after its query's chunk (31 or 32 steps here)


@pytest.fixture(scope="module")
def clients():
    name = "ahm_benchmark_rl_clients"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "rl_clients.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and the async workers' unpickling resolve names through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


def assert_nothing_invalid(totals, min_steps: int, min_episodes: int) -> None:
    """The client ran, sent masked-invalid components, and the env counted each one as a no-op, step by step."""
    assert totals.steps >= min_steps, f"only {totals.steps} env steps ran"
    assert totals.episodes >= min_episodes, f"only {totals.episodes} episodes finished in {totals.steps} steps"
    assert totals.sent_invalid > 0, "the client never sent a masked-invalid component: the test exercises nothing"
    assert totals.mismatched_steps == 0, (
        f"after {totals.mismatched_steps} of {totals.steps} steps info['memory']['invalid_noops'] was missing or "
        f"differed from the masked-invalid components the client sent")
    assert totals.invalid_noops == totals.sent_invalid


def test_the_audit_counts_exactly_the_masked_invalid_components(clients) -> None:
    env = clients.InvalidActionAudit(gym.make(ENV_ID, **SMALL))
    env.reset(seed=0)
    # empty memory: retrieve both, forget slot 0 and an LTM forget are invalid; write into slot 0 is valid
    _, _, _, _, info = env.step(np.array([1, 0, 3, 1, 1]))
    assert env.audit.sent_invalid == 3 and info["audit"]["sent_invalid"] == 3
    assert info["memory"]["invalid_noops"] == 3
    assert info["memory"]["writes"] == 1 and info["memory"]["forgets_wm"] == 0 and info["memory"]["forgets_ltm"] == 0
    # slot 0 holds the entry now: retrieving from the WM and forgetting slot 0 are valid, retrieving from the LTM not
    _, _, _, _, info = env.step(np.array([0, 0, 2, 1, 0]))
    assert env.audit.sent_invalid == 4 and info["memory"]["invalid_noops"] == 4
    assert info["memory"]["forgets_wm"] == 1 and info["memory"]["retrievals_ltm"] == 0
    assert env.audit.mismatched_steps == 0
    env.reset(seed=1)  # the count is per episode
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, 0]))
    assert info["memory"]["invalid_noops"] == 0 and env.audit.invalid_noops == 4


def test_cleanrl_style_ppo_without_masks(clients) -> None:
    run = clients.run_cleanrl_ppo(ENV_ID, 256, SMALL)
    result = run.extra["result"]
    assert result.global_step == 256 == run.totals.steps
    assert_nothing_invalid(run.totals, 256, 256 // EPISODE_STEPS)
    # the example's own bookkeeping: one return per finished episode, and the env's counts at their ends
    assert len(result.episodic_returns) == run.totals.episodes
    assert all(1 <= n <= EPISODE_STEPS for n in result.episodic_lengths)
    assert result.invalid_noops == run.extra["finished_sent"] > 0
    assert len(result.metrics) == 2
    for row in result.metrics:
        assert all(math.isfinite(v) for k, v in row.items() if k != "losses/explained_variance"), row
    assert result.metrics[-1]["losses/approx_kl"] > 0  # the policy moved


def test_sb3_ppo_on_a_made_env_with_an_eval_callback(clients) -> None:
    run = clients.run_sb3_ppo_eval(ENV_ID, 256, SMALL)
    assert run.extra["num_timesteps"] == 256
    eval_totals = run.extra["eval"]
    assert eval_totals.episodes == 2 and eval_totals.steps <= 2 * EPISODE_STEPS  # one episode at 128 and at 256
    assert math.isfinite(run.extra["last_mean_reward"])  # the callback evaluated (it starts at -inf)
    assert_nothing_invalid(run.totals, 256 + eval_totals.steps, 256 // EPISODE_STEPS + 2)


def test_torchrl_gym_env_check_env_specs_and_a_random_rollout(clients) -> None:
    pytest.importorskip("torchrl")
    run = clients.run_torchrl(ENV_ID, 256, SMALL)
    assert run.extra["rollout_steps"] == 256 == run.totals.steps
    assert run.extra["rollout_dones"] == run.totals.episodes
    assert_nothing_invalid(run.totals, 256, 256 // EPISODE_STEPS)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_with_the_vector_action_space_sample(clients, mode: str) -> None:
    run = clients.CLIENTS[f"make_vec_{mode}"](ENV_ID, 128, SMALL)  # 64 vector steps of 2 sub-envs
    # NEXT_STEP autoreset: the step after a done resets that sub-env instead of stepping it
    assert 128 - 2 * 3 <= run.totals.steps <= 128
    assert_nothing_invalid(run.totals, 120, 2 * (64 // (EPISODE_STEPS + 1)))


def test_make_vec_sync_and_async_step_identically(clients) -> None:
    sync, asynchronous = (clients.CLIENTS[f"make_vec_{mode}"](ENV_ID, 64, SMALL) for mode in ("sync", "async"))
    assert sync.totals == asynchronous.totals


def test_native_vector_env_with_draws_from_the_declared_space(clients) -> None:
    run = clients.run_make_vec_native(ENV_ID, 128, SMALL)
    assert run.totals.steps == 128
    assert_nothing_invalid(run.totals, 128, 128 // EPISODE_STEPS)


def test_the_docs_page_snippets_run_as_written() -> None:
    """Every ``python`` block of docs/rl_clients.md runs, in order, in one namespace (each is also self-contained
    up to the imports of the blocks above it); they use tiny episodes and budgets."""
    pytest.importorskip("torchrl")
    text = (ROOT / "docs" / "rl_clients.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8, "docs/rl_clients.md lost its snippets"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/rl_clients.md, python block {i + 1}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"docs/rl_clients.md's python block {i + 1} failed: {err!r}\n{block}") from err
