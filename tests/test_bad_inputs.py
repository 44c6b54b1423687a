"""Bad inputs, as a hostile user would give them (issue 22): one parametrized test per class of failure.

Each CLI case runs the script's ``main(argv)`` in-process and asserts the exit status is non-zero, the message
names the offending input, and no file on disk changed (the folder is snapshotted before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ahm.backbone import AHMConfig, AHMModel, MambaConfig
from ahm.backbone.checkpoint import SIZE_BOUNDS, load_ahm_checkpoint, load_ahm_config, save_ahm_checkpoint
from ahm.errors import AHMConfigError, AHMError, CheckpointError, NonFiniteError, ResourceError

TINY_MODEL = AHMConfig(MambaConfig(d_model=16, n_layer=1, d_state=4), chunk_size=64, wm_slots=2, ltm_capacity=8,
                       key_dim=8)
TINY_RUN = ["--source", "text", "--seq-len", "128", "--window", "128", "--chunk-size", "64", "--batch", "1",
            "--d-model", "16", "--n-layer", "1", "--d-state", "4", "--key-dim", "8", "--wm-slots", "2",
            "--ltm-capacity", "8", "--max-steps", "1", "--no-tensorboard", "--no-progress", "--eval-bytes", "256",
            "--eval-contexts", "128"]


# ====================================================================== helpers
def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256): equal before and after means nothing changed."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def exits(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``main(argv)``; the exit status and what it printed (stderr + the SystemExit's message)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    message = code if isinstance(code, str) else ""
    out = capsys.readouterr()
    return (1 if isinstance(code, str) else int(code or 0)), message + out.err + out.out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny text-folder corpus (3 documents, one held out), so a training step takes well under a second."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (root / f"doc{i}.txt").write_text("".join(f"line {j} of document {i}: the quick brown fox\n"
                                                  for j in range(60)))
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_ahm_checkpoint(path, AHMModel(TINY_MODEL))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus) -> Path:
    """A finished one-step train_lm.py run (its out_dir holds trainer.json and step_000000001/)."""
    from ahm.train_lm import main

    out = tmp_path_factory.mktemp("run") / "lm"
    main([*TINY_RUN, "--corpus", str(corpus), "--out-dir", str(out)])
    assert (out / "trainer.json").is_file()
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def poison(weights: Path, name: str | None = None) -> str:
    """Overwrite one tensor of a safetensors file with NaN; returns its name."""
    tensors = load_file(str(weights))
    name = name or sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(weights))
    return name


# ====================================================================== 1. silent wrong results
@pytest.mark.parametrize("flag, value, step", [("--lr", "inf", 1), ("--lr", "1e30", 2), ("--lm-weight", "inf", 1),
                                               ("--embedding-init", "inf", 1)])
def test_a_diverging_run_stops_with_the_step_and_the_cause_and_saves_nothing(flag, value, step, corpus, tmp_path,
                                                                            capsys):
    """Finite weights of 1e30 after one step at --lr 1e30 are not caught; the non-finite loss they give is."""
    from ahm.train_lm import main

    out = tmp_path / "lm"
    code, message = exits(main, [*TINY_RUN, "--corpus", str(corpus), "--out-dir", str(out), flag, value,
                                 "--max-steps", "3"], capsys)
    assert code != 0 and f"step {step}:" in message and flag in message, message
    assert not (out / "trainer.json").exists() and not list(out.glob("step_*"))
    assert "\n" not in message.strip().splitlines()[-1] and "Traceback" not in message


@pytest.mark.parametrize("mode", ["--resume", "--eval"])
def test_resume_and_eval_refuse_a_checkpoint_with_nan_weights_naming_file_and_tensor(mode, trained_run, corpus,
                                                                                   tmp_path, capsys):
    from ahm.train_lm import main

    run = copy_tree(trained_run, tmp_path / "run")
    weights = next(run.glob("step_*")) / "model.safetensors"
    name = poison(weights)
    before = snapshot(run)
    code, message = exits(main, [*TINY_RUN, "--corpus", str(corpus), "--out-dir", str(run), "--max-steps", "2", mode],
                          capsys)
    assert code != 0 and "model.safetensors" in message and name in message and "NaN" in message, message
    assert snapshot(run) == before


def test_saving_or_loading_a_non_finite_model_is_refused(tiny_checkpoint, tmp_path):
    model, _ = load_ahm_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        model.backbone.embedding.weight[3, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="backbone.embedding.weight"):
        save_ahm_checkpoint(tmp_path / "bad", model)
    assert not (tmp_path / "bad").exists()
    bad = copy_tree(tiny_checkpoint, tmp_path / "nan")
    name = poison(bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_ahm_checkpoint(bad)


# ====================================================================== 2. untrusted files control resources
SIZE_FIELDS = sorted(set(SIZE_BOUNDS) & ({"vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand"}
                                         | {"chunk_size", "wm_slots", "ltm_capacity", "key_dim", "value_dim"}))


@given(field=st.sampled_from(SIZE_FIELDS), value=st.integers(min_value=2**31, max_value=10**13))
def test_a_model_json_with_absurd_sizes_is_refused_before_allocating(field, value, tiny_checkpoint, tmp_path_factory):
    bad = copy_tree(tiny_checkpoint, tmp_path_factory.mktemp("sizes") / "m")
    meta = json.loads((bad / "ahm_model.json").read_text())
    section = meta["config"]["backbone"] if field in MambaConfig.__dataclass_fields__ else meta["config"]
    section[field] = value
    (bad / "ahm_model.json").write_text(json.dumps(meta))
    before = snapshot(bad)
    with pytest.raises(CheckpointError, match=field):
        load_ahm_config(bad)
    with pytest.raises(CheckpointError, match=field):
        load_ahm_checkpoint(bad)
    assert snapshot(bad) == before


def test_a_model_within_bounds_but_beyond_the_machine_says_what_it_needs(tiny_checkpoint, tmp_path):
    bad = copy_tree(tiny_checkpoint, tmp_path / "m")
    meta = json.loads((bad / "ahm_model.json").read_text())
    meta["config"]["backbone"].update(d_model=2**16, n_layer=2**10)  # each at its bound: ~100 TB of weights
    (bad / "ahm_model.json").write_text(json.dumps(meta))
    with pytest.raises(ResourceError, match=r"would need about .* this machine has .* available"):
        load_ahm_checkpoint(bad)


@pytest.fixture(scope="module")
def saved_controller(tmp_path_factory) -> Path:
    learned = pytest.importorskip("ahm.agents.learned")
    from sb3_contrib import MaskablePPO

    from ahm.agents.evaluation import make_eval_env
    from ahm.agents.sb3_adapter import SB3VecEnvAdapter

    env = SB3VecEnvAdapter(make_eval_env("AHMMemory-v0", num_envs=1, stream_seeds=(0,), seq_len=1024,
                                         chunk_size=64))
    model = MaskablePPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [8]})
    return learned.save_controller(tmp_path_factory.mktemp("ctrl") / "ppo", model)


@pytest.mark.parametrize("edit, named", [
    (lambda m: m["policy_kwargs"].update(net_arch=[200_000, 200_000]), "net_arch"),
    (lambda m: m["policy_kwargs"].update(net_arch="wide"), "net_arch"),
    (lambda m: m["policy_kwargs"].update(net_arch={"pi": [8], "vf": [-1]}), "net_arch.vf"),
    (lambda m: m["policy_kwargs"].update(not_a_kwarg=1), "not_a_kwarg"),
    (lambda m: m.setdefault("hyperparameters", {}).update(learning_rate="fast"), "learning_rate"),
])
def test_a_controller_json_with_a_bad_field_is_refused_naming_the_field(edit, named, saved_controller, tmp_path):
    from ahm.agents.controller_checkpoint import load_controller

    bad = copy_tree(saved_controller, tmp_path / "ppo")
    meta = json.loads((bad / "controller.json").read_text())
    edit(meta)
    (bad / "controller.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")) as info:
        load_controller(bad)
    assert "controller.json" in str(info.value)


# ====================================================================== 3. raw tracebacks -> one sentence
@pytest.mark.parametrize("argv, named", [
    (["--batch", "1G"], "--batch"),
    (["--wm-slots", "1G"], "--wm-slots"),
    (["--ltm-capacity", "1G"], "--ltm-capacity"),
    (["--seq-len", "10G", "--window", "128"], "--seq-len"),
    (["--source", "tasks", "--lengths", "512", "--task-kwargs", "bogus=1"], "bogus"),
    (["--corpus", "hf:{tmp}"], "ahm-ssm[hf]"),
    (["--keep-weight", "1"], "--keep-weight"),  # text has no hindsight labels
    (["--keep-weight", "-1", "--source", "tasks", "--lengths", "512"], "--keep-weight"),
])
def test_bad_training_options_end_in_a_sentence_naming_the_option_before_anything_is_written(argv, named, corpus,
                                                                                             tmp_path, capsys):
    from ahm.train_lm import main

    if "ahm-ssm[hf]" == named:
        import importlib.util

        if importlib.util.find_spec("datasets") is not None:
            pytest.skip("datasets is installed")
    base = [*TINY_RUN, "--corpus", str(corpus), "--out-dir", str(tmp_path / "lm")]
    code, message = exits(main, base + [a.format(tmp=tmp_path) for a in argv], capsys)
    assert code != 0 and named in message and "Traceback" not in message, message
    assert not (tmp_path / "lm").exists()


@pytest.mark.parametrize("kind", ["file", "under_a_file", "read_only"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_training(kind, corpus, tmp_path, capsys,
                                                                           monkeypatch):
    from ahm.train_lm import main

    target = tmp_path / "out"
    if kind in ("file", "under_a_file"):
        target.write_text("a file")
        out = target if kind == "file" else target / "lm"
    else:
        target.mkdir()
        target.chmod(0o500)
        out = target / "lm"
        if os.geteuid() == 0:  # root writes into read-only folders: make the permission check see what a user's does
            monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and Path(path) == target))
    before = snapshot(tmp_path)
    code, message = exits(main, [*TINY_RUN, "--corpus", str(corpus), "--out-dir", str(out)], capsys)
    assert code != 0 and "--out-dir" in message and "step 1" not in message, message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("edit, named", [
    (lambda m: m["state"].pop("rng"), "state.rng"),
    (lambda m: m["state"].update(rng={"a": 1}), "state.rng"),
    (lambda m: m["state"].update(step="3"), "state.step"),
    (lambda m: m.update(param_groups={"lr": 1}), "param_groups"),
    (lambda m: m.update(state=[1, 2]), "state"),
    (lambda m: m.pop("checkpoint"), "checkpoint"),
])
def test_a_trainer_json_with_a_missing_or_mistyped_field_is_refused_naming_it(edit, named, trained_run, corpus,
                                                                              tmp_path, capsys):
    from ahm.train_lm import main

    run = copy_tree(trained_run, tmp_path / "run")
    meta = json.loads((run / "trainer.json").read_text())
    edit(meta)
    (run / "trainer.json").write_text(json.dumps(meta))
    before = snapshot(run)
    code, message = exits(main, [*TINY_RUN, "--corpus", str(corpus), "--out-dir", str(run), "--max-steps", "2",
                                 "--resume"], capsys)
    assert code != 0 and "trainer.json" in message and repr(named) in message, message
    assert snapshot(run) == before


def test_weights_of_another_shape_name_the_file_the_tensor_and_both_shapes(tiny_checkpoint, tmp_path):
    bad = copy_tree(tiny_checkpoint, tmp_path / "m")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["backbone.embedding.weight"] = torch.zeros(256, 32)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_ahm_checkpoint(bad)
    message = str(info.value)
    assert all(s in message for s in ("model.safetensors", "backbone.embedding.weight", "(256, 32)", "(256, 16)"))


def test_corpus_files_that_cannot_be_read_name_the_file_and_line(tmp_path):
    from ahm.envs.text_corpus import load_corpus

    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl, line 2: JSON nested too deeply"):
        load_corpus(str(deep))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet PAR1")
    pytest.importorskip("pyarrow")
    with pytest.raises(ValueError, match=r"broken\.parquet: not a readable Parquet file"):
        load_corpus(str(broken))


# ====================================================================== 4. errors that name the wrong thing
def test_a_corpus_shorter_than_one_sequence_blames_seq_len(tmp_path):
    from ahm.envs.text_corpus import load_corpus

    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text("short text " * 5)
    corpus = load_corpus(str(tmp_path))
    with pytest.raises(ValueError, match=r"shorter than one training sequence of 4096 bytes \(--seq-len\)"):
        corpus.sample_windows(1, 4095, np.random.default_rng(0))


@pytest.mark.parametrize("action, shown", [
    (np.array([0, 0, 0, 0, 1e30]), "1e+30"),
    (np.array([0, 0, 0, 0, 2**64 - 1], dtype=np.uint64), "18446744073709551615"),
    (np.array([0, 0, 0, 2.0**40, 0]), "1099511627776.0"),
])
def test_an_out_of_range_action_is_reported_by_the_value_given(action, shown):
    import gymnasium

    env = gymnasium.make("AHMMemory-v0", seq_len=1024, chunk_size=64).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="= " + re.escape(shown) + " is outside the action space") as info:
        env.step(action)
    assert "-1 " not in str(info.value)


def test_a_nan_backbone_is_reported_as_non_finite_features_at_reset(tiny_checkpoint):
    import gymnasium

    model, _ = load_ahm_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        model.backbone.embedding.weight.fill_(float("nan"))
    env = gymnasium.make("AHMMemory-v0", seq_len=1024, chunk_size=64, backbone=model).unwrapped
    with pytest.raises(NonFiniteError, match="the backbone produced non-finite features"):
        env.reset(seed=0)


# ====================================================================== 5. a failed reset leaves the env as it was
BAD_SEEDS = [2**63, -1, 1.5, "7", True, None]


@pytest.mark.parametrize("bad", BAD_SEEDS[:-1])
def test_a_refused_reset_leaves_the_episode_as_it_was(bad):
    import gymnasium

    kwargs = dict(seq_len=1024, chunk_size=64)
    env, twin = (gymnasium.make("AHMMemory-v0", **kwargs).unwrapped for _ in range(2))
    for e in (env, twin):
        e.reset(seed=3)
        e.step(np.zeros(5, dtype=np.int64))
    stream = env.stream
    with pytest.raises(AHMConfigError, match=r"stream_seed"):
        env.reset(options={"stream_seed": bad})
    assert env.stream is stream
    action = np.array([1, 0, 0, 0, 0])
    for _ in range(3):  # the old episode goes on exactly as in an env that never saw the bad reset
        got, want = env.step(action), twin.step(action)
        assert all(np.array_equal(got[0][k], want[0][k]) for k in got[0]) and got[1:4] == want[1:4]
    with pytest.raises(AHMConfigError, match="unknown options"):
        env.reset(options={"stream_sede": 1})


def test_a_refused_vector_reset_leaves_every_episode_as_it_was():
    import gymnasium

    env = gymnasium.make_vec("AHMMemory-v0", num_envs=2, vectorization_mode="vector_entry_point", seq_len=1024,
                             chunk_size=64).unwrapped
    env.reset(seed=0)
    seeds, rngs = env.episodes.stream_seeds.copy(), [r.bit_generator.state for r in env._rngs]
    with pytest.raises(AHMConfigError, match=r"stream_seeds'\]\[1\]"):
        env.reset(seed=5, options={"stream_seeds": [1, 2**64]})
    assert np.array_equal(env.episodes.stream_seeds, seeds)
    assert [r.bit_generator.state for r in env._rngs] == rngs  # not even the generators were reseeded


# ====================================================================== 6. the benchmark's exit status
def test_the_benchmark_exits_non_zero_on_a_truncated_backbone_and_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    from ahm.benchmark import main

    bad = copy_tree(tiny_checkpoint, tmp_path / "m")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "bench"
    code, message = exits(main, ["--tasks", "AHMMemory-v0", "--lengths", "1024", "--chunk-size", "64", "--seeds",
                                 "1", "--controllers", "none", "--backbone", str(bad), "--out-dir", str(out),
                                 "--no-plots", "--no-progress"], capsys)
    assert code != 0 and "--backbone" in message and "model.safetensors" in message, message
    assert not out.exists()


def test_the_benchmark_exits_non_zero_when_a_cell_cannot_run(tmp_path, capsys):
    from ahm.benchmark import main

    out = tmp_path / "bench"
    code, message = exits(main, ["--tasks", "AHMMemory-v0", "--lengths", "128", "--chunk-size", "64", "--seeds", "1",
                                 "--controllers", "none", "--out-dir", str(out), "--no-plots", "--no-progress"],
                          capsys)
    assert code != 0 and "could not run" in message and "AHMMemory-v0 128 none" in message, message


@pytest.mark.parametrize("flag, value", [("--seeds", "100000000"), ("--chunk-size", "1G"), ("--episodes", "1G"),
                                         ("--num-envs", "1M")])
def test_benchmark_counts_beyond_any_machine_are_refused_at_once(flag, value, tmp_path, capsys):
    from ahm.benchmark import main

    out = tmp_path / "bench"
    code, message = exits(main, [flag, value, "--out-dir", str(out)], capsys)
    assert code == 2 and flag in message and "at most" in message, message
    assert not out.exists()


def test_every_family_is_an_ahm_error_and_the_builtin_callers_caught():
    assert issubclass(CheckpointError, ValueError) and issubclass(AHMConfigError, ValueError)
    assert issubclass(ResourceError, ValueError) and issubclass(NonFiniteError, FloatingPointError)
    assert all(issubclass(e, AHMError) for e in (CheckpointError, AHMConfigError, ResourceError, NonFiniteError))
    import ahm

    assert ahm.CheckpointError is CheckpointError
