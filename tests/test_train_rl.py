"""train_rl.py: a short alternation completes, writes TensorBoard events and checkpoints, resumes, and prints
the benchmark table; bad input stops with a message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ahm.agents.learned import load_controller
from ahm.envs.memory_env import load_ahm_checkpoint
from ahm.training.alternation import TrainRLConfig, _check_same_run, run_alternation

REPO = Path(__file__).resolve().parents[1]

SHORT = dict(backbone="fresh", rounds=2, lm_steps=2, lm_lengths="512", algo="ppo", rl_timesteps=64, num_envs=2,
             n_steps=16, seq_len=1024, train_streams=2, chunk_size=64, eval_lengths="1024", eval_seeds=1,
             eval_controllers="none,write_all", progress=False)


def test_short_run_completes_with_checkpoints_tensorboard_and_table(tmp_path):
    lines: list[str] = []
    out = run_alternation(TrainRLConfig(**SHORT, out_dir=str(tmp_path), gae_lambda=1.0, rl_ltm_capacity=16,
                                        imitate="update", imitation_steps=128, imitation_epochs=1, net_arch="32,32"),
                          log=lines.append)
    assert [t["round"] for t in out["rounds"]] == [0, 1]
    # The backbone phase's objective on held-out streams, before (not for a fresh backbone) and after each phase.
    assert "heldout_loss_before" not in out["rounds"][0]
    assert all(t["heldout_loss_after"] > 0 for t in out["rounds"]) and out["rounds"][1]["heldout_loss_before"] > 0
    assert sum("held-out loss" in line for line in lines) == 2
    imitation = [line for line in lines if "imitation of 'update'" in line]
    assert len(imitation) == 1 and imitation[0].startswith("round 0")  # a new policy only; round 1 continues it
    cloned = load_controller(tmp_path / "round_0" / "controller_imitation").model  # kept before RL continued it
    assert cloned.num_timesteps == 0 and not (tmp_path / "round_1" / "controller_imitation").exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed_rounds"] == 2
    for r in (0, 1):
        model, extra = load_ahm_checkpoint(tmp_path / f"round_{r}" / "backbone")
        assert extra["round"] == r
        controller = load_controller(tmp_path / f"round_{r}" / "controller").model
        assert controller.num_timesteps == 64 * (r + 1) and controller.gae_lambda == 1.0
        assert controller.policy.net_arch == [32, 32]
        meta = json.loads((tmp_path / f"round_{r}" / "controller" / "controller.json").read_text())
        assert meta["env_spec"]["env_kwargs"]["ltm_capacity"] == 16  # the training env's, recorded
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events from the controller phase"
    assert list((tmp_path / "round_0" / "lm" / "tb").rglob("events.out.tfevents.*")), "no backbone-phase events"
    controllers = {row.controller for row in out["rows"]}
    assert {"none", "write_all", "ppo (learned)", "ppo (imitation only)"} <= controllers
    assert "| task |" in out["table"].splitlines()[0].lower() or "task" in out["table"].splitlines()[0]
    assert out["table"] in "\n".join(lines)

    # --resume after the last round: nothing to train, the benchmark runs on the saved round.
    again = run_alternation(TrainRLConfig(**SHORT, out_dir=str(tmp_path), gae_lambda=1.0, rl_ltm_capacity=16,
                                          imitate="update", imitation_steps=128, imitation_epochs=1,
                                          net_arch="32,32", resume=True), log=lambda s: None)
    assert again["rounds"] == []


def test_imitation_only_saves_the_cloned_policy_as_the_controller(tmp_path):
    cfg = TrainRLConfig(**{**SHORT, "rounds": 1, "lm_steps": 1, "rl_timesteps": 0}, out_dir=str(tmp_path),
                        imitate="update", imitation_steps=64, imitation_epochs=1, dagger_rounds=1, features="slots",
                        net_arch="16")
    lines: list[str] = []
    out = run_alternation(cfg, log=lines.append)
    assert any("DAgger round 1: the clone's own accuracy" in line for line in lines)
    controller = load_controller(tmp_path / "round_0" / "controller").model
    assert controller.num_timesteps == 0
    assert type(controller.policy.features_extractor).__name__ == "SlotFeaturesExtractor"
    assert "ppo (imitation only)" in {row.controller for row in out["rows"]}  # no RL: not labelled learned


@pytest.mark.parametrize("args, message", [
    (["--env-id", "AHMMemory-Nope-v0"], "--env-id must be one of"),
    (["--algo", "dqn"], "--algo must be one of"),
    (["--train-streams", "1G"], "--train-streams 1,073,741,824"),
    (["--seq-len", "10G"], "--seq-len 10,737,418,240"),
    (["--rounds", "0"], "--rounds must be an int >= 1"),
    (["--gae-lambda", "1.5"], "--gae-lambda must be in [0, 1]"),
    (["--rl-ltm-capacity", "-1"], "--rl-ltm-capacity must be >= 0"),
    (["--write-prior", "1"], "--write-prior must be in [0, 1)"),
    (["--reward-weights", "discard"], "name=number pairs like discard=0.5, got 'discard'"),
    (["--reward-weights", "discard=0.5,nope=1"], "unknown terms ['nope']"),
    (["--reward-weights", "discard=inf"], "RewardWeights.discard must be a finite number"),
    (["--env-id", "AHMMemory-Text-v0"], "needs a task with answers"),
    (["--init-controller", "runs/nowhere/controller"], "--init-controller 'runs/nowhere/controller': "),
    (["--init-controller", "runs/nowhere/controller", "--algo", "ppo"], "it needs --algo fast_ppo"),
    (["--imitate", "nope"], "--imitate must be one of"),
    (["--rl-timesteps", "0"], "0 only with --imitate"),
    (["--imitate", "update", "--algo", "recurrent_ppo"], "not available with --algo recurrent_ppo"),
    (["--net-arch", "64,x"], "--net-arch must be"),
    (["--features", "graph"], "--features must be"),
    (["--imitation-lr", "0"], "--imitation-lr > 0"),
    (["--dagger-rounds", "1"], "needs --imitate"),
    (["--imitate", "update"], "--algo fast_ppo learns from scratch"),
    (["--eval-controllers", "bogus"], "bogus"),
    (["--eval-lengths", "bogus"], "eval-lengths"),
    (["--keep-weight", "1", "--lm-steps", "0"], "--keep-weight"),
])
def test_bad_config_stops_with_a_message(tmp_path, capsys, args, message):
    """In process (the script's main, as ``ahm-train-rl`` calls it); test_resume_without_state runs the script. An
    option argparse refuses exits 2 with its message on stderr; a config check exits with the message itself."""
    from ahm.train_rl import main

    with pytest.raises(SystemExit) as stop:
        main(["--out-dir", str(tmp_path / "run"), *args])
    said = capsys.readouterr().err if stop.value.code == 2 else str(stop.value.code)
    assert stop.value.code not in (0, None) and message in said, said
    assert not (tmp_path / "run").exists()


def test_resume_without_state(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "train_rl.py"), "--out-dir", str(tmp_path), "--resume"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no state.json" in r.stderr, r.stderr


FAST = {**SHORT, "algo": "fast_ppo", "rl_timesteps": 128, "num_envs": 4, "n_steps": 16, "rl_ltm_capacity": 2,
        "eval_controllers": "none"}


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(directory.rglob("*.safetensors"))
    return {f"{p.parent.name}/{k}": v for p in files for k, v in load_file(p).items()}


def test_fast_ppo_resume_after_a_kill_in_either_phase_is_bit_exact(tmp_path):
    """A run killed anywhere in round 1 (its backbone or its controller phase) has state.json naming round 0 and a
    half-written round_1/; --resume redoes round 1 and ends with exactly the weights of a run never killed."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_alternation(TrainRLConfig(**FAST, out_dir=str(whole)), log=lambda s: None)
    run_alternation(TrainRLConfig(**{**FAST, "rounds": 1}, out_dir=str(killed)), log=lambda s: None)
    # what a SIGKILL leaves: round 1 half done (a backbone without its controller), a temporary file mid-write
    (killed / "round_1" / "backbone").mkdir(parents=True)
    (killed / "round_1" / "backbone" / "model.safetensors").write_bytes(b"half")
    (killed / ".state.json.x1y2.tmp").write_bytes(b"{")
    run_alternation(TrainRLConfig(**FAST, out_dir=str(killed), resume=True), log=lambda s: None)
    for r in ("round_0", "round_1"):
        a, b = _weights(whole / r), _weights(killed / r)
        assert a.keys() == b.keys() and a
        for k in a:
            assert a[k].equal(b[k]), f"{r}: {k} differs after the resume"
    assert not list(killed.rglob("*.tmp")) and not list(whole.rglob("*.tmp"))


def test_reward_weights_reach_the_controller_phase_env(tmp_path):
    cfg = TrainRLConfig(**{**FAST, "rounds": 1, "lm_steps": 0, "backbone": "shipped"}, reward_weights=" discard=0.5 ,",
                        out_dir=str(tmp_path))
    assert cfg.reward_weight_overrides() == {"discard": 0.5}
    run_alternation(cfg, log=lambda s: None)
    meta = json.loads((tmp_path / "round_0" / "controller" / "controller.json").read_text())
    kwargs = meta["env_spec"]["env_kwargs"]
    assert kwargs["reward_weights"] == {"discard": 0.5}  # recorded with what it was trained on
    import gymnasium as gym

    env = gym.make(meta["env_spec"]["env_id"], **kwargs).unwrapped
    weights = {t.name: t.weight for t in env._episodes.reward_fn.terms}
    assert weights["discard"] == 0.5 and weights["store_then_use"] == 0.5  # the one given, the other defaults


def test_init_controller_continues_a_saved_fast_ppo_policy(tmp_path):
    """The first controller phase starts from the given checkpoint's actor and critic: with a learning rate too small
    to move them, the run saves what it was given (a new policy would be another random draw)."""
    from ahm.agents.fast_ppo import FastPPO

    base = {**FAST, "rounds": 1, "lm_steps": 0, "backbone": "shipped"}
    run_alternation(TrainRLConfig(**base, out_dir=str(tmp_path / "first")), log=lambda s: None)
    given = tmp_path / "first" / "round_0" / "controller"
    lines: list[str] = []
    run_alternation(TrainRLConfig(**{**base, "seed": 7}, rl_lr=1e-12, init_controller=str(given),
                                  out_dir=str(tmp_path / "second")), log=lines.append)
    assert any(f"continues {given}" in line for line in lines)
    before, after = FastPPO.load_policy(given).state_dict(), FastPPO.load_policy(
        tmp_path / "second" / "round_0" / "controller").state_dict()
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    fresh = FastPPO.load_policy(tmp_path / "first" / "round_0" / "controller")  # sanity: the check can fail
    torch.nn.init.normal_(next(fresh.parameters()))
    assert not all(torch.allclose(before[k], v, atol=1e-6) for k, v in fresh.state_dict().items())


def test_resume_with_other_settings_is_refused_before_any_work(tmp_path):
    run_alternation(TrainRLConfig(**{**FAST, "rounds": 1}, out_dir=str(tmp_path)), log=lambda s: None)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(ValueError, match=r"--wm-slots 8 -> 4"):
        run_alternation(TrainRLConfig(**FAST, wm_slots=4, out_dir=str(tmp_path), resume=True), log=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    # a run saved before --write-prior existed ran without one: resuming it at the default is the same run
    state_path = tmp_path / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["write_prior"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"--write-prior 0.0 -> 0.5"):
        run_alternation(TrainRLConfig(**FAST, write_prior=0.5, out_dir=str(tmp_path), resume=True), log=lambda s: None)
    _check_same_run(TrainRLConfig(**FAST, out_dir=str(tmp_path), resume=True), state, state_path)  # no error


FAST_ARGS = ["--backbone", "fresh", "--rounds", "2", "--lm-steps", "2", "--lm-lengths", "512", "--algo", "fast_ppo",
             "--rl-timesteps", "128", "--num-envs", "4", "--n-steps", "16", "--seq-len", "1024", "--train-streams",
             "2", "--chunk-size", "64", "--eval-lengths", "1024", "--eval-seeds", "1", "--eval-controllers", "none",
             "--rl-ltm-capacity", "2", "--no-progress"]


@pytest.mark.parametrize("phase, trigger", [("backbone", "round 0:"), ("controller", "round 1 backbone phase")])
def test_sigkill_in_either_phase_then_resume_gives_identical_weights(tmp_path, phase, trigger):
    """A real SIGKILL of train_rl.py as soon as round 1's backbone (or controller) phase has begun, then --resume:
    the weights of both rounds are exactly those of a run never killed."""
    import os
    import signal

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_alternation(TrainRLConfig(**FAST, out_dir=str(whole)), log=lambda s: None)
    cmd = [sys.executable, "-u", str(REPO / "train_rl.py"), *FAST_ARGS, "--out-dir", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(trigger):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert json.loads((killed / "state.json").read_text())["completed_rounds"] == 1
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for rd in ("round_0", "round_1"):
        a, b = _weights(whole / rd), _weights(killed / rd)
        assert a.keys() == b.keys() and a
        for k in a:
            assert a[k].equal(b[k]), f"killed in the {phase} phase: {rd}/{k} differs after the resume"
    assert not list(killed.rglob("*.tmp"))


def test_keep_weight_trains_a_keep_head_that_every_round_s_controller_observes(tmp_path):
    """--keep-weight: the backbone of every round has a keep head, trained (it moved from its initialisation), and
    the controller, created in round 0 and continued in round 1, observes 'keep_score'."""
    run_alternation(TrainRLConfig(**{**FAST, "env_id": "AHMMemory-Decoy-v0", "lm_lengths": "1024"},
                                  keep_weight=1.0, out_dir=str(tmp_path)), log=lambda s: None)
    heads = []
    for r in (0, 1):
        model, _ = load_ahm_checkpoint(tmp_path / f"round_{r}" / "backbone")
        assert model.config.keep_head
        heads.append({k: v.clone() for k, v in model.keep_head.state_dict().items()})
        meta = json.loads((tmp_path / f"round_{r}" / "controller" / "controller.json").read_text())
        assert "keep_score" in meta["observation_keys"]
    assert any(not heads[0][k].equal(heads[1][k]) for k in heads[0])  # round 1's backbone phase trained it
