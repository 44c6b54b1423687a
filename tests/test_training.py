"""The supervised phase (ahm.training, train_lm.py): the loss falls, resume is exact, bad input stops cleanly,
DistributedDataParallel keeps replicas identical, and the replay of a controller's operations equals the env."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ahm.agents import FunctionController
from ahm.training.checkpoint import current_model_dir, load_training_checkpoint
from ahm.training.data import Curriculum, TaskSource
from ahm.training.supervised import ReplayController, TrainLMConfig, WindowLoss, build_model, controller_actions, train

REPO = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--n-layer", "1", "--d-state", "4", "--key-dim", "8", "--chunk-size", "32",
        "--window", "64", "--batch", "2", "--no-progress", "--no-tensorboard", "--threads", "1"]


def write_corpus(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i}.txt").write_text(("the quick brown fox jumps over the lazy dog. " * 20 + f"{i} ") * 4)
    return root


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, str(REPO / "train_lm.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def cfg_for(tmp: Path, *extra: str) -> TrainLMConfig:
    from ahm.cli import parse_config

    return parse_config(TrainLMConfig, [*TINY, "--corpus", str(write_corpus(tmp / "corpus")), "--seq-len", "128",
                                        "--out-dir", str(tmp / "run"), *extra])


def write_first(obs, mask):
    """Write every chunk into slot 0 (moving the old entry to LTM) and read WM when it holds something."""
    b = len(obs["progress"])
    a = np.zeros((b, 5), dtype=np.int64)
    a[:, 0], a[:, 1] = 1, 1
    a[:, 2] = (obs["wm_occupied"].sum(1) > 0).astype(np.int64)
    return a


def test_text_loss_falls(tmp_path):
    cfg = cfg_for(tmp_path, "--max-steps", "40", "--lr", "1e-2")
    result = train(cfg, log=lambda s: None, controller=FunctionController(write_first))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < first - 0.5, (first, last)
    assert (current_model_dir(tmp_path / "run") / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "run").glob("step_*")] == [current_model_dir(tmp_path / "run").name]


def test_init_from_a_run_folder_starts_from_its_latest_weights(tmp_path):
    first = cfg_for(tmp_path, "--max-steps", "3", "--lr", "1e-2")
    trained = train(first, log=lambda s: None, controller=FunctionController(write_first)).model
    then = cfg_for(tmp_path, "--max-steps", "1", "--lr", "1e-12", "--init-from", str(tmp_path / "run"),
                   "--out-dir", str(tmp_path / "run2"))
    started = train(then, log=lambda s: None, controller=FunctionController(write_first)).model
    fresh = build_model(first, 256)
    for (name, a), b in zip(trained.state_dict().items(), started.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # one step at lr 1e-12 from the run's weights
    assert not torch.allclose(trained.backbone.embedding.weight, fresh.backbone.embedding.weight)


def test_level_readout_of_fresh_and_initialised_models(tmp_path):
    first = cfg_for(tmp_path, "--max-steps", "2", "--level-readout", "separate")
    separate = train(first, log=lambda s: None, controller=FunctionController(write_first)).model
    assert separate.config.level_readout == "separate"
    assert build_model(cfg_for(tmp_path), 256).config.level_readout == "shared"  # a fresh model's default
    init = ("--init-from", str(tmp_path / "run"), "--lr", "1e-12", "--max-steps", "1")
    kept = train(cfg_for(tmp_path, *init, "--out-dir", str(tmp_path / "kept")), log=lambda s: None,
                 controller=FunctionController(write_first)).model
    assert kept.config.level_readout == "separate"  # '' keeps the checkpoint's own
    shared = train(cfg_for(tmp_path, *init, "--level-readout", "shared", "--out-dir", str(tmp_path / "shared")),
                   log=lambda s: None, controller=FunctionController(write_first)).model
    assert shared.config.level_readout == "shared"
    dv = separate.config.resolved_value_dim
    assert torch.allclose(shared.integration.proj.weight, separate.integration.proj.weight[:, :dv], atol=1e-6)
    with pytest.raises(SystemExit):
        cfg_for(tmp_path, "--level-readout", "both")


def test_a_run_saved_before_level_readout_existed_resumes_with_its_own(tmp_path):
    """Runs saved before the option have no level_readout anywhere; their models had per-level columns."""
    first = cfg_for(tmp_path, "--max-steps", "2", "--checkpoint-every", "1", "--level-readout", "separate")
    train(first, log=lambda s: None, controller=FunctionController(write_first))
    run = tmp_path / "run"
    trainer = json.loads((run / "trainer.json").read_text())
    model_json = run / trainer["checkpoint"] / "ahm_model.json"
    for path, strip in ((run / "trainer.json", lambda d: d["state"]["config"]),
                        (model_json, lambda d: d["config"])):
        data = json.loads(path.read_text())
        del strip(data)["level_readout"]
        path.write_text(json.dumps(data))
    resumed = train(cfg_for(tmp_path, "--max-steps", "2", "--checkpoint-every", "1", "--resume"),
                    log=lambda s: None, controller=FunctionController(write_first))
    assert resumed.steps == 2 and resumed.model.config.level_readout == "separate"


def test_initialisation_options():
    from ahm.cli import parse_config

    base = parse_config(TrainLMConfig, [*TINY])
    torch.manual_seed(0)
    default = build_model(base, 512)
    assert torch.nn.functional.softplus(default.write_recency).item() == pytest.approx(0.1)
    assert default.backbone.embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    torch.manual_seed(0)
    assert torch.equal(build_model(base, 512).backbone.embedding.weight, default.backbone.embedding.weight)
    tuned = build_model(parse_config(TrainLMConfig, [*TINY, "--embedding-init", "0.3", "--write-recency-init", "1"]),
                        512)
    assert tuned.backbone.embedding.weight.std().item() == pytest.approx(0.3, rel=0.1)
    assert torch.nn.functional.softplus(tuned.write_recency).item() == pytest.approx(1.0)
    assert tuned.lm_head.weight is tuned.backbone.embedding.weight  # still tied
    with pytest.raises(SystemExit):
        parse_config(TrainLMConfig, ["--embedding-init", "0"])


def test_sigkill_then_resume_is_exact(tmp_path):
    """A run killed with SIGKILL mid-way and resumed ends with the same weights and loss curve as an
    uninterrupted run with the same seed."""
    corpus = str(write_corpus(tmp_path / "corpus"))
    args = [*TINY, "--corpus", corpus, "--seq-len", "128", "--max-steps", "30", "--checkpoint-every", "1",
            "--controller", "write_all"]
    full = run_cli([*args, "--out-dir", str(tmp_path / "full")], tmp_path)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "train_lm.py"), *args, "--out-dir", str(run)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if json.loads((run / "trainer.json").read_text())["state"]["step"] >= 10:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((run / "trainer.json").read_text())["state"]["step"]
    assert 10 <= killed_at < 30, killed_at
    (run / ".trainer.json.k1ll3d.tmp").write_text('{"state": ')  # what a kill in the middle of a write leaves
    resumed = run_cli([*args, "--out-dir", str(run), "--resume"], tmp_path)
    assert not list(run.rglob("*.tmp")), "a half-written temporary survived the resumed run"
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "trainer.json").read_text())["state"]
    b = json.loads((run / "trainer.json").read_text())["state"]
    assert b["step"] == a["step"] == 30
    assert b["losses"] == a["losses"]
    cfg = TrainLMConfig(d_model=16, n_layer=1, d_state=4, key_dim=8, chunk_size=32, window=64)
    x, y = build_model(cfg, 256), build_model(cfg, 256)
    load_training_checkpoint(tmp_path / "full", x)
    load_training_checkpoint(run, y)
    for (name, u), v in zip(x.state_dict().items(), y.state_dict().values()):
        assert torch.equal(u, v), name


def test_replay_reproduces_the_environment():
    """The training pass replaying the env's operations answers exactly as the env scored them."""
    torch.manual_seed(0)
    cfg = TrainLMConfig(source="tasks", d_model=16, n_layer=1, d_state=4, key_dim=8, chunk_size=64, window=1024)
    source = TaskSource(["passkey"], 64, Curriculum((1024,), "mixed"))
    batch = source.sample(3, 1024, np.random.default_rng(0))
    model = build_model(cfg, source.vocab_size)

    class WriteAndRead:
        name = "write_read"

        def reset(self, n):
            pass

        def act(self, obs, mask, info=None, episode_start=None):
            a = write_first(obs, mask)
            return a

    actions, acc = controller_actions(model, batch, WriteAndRead(), 8, 512)
    model.eval()
    with torch.no_grad():
        out, _ = WindowLoss(model, 0.0, 1.0)(
            torch.from_numpy(batch.tokens), torch.full((3,), -1), model.init_state(3),
            [ReplayController(actions[:, t], torch.device("cpu")) for t in range(actions.shape[1])],
            torch.from_numpy(batch.answer_targets))
    assert int(out.answers) == 3
    assert int(out.answers_correct) == int(round(acc.sum()))


