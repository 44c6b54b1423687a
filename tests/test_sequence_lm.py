"""``train_lm.py --model NAME`` (ahm.training.sequence_lm): the comparison models train on text and tasks, save,
load back to the same logits, evaluate; bad names and options stop before anything is written; answers are
scored at the last token of their chunk; and the comparison benchmark runs end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ahm.backbone.baselines import model_names
from ahm.backbone.errors import NonFiniteError
from ahm.cli import parse_config
from ahm.train_lm import main
from ahm.training.config import TrainLMConfig
from ahm.training.data import Curriculum, TaskSource
from ahm.training.sequence_lm import (
    AUX_LOSS_WEIGHT,
    META,
    WEIGHTS,
    answer_logits,
    load_sequence_checkpoint,
    sequence_task_accuracy,
    sequence_window_loss,
    train_sequence_model,
)

REPO = Path(__file__).resolve().parents[1]
FAST = [name for name in model_names() if name in ("mamba", "transformer")]
"""The registered models fast enough to train here (the others share every code path)."""
TINY = ["--model-size", "5000", "--window", "64", "--chunk-size", "16", "--batch", "2", "--max-steps", "3",
        "--no-progress", "--no-tensorboard", "--threads", "1"]
TASKS = ["--source", "tasks", "--tasks", "copy", "--lengths", "128", "--eval-episodes", "4"]
"""Selective copying: its 16-token vocabulary keeps a 5,000-parameter budget (passkey needs chunks of 59+)."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        (root / f"doc{i}.txt").write_text(("the quick brown fox jumps over the lazy dog. " * 20 + f"{i} ") * 4)
    return root


def text_args(corpus: Path, out: Path) -> list[str]:
    return [*TINY, "--corpus", str(corpus), "--seq-len", "128", "--out-dir", str(out), "--eval-contexts", "64,0",
            "--eval-bytes", "1000"]


@pytest.mark.parametrize("name", FAST)
def test_train_save_and_eval_on_text(name, corpus, tmp_path):
    run = tmp_path / "run"
    result = main(["--model", name, *text_args(corpus, run)])
    assert result.steps == 3 and len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    meta = json.loads((run / META).read_text())
    assert (run / WEIGHTS).is_file() and (meta["model"], meta["size"], meta["vocab_size"]) == (name, 5000, 256)
    assert meta["config"]["window"] == 64 and meta["step"] == 3
    evaluation = main(["--model", name, *text_args(corpus, run), "--eval"]).evaluation
    assert set(evaluation) == {"64", "whole document"}
    for cell in evaluation.values():  # an almost untrained byte model: near the 8 bits of a uniform guess
        assert 4.0 < cell["bits_per_byte"] < 10.0 and cell["bytes"] >= 1000


@pytest.mark.parametrize("name", FAST)
def test_train_save_and_eval_on_tasks(name, tmp_path):
    run = tmp_path / "run"
    result = main(["--model", name, *TINY, *TASKS, "--out-dir", str(run)])
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert json.loads((run / META).read_text())["vocab_size"] == 16
    evaluation = main(["--model", name, *TINY, *TASKS, "--out-dir", str(run), "--eval"]).evaluation
    assert set(evaluation) == {"copy@128"} and 0.0 <= evaluation["copy@128"]["accuracy"] <= 1.0


def test_checkpoint_round_trip_gives_the_same_logits(corpus, tmp_path):
    cfg = parse_config(TrainLMConfig, ["--model", "mamba", *text_args(corpus, tmp_path / "run")])
    trained = train_sequence_model(cfg, log=lambda s: None).model.eval()
    loaded, meta = load_sequence_checkpoint(tmp_path / "run")
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = trained(tokens, trained.init_state(2))
        got, _ = loaded.eval()(tokens, loaded.init_state(2))
    assert meta["step"] == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'; choose from"),
    (["--model", "mamba", "--model-options", "no_such_field=3"], "mamba: unknown option(s) ['no_such_field']"),
    (["--model", "mamba", "--model-options", "d_state=0"], "d_state must be a positive int"),
    (["--model", "mamba", "--model-size", "12"], "too small"),
    (["--model", "mamba", "--model-options", "window"], "--model-options must be key=value pairs"),
])
def test_bad_model_or_option_stops_before_training(args, message, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main([*TINY, "--out-dir", str(run), "--corpus", str(tmp_path / "missing"), *args])
    assert str(exit_.value.code).startswith("train_lm.py: ") and message in str(exit_.value.code), exit_.value.code
    assert not run.exists()  # and the missing corpus was never read: the model is built first


def test_the_command_line_reports_a_bad_model(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "train_lm.py"), "--model", "nope", "--out-dir",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("train_lm.py: unknown model 'nope'"), r.stderr
    assert not (tmp_path / "run").exists()


class BigramTable(nn.Module):
    """A streaming model for hand computations: the logits at a token are row ``token`` of a table."""

    def __init__(self, table: torch.Tensor, aux: float | None = None) -> None:
        super().__init__()
        self.table, self.aux = nn.Parameter(table), aux

    def init_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.int64, device=device)  # tokens seen

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.aux is not None:
            self.aux_loss = self.table.sum() * 0 + self.aux
        state = self.init_state(tokens.shape[0]) if state is None else state
        return self.table[tokens], state + tokens.shape[1]


