"""Third-party RL clients on every registered AHMMemory id: which run, and what invalid actions they sent.

Each client is code this package did not write, used as its documentation says,
without action masks (docs/rl_clients.md shows how each plugs in):

=================  =====================================================================================
client             what runs
=================  =====================================================================================
cleanrl_ppo        ``examples/cleanrl_ppo.py``: CleanRL-style PPO, ``SyncVectorEnv`` of 2, flat observation
sb3_ppo_eval       ``stable_baselines3.PPO("MultiInputPolicy", gym.make(id))`` with an ``EvalCallback``
torchrl            ``torchrl.envs.GymEnv(id)``: ``check_env_specs``, then a random rollout
make_vec_sync      ``gymnasium.make_vec(id, 2, "sync")`` stepped with ``envs.action_space.sample()``
make_vec_async     ``gymnasium.make_vec(id, 2, "async")`` likewise, after a reset in the parent process
make_vec_native    ``gymnasium.make_vec(id, 2, "vector_entry_point")`` with uniform draws from its nvec
=================  =====================================================================================

Every sub-env is wrapped in :class:`InvalidActionAudit`, which counts, before each step,
the action components the env's mask marks invalid (what the env turns into counted
no-ops) and compares that count with the env's ``info["memory"]["invalid_noops"]`` after
it. A cell reads ``ok (N steps, E episodes, I invalid no-ops)`` when the client ran and
every step's count agreed, else what went wrong. ``tests/test_env_contract_clients.py``
runs the same clients on ``AHMMemory-v0`` at a tiny budget.

Run::

    python benchmarks/rl_clients.py                 # every client x every id, 256 steps each
    python benchmarks/rl_clients.py --write-docs    # the same, and the table into docs/rl_clients.md
    python benchmarks/rl_clients.py --steps 128 --clients torchrl make_vec_async --ids AHMMemory-v0
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

import ahm  # noqa: F401  (registers the AHMMemory ids)
from ahm.envs.registry import ENV_SPECS
from ahm.envs.spaces import ActionLayout

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "rl_clients.md"
BEGIN, END = "<!-- clients:begin -->", "<!-- clients:end -->"
"""The markers around the table in :data:`DOCS_PAGE` (``--write-docs`` replaces what is between them)."""
NUM_ENVS = 2
"""Sub-envs of the vectorised clients (the issue's ``make_vec`` async case has 2 workers)."""


class AuditTotals(NamedTuple):
    """What one :class:`InvalidActionAudit` saw, summed over its episodes."""

    steps: int
    episodes: int
    """Episodes that terminated or truncated."""
    sent_invalid: int
    """Action components the client sent that the env's mask marked invalid before the step."""
    invalid_noops: int
    """The env's own count of them (``info["memory"]["invalid_noops"]``, per episode, summed)."""
    mismatched_steps: int
    """Steps after which the env's per-episode count differed from the audit's (or was missing)."""

    def __add__(self, other: AuditTotals) -> AuditTotals:  # type: ignore[override]
        return AuditTotals(*(a + b for a, b in zip(self, other)))


ZERO = AuditTotals(0, 0, 0, 0, 0)


class InvalidActionAudit(gym.Wrapper):
    """Counts the masked-invalid components of every action a client sends and checks the env's count of them.

    Before each step it reads the env's mask (``get_wrapper_attr("action_masks")``, through any wrappers) and
    counts the components of ``action`` it marks invalid; after the step it compares the episode's running total
    with ``info["memory"]["invalid_noops"]``. Adds ``info["audit"]`` (this episode's ``sent_invalid``) and keeps
    the totals in :attr:`audit` (reachable from a vector env with ``envs.get_attr("audit")``, in worker processes
    too). It changes no action, observation or reward.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.audit = ZERO
        self.finished_sent = 0
        """Masked-invalid components sent in the episodes that ended (their ``invalid_noops`` at the end)."""
        self._episode_sent = 0
        self._episode_noops = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._episode_sent = self._episode_noops = 0
        info["audit"] = {"sent_invalid": 0}
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        masks = np.asarray(self.env.get_wrapper_attr("action_masks")(), dtype=bool)
        layout = ActionLayout.from_mask_width(masks.shape[-1])
        sent = int((~layout.valid(np.asarray(action, dtype=np.int64).reshape(1, -1), masks[None])).sum())
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._episode_sent += sent
        counted = info.get("memory", {}).get("invalid_noops")
        noops = self._episode_noops if counted is None else int(counted)
        done = bool(terminated or truncated)
        self.audit = self.audit + AuditTotals(1, int(done), sent, noops - self._episode_noops,
                                              int(counted is None or noops != self._episode_sent))
        self._episode_noops = noops
        if done:
            self.finished_sent += self._episode_sent
        info["audit"] = {"sent_invalid": self._episode_sent}
        return obs, reward, terminated, truncated, info


class ClientRun(NamedTuple):
    """One client on one env id."""

    client: str
    env_id: str
    totals: AuditTotals
    seconds: float
    extra: dict[str, Any]
    """Client-specific numbers the tests check (e.g. the EvalCallback's evaluations)."""

    def cell(self) -> str:
        t = self.totals
        if t.mismatched_steps:
            return (f"MISMATCH ({t.mismatched_steps} of {t.steps} steps: env counted {t.invalid_noops} invalid "
                    f"no-ops, client sent {t.sent_invalid})")
        return f"ok ({t.steps} steps, {t.episodes} episodes, {t.invalid_noops} invalid no-ops)"


def _load_example(name: str) -> Any:
    """``examples/<name>.py`` as a module (registered in sys.modules: dataclasses resolve annotations there)."""
    module_name = f"ahm_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _collect(audits: list[InvalidActionAudit]) -> AuditTotals:
    total = ZERO
    for a in audits:
        total = total + a.audit
    return total


def run_cleanrl_ppo(env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int = 0) -> ClientRun:
    """``examples/cleanrl_ppo.py`` for ``steps`` env steps (2 envs, rollouts of 64 per env, 2 epochs)."""
    ppo = _load_example("cleanrl_ppo")
    backbone = env_kwargs.get("backbone", "")
    args = ppo.Args(env_id=env_id, seq_len=env_kwargs["seq_len"], chunk_size=env_kwargs["chunk_size"],
                    backbone=str(backbone or ""), seed=seed, total_timesteps=steps, num_envs=NUM_ENVS,
                    num_steps=64, update_epochs=2)
    audits: list[InvalidActionAudit] = []

    def wrap(env: gym.Env) -> gym.Env:
        audits.append(InvalidActionAudit(env))
        return audits[-1]

    start = time.perf_counter()
    result = ppo.train(args, wrap=wrap, log=lambda line: None)
    return ClientRun("cleanrl_ppo", env_id, _collect(audits), time.perf_counter() - start,
                     {"result": result, "finished_sent": sum(a.finished_sent for a in audits)})


def run_sb3_ppo_eval(env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int = 0) -> ClientRun:
    """Plain SB3 ``PPO("MultiInputPolicy", env)`` on a ``gymnasium.make`` env, evaluated by an ``EvalCallback``
    on a second made env twice during training."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.monitor import Monitor

    train_audit = InvalidActionAudit(gym.make(env_id, **env_kwargs))
    eval_audit = InvalidActionAudit(gym.make(env_id, **env_kwargs))
    eval_audit.reset(seed=seed + 1)  # seeds its np_random: the callback's resets continue it
    n_steps = 64
    callback = EvalCallback(Monitor(eval_audit), n_eval_episodes=1, eval_freq=max(n_steps, steps // 2),
                            deterministic=True, warn=False, verbose=0)
    start = time.perf_counter()
    model = PPO("MultiInputPolicy", train_audit, n_steps=n_steps, batch_size=32, n_epochs=2, seed=seed,
                device="cpu", verbose=0)
    model.learn(total_timesteps=steps, callback=callback)
    seconds = time.perf_counter() - start
    return ClientRun("sb3_ppo_eval", env_id, train_audit.audit + eval_audit.audit, seconds,
                     {"num_timesteps": model.num_timesteps, "last_mean_reward": float(callback.last_mean_reward),
                      "eval": eval_audit.audit})


def run_torchrl(env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int = 0) -> ClientRun:
    """torchrl's ``GymEnv(id)``: ``check_env_specs``, then a random rollout of ``steps`` steps (its action spec's
    ``rand()``, uniform over the declared space) through ``GymWrapper`` around an audited made env."""
    from torchrl.envs import GymEnv, GymWrapper
    from torchrl.envs.utils import check_env_specs

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        env = GymEnv(env_id, **env_kwargs)
        check_env_specs(env, seed=seed)
        env.close()
        audit = InvalidActionAudit(gym.make(env_id, **env_kwargs))
        rollout_env = GymWrapper(audit)
        rollout_env.set_seed(seed)
        rollout = rollout_env.rollout(max_steps=steps, break_when_any_done=False)
        rollout_env.close()
    return ClientRun("torchrl", env_id, audit.audit, time.perf_counter() - start,
                     {"rollout_steps": int(rollout.batch_size[0]),
                      "rollout_dones": int(rollout["next", "done"].sum())})


def _run_make_vec(mode: str, env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int) -> ClientRun:
    if mode == "async":
        # A user's process has usually run the backbone before it forks workers (numba's threading layer then
        # lives in the parent: what made forked workers die with "fork() called from a process already using
        # GNU OpenMP").
        parent = gym.make(env_id, **env_kwargs)
        parent.reset(seed=seed)
        parent.close()
    start = time.perf_counter()
    envs = gym.make_vec(env_id, NUM_ENVS, vectorization_mode=mode, wrappers=[InvalidActionAudit], **env_kwargs)
    try:
        envs.action_space.seed(seed)
        envs.reset(seed=seed)
        for _ in range(steps // NUM_ENVS):
            envs.step(envs.action_space.sample())
        totals = _collect_totals(envs.get_attr("audit"))
    finally:
        envs.close()
    return ClientRun(f"make_vec_{mode}", env_id, totals, time.perf_counter() - start, {})


def _collect_totals(totals: Any) -> AuditTotals:
    out = ZERO
    for t in totals:
        out = out + AuditTotals(*t)
    return out


def run_make_vec_sync(env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int = 0) -> ClientRun:
    """``gymnasium.make_vec(id, 2, vectorization_mode="sync")`` stepped with ``envs.action_space.sample()``."""
    return _run_make_vec("sync", env_id, steps, env_kwargs, seed)


def run_make_vec_async(env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int = 0) -> ClientRun:
    """``gymnasium.make_vec(id, 2, vectorization_mode="async")`` (2 worker processes), likewise."""
    return _run_make_vec("async", env_id, steps, env_kwargs, seed)


def run_make_vec_native(env_id: str, steps: int, env_kwargs: Mapping[str, Any], seed: int = 0) -> ClientRun:
    """The native vector env (``vectorization_mode="vector_entry_point"``, SAME_STEP autoreset) stepped with
    uniform draws from ``MultiDiscrete(envs.action_space.nvec)``: the declared space, not the env's own sample().

    Gymnasium applies no wrappers to a native vector env, so the audit is inline: masks from
    ``envs.action_masks()`` before each step, counts from ``info`` (``final_info`` for sub-envs that ended)."""
    start = time.perf_counter()
    envs = gym.make_vec(env_id, NUM_ENVS, vectorization_mode="vector_entry_point", **env_kwargs)
    declared = gym.spaces.MultiDiscrete(envs.action_space.nvec, seed=seed)
    layout = ActionLayout.from_nvec(envs.single_action_space.nvec)
    sent_episode = np.zeros(NUM_ENVS, dtype=np.int64)
    totals = ZERO
    try:
        envs.reset(seed=seed)
        for _ in range(steps // NUM_ENVS):
            masks, actions = envs.action_masks(), declared.sample()
            sent = (~layout.valid(actions, masks)).sum(1)
            sent_episode += sent
            _, _, terminated, truncated, info = envs.step(actions)
            done = terminated | truncated
            counted = info["memory"].get("invalid_noops")
            if counted is None:
                totals = totals + AuditTotals(NUM_ENVS, int(done.sum()), int(sent.sum()), 0, NUM_ENVS)
            else:
                if done.any():
                    counted = np.where(done, info["final_info"]["memory"]["invalid_noops"], counted)
                # the env's count is per episode: this step's share is the episode's count minus the audit's so far
                noops = int((counted - (sent_episode - sent)).sum())
                totals = totals + AuditTotals(NUM_ENVS, int(done.sum()), int(sent.sum()), noops,
                                              int((counted != sent_episode).sum()))
            sent_episode[done] = 0
    finally:
        envs.close()
    return ClientRun("make_vec_native", env_id, totals, time.perf_counter() - start, {})


CLIENTS: dict[str, Callable[..., ClientRun]] = {
    "cleanrl_ppo": run_cleanrl_ppo,
    "sb3_ppo_eval": run_sb3_ppo_eval,
    "torchrl": run_torchrl,
    "make_vec_sync": run_make_vec_sync,
    "make_vec_async": run_make_vec_async,
    "make_vec_native": run_make_vec_native,
}
"""Client name -> ``run(env_id, steps, env_kwargs, seed=0) -> ClientRun``."""


def _error_cell(err: BaseException) -> str:
    message = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, EOFError) and not message:  # how AsyncVectorEnv reports a worker that died
        message = "a worker process died (its stderr says why)"
    line = f"{type(err).__name__}: {message}".replace("|", "/")
    return (line[:150] + "...") if len(line) > 150 else line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=256, help="env steps per client and id")
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS), choices=list(CLIENTS))
    parser.add_argument("--ids", nargs="*", default=list(ENV_SPECS), choices=list(ENV_SPECS))
    parser.add_argument("--backbone", default=None, help="'random' for the random backbone; default: each id's")
    parser.add_argument("--traceback", action="store_true", help="print the traceback of each failure")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"also put the table into {DOCS_PAGE.relative_to(ROOT)} (between its clients markers)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from _common import markdown_table  # benchmarks/ is the script's folder

    rows, failures = [], 0
    for env_id in args.ids:
        env_kwargs = dict(ENV_SPECS[env_id].test_kwargs)  # tiny episodes: seq_len 2048-4096, chunks of 64
        if args.backbone:
            env_kwargs["backbone"] = args.backbone
        row = [env_id]
        for name in args.clients:
            try:
                run = CLIENTS[name](env_id, args.steps, env_kwargs)
                row.append(run.cell())
                failures += run.totals.mismatched_steps > 0
            except Exception as err:  # noqa: BLE001  (the table reports any failure)
                row.append(_error_cell(err))
                failures += 1
                if args.traceback:
                    traceback.print_exc()
            print(f"{env_id} {name}: {row[-1]}", file=sys.stderr, flush=True)
        rows.append(row)
    table = (f"{args.steps} env steps per cell; kwargs: each id's test_kwargs (ahm.envs.registry)"
             f"{', backbone=' + repr(args.backbone) if args.backbone else ''}.\n\n"
             + markdown_table(["id", *args.clients], rows))
    print(table)
    if args.write_docs:
        head, rest = DOCS_PAGE.read_text().split(BEGIN)
        DOCS_PAGE.write_text(head + BEGIN + "\n" + table + "\n" + END + rest.split(END)[1])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
