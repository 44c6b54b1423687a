"""ahm.backbone.checkpoint: safe, atomic, exact round trips."""

from __future__ import annotations

import pytest
import torch

from ahm.backbone import MambaConfig, MambaLM
from ahm.backbone.checkpoint import load_lm_checkpoint, save_lm_checkpoint


def test_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(vocab_size=32, d_model=16, n_layer=2, d_state=4))
    save_lm_checkpoint(tmp_path / "ck", lm, extra={"step": 7})
    loaded, extra = load_lm_checkpoint(tmp_path / "ck")
    assert extra == {"step": 7}
    assert loaded.config == lm.config
    for (n1, p1), (n2, p2) in zip(lm.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight  # still tied
    tokens = torch.randint(0, 32, (2, 9))
    torch.testing.assert_close(loaded(tokens)[0], lm(tokens)[0], rtol=0, atol=0)


def test_missing_and_corrupted_checkpoints_raise(tmp_path):
    lm = MambaLM(MambaConfig(vocab_size=8, d_model=8, n_layer=1))
    with pytest.raises(FileNotFoundError, match="has no checkpoint.json"):
        load_lm_checkpoint(tmp_path / "nothing")
    save_lm_checkpoint(tmp_path / "ck", lm)
    weights = tmp_path / "ck" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="model.safetensors is corrupted"):
        load_lm_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "checkpoint.json").write_text("{not json")
    with pytest.raises(ValueError, match="checkpoint.json is corrupted"):
        load_lm_checkpoint(tmp_path / "ck")


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    lm = MambaLM(MambaConfig(vocab_size=8, d_model=8, n_layer=1))
    save_lm_checkpoint(tmp_path / "ck", lm, extra={"v": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("ahm.backbone.checkpoint.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_lm_checkpoint(tmp_path / "ck", lm, extra={"v": 2})
    after = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    assert after == before  # no temporary files left, nothing overwritten