TABLE = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])


def ce(row: int, target: int) -> float:
    """Cross-entropy of TABLE[row] against target, by hand: log sum exp - the target's logit."""
    return math.log(sum(math.exp(x) for x in TABLE[row].tolist())) - float(TABLE[row, target])


def test_answer_scoring_matches_a_hand_computation():
    # W = 5 tokens, C = 2: the chunks end at tokens 1, 3 and 4 (a short last chunk).
    tokens = torch.tensor([[0, 1, 2, 2, 1]])
    targets = torch.tensor([[-1, 2, 0]])  # no query in chunk 0; answers 2 (after token 2) and 0 (after token 1)
    assert torch.equal(answer_logits(TABLE[tokens], 2), TABLE[torch.tensor([[1, 2, 1]])])
    model = BigramTable(TABLE.clone())
    out, state = sequence_window_loss(model, tokens, torch.tensor([0]), model.init_state(1), targets, 2,
                                      lm_weight=0.5, answer_weight=2.0)
    answer = (ce(2, 2) + ce(1, 0)) / 2
    lm = (ce(0, 1) + ce(1, 2) + ce(2, 2) + ce(2, 1) + ce(1, 0)) / 5  # the last: the token after the window
    assert (out.answers, out.answers_correct) == (2, 1)  # row 2's argmax is 2; row 1's is 1, not 0
    assert out.answer_loss.item() == pytest.approx(answer, rel=1e-6)
    assert out.lm_loss.item() == pytest.approx(lm, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * lm + 2.0 * answer, rel=1e-6)
    assert int(state[0]) == 5
    out, _ = sequence_window_loss(model, tokens, torch.tensor([-1]), None, None, 2)  # text: no answers, no next
    assert out.answers == 0 and out.lm_loss.item() == pytest.approx(lm * 5 / 4 - ce(1, 0) / 4, rel=1e-6)


def test_a_models_aux_loss_is_added_with_its_weight():
    tokens, targets = torch.tensor([[0, 1, 2, 2]]), torch.tensor([[1, -1]])
    plain, _ = sequence_window_loss(BigramTable(TABLE.clone()), tokens, torch.tensor([-1]), None, targets, 2)
    moe, _ = sequence_window_loss(BigramTable(TABLE.clone(), aux=3.0), tokens, torch.tensor([-1]), None, targets, 2)
    assert moe.aux_loss == 3.0 and plain.aux_loss == 0.0
    assert moe.loss.item() == pytest.approx(plain.loss.item() + AUX_LOSS_WEIGHT * 3.0, rel=1e-6)


def test_streamed_accuracy_equals_the_answers_of_one_pass():
    from ahm.backbone.baselines import build_model

    torch.manual_seed(0)
    model = build_model("mamba", 16, 5000).eval()
    acc = sequence_task_accuracy(model, "copy", 128, 3, 16, seed=5, batch=2)
    rng = np.random.default_rng([5, 128])  # the streams sequence_task_accuracy draws
    source = TaskSource(["copy"], 16, Curriculum((128,), "mixed"))
    per_episode = []
    with torch.no_grad():
        for size in (2, 1):
            batch = source.sample(size, 128, rng)
            logits, _ = model(torch.from_numpy(batch.tokens))
            targets = torch.from_numpy(batch.answer_targets)
            hit = (answer_logits(logits, 16).argmax(-1) == targets) & (targets >= 0)
            per_episode += (hit.sum(1) / (targets >= 0).sum(1)).tolist()
    assert acc == pytest.approx(float(np.mean(per_episode)), abs=1e-9)


def test_a_diverged_run_stops_with_a_clear_error(corpus, tmp_path):
    cfg = parse_config(TrainLMConfig, ["--model", "mamba", *text_args(corpus, tmp_path / "run"), "--lr", "inf"])
    with pytest.raises(NonFiniteError, match=r"--model mamba, step 1: .*non-finite.*--lr inf"):
        train_sequence_model(cfg, log=lambda s: None)


def test_the_comparison_benchmark_smoke_run(tmp_path):
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "baselines_comparison.py"), "--smoke", "--models",
                        "mamba", "--out", str(tmp_path), "--threads", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.perf_counter() - start < 120, "the smoke run should take seconds, not minutes"
    rows = (tmp_path / "baselines.csv").read_text().splitlines()
    assert rows[0] == "model,size,metric,task,length,value"
    metrics = {row.split(",")[2] for row in rows[1:]}
    assert {"accuracy", "bits_per_byte", "inference_tokens_per_s", "peak_memory_mib", "state_kib",
            "train_tokens_per_s_text"} <= metrics
    for name in ("accuracy_passkey.png", "accuracy_copy.png", "cost.png", "baselines.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| mamba | 5K |" in r.stdout
    # runs split across processes join into one report: the same tables as the run that wrote them
    merged = subprocess.run([sys.executable, str(REPO / "benchmarks" / "baselines_comparison.py"), "--smoke",
                             "--merge", str(tmp_path), "--out", str(tmp_path / "merged")], capture_output=True,
                            text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (tmp_path / "merged" / "baselines.md").read_text() == (tmp_path / "baselines.md").read_text()
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "baselines_comparison.py"), "--merge",
                          str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--merge:" in bad.stderr and "has no baselines.csv" in bad.stderr
