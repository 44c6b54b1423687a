"""Bits per byte and the train_lm.py entry point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ahm.backbone import MambaConfig, MambaLM
from ahm.backbone.language_modeling import bits_per_byte


def test_bits_per_byte_matches_one_shot_cross_entropy():
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(vocab_size=256, d_model=16, n_layer=1, d_state=4))
    docs = [np.random.default_rng(i).integers(0, 256, size=n, dtype=np.uint8) for i, n in enumerate([300, 41])]
    with torch.no_grad():
        nats = 0.0
        for d in docs:
            t = torch.as_tensor(d.astype(np.int64))[None]
            logits, _ = lm(t[:, :-1])
            nats += torch.nn.functional.cross_entropy(logits[0], t[0, 1:], reduction="sum").item()
    expected = nats / (299 + 40) / math.log(2)
    for chunk in (1, 7, 4096):  # the chunking of the stream must not matter
        bpb, n = bits_per_byte(lm, docs, chunk=chunk)
        assert n == 339 and bpb == pytest.approx(expected, rel=1e-5)
    # Resetting the context every 50 bytes changes the answer (context is used).
    assert bits_per_byte(lm, docs, chunk=16, context=50)[0] != pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="no document has two or more bytes"):
        bits_per_byte(lm, [np.zeros(1, np.uint8)])


def test_train_lm_smoke_loss_falls(tmp_path):
    """A few steps on a tiny corpus (the CI smoke test): the training loss falls, and held-out bits per byte
    (--eval, whole-document context) end far below 8 (uniform)."""
    from ahm import train_lm

    for i in range(4):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"d{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    args = ["--corpus", str(tmp_path / "corpus"), "--d-model", "32", "--seq-len", "64", "--window", "64",
            "--chunk-size", "32", "--batch", "4", "--max-steps", "40", "--lr", "1e-2", "--out-dir",
            str(tmp_path / "ck"), "--no-progress", "--no-tensorboard", "--threads", "1"]
    result = train_lm.main(args)
    assert result.steps == 40
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 1.0
    evaluated = train_lm.main([*args, "--eval", "--eval-contexts", "0", "--eval-bytes", "500"])
    assert evaluated.evaluation["whole document"]["with_memory"] < 4.0  # uniform is 8; the text repeats


def test_train_lm_rejects_bad_config(capsys):
    from ahm import train_lm

    with pytest.raises(SystemExit) as info:
        train_lm.main(["--seq-len", "0"])
    assert info.value.code == 2 and "--seq-len must be an int >= 1" in capsys.readouterr().err