def test_heldout_task_loss_scores_held_out_streams_as_the_env_does():
    """The held-out loss's answers are the env's on task_accuracy's streams (none a training batch draws), the same
    at every call, and leave the model's weights and mode as they were."""
    from ahm.agents import make_controller
    from ahm.backbone.checkpoint import load_ahm_checkpoint
    from ahm.envs.default_backbones import shipped_backbone_path
    from ahm.training.evaluation import EVAL_SEED_OFFSET, heldout_task_loss, task_accuracy

    model = load_ahm_checkpoint(shipped_backbone_path("passkey"))[0].train()  # answers some, not all (below)
    c = model.config
    cfg = TrainLMConfig(source="tasks", tasks="passkey", lengths="1024,2048", d_model=c.backbone.d_model,
                        n_layer=c.backbone.n_layer, d_state=c.backbone.d_state, key_dim=c.key_dim,
                        chunk_size=c.chunk_size, window=2048, wm_slots=2, ltm_capacity=2, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random = make_controller("random")  # seeded at every reset: the same operations at every call
    first = heldout_task_loss(model, cfg, random, episodes=4)
    assert first == heldout_task_loss(model, cfg, random, episodes=4)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    env = [task_accuracy(model, "passkey", n, 4, random, 2, 2, 3 + EVAL_SEED_OFFSET) for n in (1024, 2048)]
    assert first["answers"] == 8 and 0 < first["accuracy"] < 1 and first["accuracy"] == pytest.approx(np.mean(env))
    assert heldout_task_loss(model, cfg, make_controller("oracle"), episodes=4)["loss"] < first["loss"]
    source = TaskSource(["passkey"], c.chunk_size, Curriculum((1024,), "mixed"))
    training = source.sample(8, 1024, np.random.default_rng(3))  # what train() draws first with seed 3
    heldout = source.sample(8, 1024, np.random.default_rng([3 + EVAL_SEED_OFFSET, 1024]))
    assert not set(training.stream_seeds) & set(heldout.stream_seeds)
    with pytest.raises(ValueError, match="needs a task config"):
        heldout_task_loss(model, TrainLMConfig(), random)


@pytest.mark.parametrize("args, message", [
    (["--d-model", "0"], "--d-model must be an int >= 1"),
    (["--window", "100", "--chunk-size", "32"], "multiple of --chunk-size"),
    (["--source", "text", "--controller", "oracle"], "oracle reads task ground truth"),
    (["--lengths", "1024,abc"], "comma-separated integers"),
])
def test_bad_config_stops_with_a_message_and_writes_nothing(tmp_path, args, message):
    r = run_cli([*TINY, "--out-dir", str(tmp_path / "run"), *args], tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_empty_corpus_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for corpus, message in ((tmp_path / "empty", "no documents"), (tmp_path / "missing", "does not exist")):
        r = run_cli([*TINY, "--corpus", str(corpus), "--out-dir", str(tmp_path / "run")], tmp_path)
        assert r.returncode != 0 and message in r.stderr, r.stderr
        assert not (tmp_path / "run").exists()


def test_corrupted_checkpoint_stops_and_changes_nothing(tmp_path):
    cfg = cfg_for(tmp_path, "--max-steps", "2")
    train(cfg, lambda s: None, FunctionController(write_first))
    run = tmp_path / "run"
    (current_model_dir(run) / "model.safetensors").write_bytes(b"not a safetensors file")
    before = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = run_cli([*TINY, "--corpus", cfg.corpus, "--seq-len", "128", "--out-dir", str(run), "--resume",
                 "--controller", "write_all", "--max-steps", "4"], tmp_path)
    assert r.returncode != 0 and "corrupted" in r.stderr, r.stderr
    assert {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (run / "trainer.json").write_text("{")
    r = run_cli([*TINY, "--corpus", cfg.corpus, "--out-dir", str(run), "--resume"], tmp_path)
    assert r.returncode != 0 and "trainer.json is corrupted" in r.stderr, r.stderr


def test_resume_without_checkpoint(tmp_path):
    r = run_cli([*TINY, "--out-dir", str(tmp_path / "run"), "--resume"], tmp_path)
    assert r.returncode != 0 and "no training checkpoint" in r.stderr, r.stderr


@pytest.mark.slow
def test_torchrun_two_processes_keep_replicas_identical(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a free rendezvous port of its own (a fixed port collides with any other run on the machine)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(REPO / "train_lm.py"), *TINY, "--corpus", str(corpus), "--seq-len", "128",
                        "--max-steps", "4", "--controller", "write_all", "--out-dir", str(tmp_path / "run")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replicas identical across 2 processes" in r.stdout, r.stdout
    state = json.loads((tmp_path / "run" / "trainer.json").read_text())["state"]
    assert state["step"] == 4 and len(state["rng"]) == 2 and state["rng"][0] != state["rng"][1]
