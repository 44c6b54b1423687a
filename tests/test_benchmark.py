"""ahm.agents.evaluation and ahm.agents.benchmark: episode metrics, determinism, statistics, the CLI and its files."""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest
import torch

from ahm.agents import FunctionController, batch_observation
from ahm.agents.benchmark import (
    CSV_COLUMNS,
    BenchmarkConfig,
    BenchmarkRow,
    access_image,
    benchmark_table,
    format_length,
    mean_ci95,
    parse_length,
    run_benchmark,
    student_t_quantile,
)
from ahm.agents.evaluation import OP_NAMES, evaluate, evaluate_seeds, evaluation_stream_seeds, make_eval_env
from ahm.benchmark import main
from ahm.envs.memory_env import AHMMemoryEnv

torch.set_num_threads(1)

TINY = {"seq_len": 1024, "chunk_size": 64}
K = 8  # working-memory slots of the registered envs
RETRIEVE_OFFSET = (K + 1) + 2  # where the `retrieve` component starts in the flat action mask


def write_and_read(obs, mask):
    """Write every chunk (into a free slot, else the oldest), move displaced entries to LTM, read from both levels."""
    free = obs["wm_occupied"] < 0.5
    actions = np.zeros((len(free), 5), dtype=np.int64)
    actions[:, 0] = np.where(free.any(1), free.argmax(1), obs["wm_age"].argmax(1)) + 1
    actions[:, 1] = 1
    both, wm = mask[:, RETRIEVE_OFFSET + 3], mask[:, RETRIEVE_OFFSET + 1]
    actions[:, 2] = np.where(both, 3, np.where(wm, 1, 0))
    return actions


def write_and_drop(obs, mask):
    """Write into slot (chunk mod 3), dropping what it displaces; never read."""
    actions = np.zeros((len(obs["progress"]), 5), dtype=np.int64)
    actions[:, 0] = 1 + (np.round(obs["progress"][:, 0] * 1000).astype(np.int64) % 3)
    return actions


def nothing(obs, mask):
    return np.zeros((len(obs["progress"]), 5), dtype=np.int64)


# ====================================================================== evaluate
def _reference_episode(fn, task: str, stream_seed: int) -> dict:
    """One episode on the single env (the env's own episode loop), its final info."""
    env = AHMMemoryEnv(task=task, **TINY)
    obs, info = env.reset(options={"stream_seed": stream_seed})
    done = False
    while not done:
        action = fn(batch_observation(obs), env.action_masks()[None])[0]
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return info


def test_evaluate_matches_single_env_episodes():
    """Rounds of 2 sub-envs over 3 episodes (the last round padded) give each episode's final info exactly."""
    result = evaluate(FunctionController(write_and_read), "AHMMemory-Copy-v0", episodes=3, num_envs=2, seed=5, **TINY)
    seeds = evaluation_stream_seeds(5, 3)
    assert [e.stream_seed for e in result.episodes] == list(seeds)
    for episode, seed in zip(result.episodes, seeds):
        ref = _reference_episode(write_and_read, "copy", seed)
        t = ref["targets"]
        assert (episode.correct, episode.answered, episode.total) == (t["correct"], t["answered"], t["total"])
        assert episode.accuracy == t["correct"] / t["total"] and 0.0 <= episode.accuracy <= 1.0
        assert episode.is_success == ref["is_success"] and episode.steps == ref["steps"]
        assert episode.ops == {name: ref["memory"][name] for name in OP_NAMES}
        assert episode.bytes_held == ref["memory"]["bytes"] > 0
        assert episode.tokens == min(episode.steps * TINY["chunk_size"], TINY["seq_len"])
        assert episode.ops_per_1k_tokens == pytest.approx(1000 * sum(episode.ops.values()) / episode.tokens)
    # Some targets are right with this seed: the comparison is not 0 == 0.
    assert sum(e.correct for e in result.episodes) > 0
    assert result.accuracy == pytest.approx(np.mean([e.correct / e.total for e in result.episodes]))
    assert result.chance_accuracy == pytest.approx(1 / 14)
    assert result.step_tokens >= sum(e.tokens for e in result.episodes)
    assert 0 < result.tokens_per_s_with_resets < result.tokens_per_s


def test_evaluate_is_deterministic_and_controllers_share_episodes():
    a = evaluate(write_and_read, "AHMMemory-MQAR-v0", episodes=2, num_envs=2, seed=3, **TINY)
    b = evaluate(write_and_read, "AHMMemory-MQAR-v0", episodes=2, num_envs=2, seed=3, **TINY)
    assert a.episodes == b.episodes
    other = evaluate(write_and_drop, "AHMMemory-MQAR-v0", episodes=2, num_envs=2, seed=3, **TINY)
    assert [(e.stream_seed, e.steps, e.total) for e in other.episodes] == \
        [(e.stream_seed, e.steps, e.total) for e in a.episodes]
    assert other.episodes[0].ops["drops"] > 0 and other.episodes[0].ops["moves_to_ltm"] == 0
    c = evaluate(write_and_read, "AHMMemory-MQAR-v0", episodes=2, num_envs=2, seed=4, **TINY)
    assert not {e.stream_seed for e in c.episodes} & {e.stream_seed for e in a.episodes}


def test_seeds_stepped_together_score_as_each_seed_alone():
    """evaluate_seeds over 3 seeds x 2 episodes in rounds of 4 sub-envs (one round mixes seeds, the last is padded)
    gives each seed the episodes, in order, that evaluate(seed=s) gives it on one sub-env."""
    together = evaluate_seeds(write_and_read, "AHMMemory-MQAR-v0", seeds=(3, 4, 5), episodes=2, num_envs=4, **TINY)
    alone = [evaluate(write_and_read, "AHMMemory-MQAR-v0", episodes=2, num_envs=1, seed=s, **TINY) for s in (3, 4, 5)]
    assert [r.seed for r in together] == [3, 4, 5]
    assert [r.episodes for r in together] == [r.episodes for r in alone]
    assert sum(e.correct for r in alone for e in r.episodes) > 0  # not 0 == 0
    assert together[0].step_seconds == together[2].step_seconds > 0  # the run's time, shared equally
    with pytest.raises(ValueError, match="at least one seed"):
        evaluate_seeds(write_and_read, "AHMMemory-MQAR-v0", seeds=(), **TINY)


def test_evaluate_on_a_built_env_reuses_it_and_matches():
    seeds = evaluation_stream_seeds(1, 2)
    env = make_eval_env("AHMMemory-v0", num_envs=2, stream_seeds=seeds, **TINY)
    first = evaluate(FunctionController(write_and_read, "wr"), env, episodes=2, seed=1)
    second = evaluate(FunctionController(nothing, "none"), env, episodes=2, seed=1)
    built_here = evaluate(FunctionController(write_and_read, "wr"), "AHMMemory-v0", episodes=2, num_envs=2, seed=1,
                          **TINY)
    assert first.episodes == built_here.episodes
    assert [e.stream_seed for e in second.episodes] == list(seeds)
    assert all(sum(e.ops.values()) == 0 and e.bytes_held == 0 for e in second.episodes)
    with pytest.raises(ValueError, match="leave seq_len"):
        evaluate(nothing, env, seq_len=2048)


def test_prepare_features_reads_streams_together_into_the_cache_without_touching_episodes():
    """prepare_features reads every stream in one batched backbone pass (EpisodeBatch.warm): the cached features are
    those a reset of each stream alone computes, and the env's episodes are as they were."""
    from ahm.agents.evaluation import prepare_features

    seeds = evaluation_stream_seeds(2, 3)
    env = make_eval_env("AHMMemory-v0", num_envs=1, stream_seeds=seeds, **TINY)
    env.reset(options={"stream_seeds": [seeds[0]]})
    before = list(env.episodes.stream_seeds)
    assert prepare_features(env, seeds) >= 0
    assert list(env.episodes.stream_seeds) == before and set(seeds) <= set(env.episodes._cache)
    for seed in seeds:
        alone = make_eval_env("AHMMemory-v0", num_envs=1, stream_seeds=(seed,), **TINY)
        alone.reset(options={"stream_seeds": [seed]})
        for a, b in zip(env.episodes._cache[seed].features, alone.episodes._cache[seed].features):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stream seed"):
        prepare_features(env, [-1])


def test_controller_sees_masks_infos_and_episode_starts():
    seen = []

    class Recorder:
        name = "recorder"

        def reset(self, num_envs):
            seen.append(("reset", num_envs))

        def act(self, observation, action_mask=None, info=None, episode_start=None):
            seen.append((action_mask.shape, episode_start.copy(), info["ground_truth"]["stream_seed"].copy(),
                         info["chunk"].copy()))
            return nothing(observation, action_mask)

    # Forget episodes with this seed last 15 and 14 steps in the first round (they end after the last query).
    result = evaluate(Recorder(), "AHMMemory-Forget-v0", episodes=3, num_envs=2, seed=0, **TINY)
    steps = [e.steps for e in result.episodes]
    assert steps[0] != steps[1]
    assert [s for s in seen if s[0] == "reset"] == [("reset", 2), ("reset", 2)]  # two rounds
    acts = [s for s in seen if s[0] != "reset"]
    assert all(s[0] == (2, 2 * K + 12) for s in acts)
    assert len(acts) == max(steps[:2]) + steps[2]
    first_round, second_round = acts[: max(steps[:2])], acts[max(steps[:2]):]
    assert first_round[0][1].all() and (first_round[0][3] == 0).all() and second_round[0][1].all()
    seeds = evaluation_stream_seeds(0, 3)
    assert list(first_round[0][2]) == list(seeds[:2]) and list(second_round[0][2]) == [seeds[2]] * 2
    # The sub-env that ends first auto-resets: episode_start is True on its next observation, at chunk 0.
    short = int(np.argmin(steps[:2]))
    nxt = first_round[steps[short]]
    assert nxt[1][short] and not nxt[1][1 - short] and nxt[3][short] == 0
    assert not any(a[1].any() for a in first_round[1 : steps[short]])


def test_recorded_accesses_agree_with_the_op_counts():
    for fn in (write_and_read, write_and_drop):
        result = evaluate(fn, "AHMMemory-MQAR-v0", episodes=1, seed=2, record_accesses=True, **TINY)
        acc, ops = result.accesses, result.episodes[0].ops
        assert acc.writes.shape == (result.episodes[0].steps, K) and acc.stream_seed == result.episodes[0].stream_seed
        assert acc.writes.sum() == ops["writes"] and acc.moved_to_ltm.sum() == ops["moves_to_ltm"]
        assert acc.dropped.sum() == ops["drops"] and acc.ltm_reads.sum() == ops["retrievals_ltm"]
        assert acc.wm_reads.sum() == ops["retrievals_wm"] and acc.forgets.sum() == ops["forgets_wm"]
        assert (acc.wm_reads.sum(1) <= 1).all()
        image = access_image(acc)
        assert image.shape == (K + 1, len(acc.writes)) and (image[:K][acc.dropped.T] == 5).all()


def test_evaluation_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown environment id"):
        evaluate(nothing, "AHMMemory-Nope-v0", **TINY)
    with pytest.raises(ValueError, match="episodes must be a positive int"):
        evaluation_stream_seeds(0, 0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        evaluation_stream_seeds(-1, 2)


# ====================================================================== statistics
@pytest.mark.parametrize("df, table", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                       (30, 2.0423)])
def test_student_t_quantile_matches_the_table(df, table):
    assert student_t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)


def test_mean_ci95_by_hand():
    mean, half = mean_ci95([0.2, 0.4, 0.9])
    sd = math.sqrt(((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)
    assert mean_ci95([0.7, 0.7]) == (0.7, 0.0)
    one = mean_ci95([0.25])
    assert one[0] == 0.25 and math.isnan(one[1])  # one seed: the interval is undefined (documented as NaN)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_docstring_examples_run():
    import doctest

    import ahm.agents.benchmark

    assert doctest.testmod(ahm.agents.benchmark).failed == 0


def test_lengths_parse_and_format():
    assert [parse_length(x) for x in ("4K", "16k", "100K", "1M", "2048", "10M")] == \
        [4096, 16384, 102400, 1048576, 2048, 10 * 2**20]
    assert [format_length(x) for x in (4096, 102400, 1048576, 1000)] == ["4K", "100K", "1M", "1000"]
    for bad in ("11M", "0", "four"):
        with pytest.raises(ValueError, match="length"):
            parse_length(bad)


def test_table_formats_rows():
    row = BenchmarkRow("AHMMemory-v0", 4096, "lru", 0.5, math.nan, 1 / 9, 0.25, 12.0, 1024.0, 5e4, 2e4, 1, 4)
    table = benchmark_table([row]).splitlines()
    assert table[0].count("|") == 11 and len(table) == 3
    assert "| AHMMemory-v0 | 4K | lru | 0.500 | 0.111 | 0.25 | 12.0 | 1,024 | 50,000 | 20,000 |" == table[2]
    assert "0.500 ± 0.100" in benchmark_table([row.__class__(**{**row.__dict__, "accuracy_ci95": 0.1})])


# ====================================================================== the benchmark
def test_run_benchmark_with_controller_objects_writes_files(tmp_path):
    pytest.importorskip("matplotlib")
    config = BenchmarkConfig(tasks="AHMMemory-Copy-v0", lengths="1024", chunk_size=64, seeds=2, episodes=1,
                             controllers=[FunctionController(write_and_read, "wr"), FunctionController(nothing, "no")],
                             out_dir=str(tmp_path))
    rows = run_benchmark(config, log=None)
    assert [(r.task, r.length, r.controller, r.seeds, r.episodes) for r in rows] == \
        [("AHMMemory-Copy-v0", 1024, "wr", 2, 2), ("AHMMemory-Copy-v0", 1024, "no", 2, 2)]
    direct = [evaluate(write_and_read, "AHMMemory-Copy-v0", episodes=1, seed=s, **TINY).accuracy for s in (0, 1)]
    assert rows[0].accuracy_mean == pytest.approx(np.mean(direct))
    assert rows[0].accuracy_ci95 == pytest.approx(mean_ci95(direct)[1])
    assert rows[1].ops_per_1k_tokens == 0 and rows[0].ops_per_1k_tokens > 0
    for name in ("accuracy_AHMMemory-Copy-v0.png", "accesses_AHMMemory-Copy-v0.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="two controllers are named"):
        run_benchmark(BenchmarkConfig(tasks="AHMMemory-v0", lengths="1024", chunk_size=64, seeds=1, plots=False,
                                      controllers=[FunctionController(nothing, "x"), FunctionController(nothing, "x")],
                                      out_dir=str(tmp_path / "dup")), log=None)


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    config = BenchmarkConfig(tasks="AHMMemory-v0", lengths="1024", chunk_size=64, seeds=1,
                             controllers=[FunctionController(nothing, "no")], out_dir=str(tmp_path))
    rows = run_benchmark(config)
    assert len(rows) == 1 and math.isnan(rows[0].accuracy_ci95)
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png")) and (tmp_path / "benchmark.csv").exists()


def test_cli_help_and_bad_values(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--lengths" in out and "at most 10M" in out and "95% confidence intervals" in out
    for argv, message in ((["--lengths", "20M"], "between 1 and 10M"), (["--tasks", "Nope-v0"], "environment ids"),
                          (["--controllers", "nope"], "unknown controller"), (["--seeds", "0"], "--seeds")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_writes_csv_and_markdown(tmp_path):
    pytest.importorskip("ahm.agents.heuristics")
    rows = main(["--tasks", "AHMMemory-v0", "--lengths", "1024", "--chunk-size", "64", "--controllers",
                 "none,write_all", "--seeds", "2", "--episodes", "1", "--out-dir", str(tmp_path), "--no-plots"])
    assert [r.controller for r in rows] == ["none", "write_all"]
    with open(tmp_path / "benchmark.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS
    assert {"task", "length", "controller", "accuracy_mean", "accuracy_ci95", "ops_per_1k_tokens", "bytes_held",
            "tokens_per_s", "chance_accuracy"} <= set(CSV_COLUMNS)
    assert [(t["task"], int(t["length"]), t["controller"], int(t["seeds"])) for t in table] == \
        [("AHMMemory-v0", 1024, "none", 2), ("AHMMemory-v0", 1024, "write_all", 2)]
    assert float(table[0]["ops_per_1k_tokens"]) == 0.0 and float(table[1]["ops_per_1k_tokens"]) > 0
    assert float(table[0]["chance_accuracy"]) == pytest.approx(1 / 9)
    markdown = (tmp_path / "benchmark.md").read_text()
    assert markdown.strip() == benchmark_table(rows)
    assert markdown.splitlines()[0].startswith("| task | length | controller | accuracy (95% CI)")


def test_benchmark_loads_learned_checkpoints_by_path(tmp_path):
    learned = pytest.importorskip("ahm.agents.learned")
    from sb3_contrib import MaskablePPO

    from ahm.agents.sb3_adapter import SB3VecEnvAdapter

    env = SB3VecEnvAdapter(make_eval_env("AHMMemory-v0", num_envs=1, stream_seeds=(0,), **TINY))
    model = MaskablePPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu")
    path = learned.save_controller(tmp_path / "untrained_ppo", model)
    config = BenchmarkConfig(tasks="AHMMemory-v0", lengths="1024", chunk_size=64, seeds=1, plots=False,
                             controllers=[FunctionController(nothing, "no"), str(path)], out_dir=str(tmp_path / "out"))
    rows = run_benchmark(config, log=None)
    assert [r.controller for r in rows] == ["no", "untrained_ppo"]  # a checkpoint is named after its directory
    direct = evaluate(learned.load_controller(path), "AHMMemory-v0", episodes=1, seed=0, **TINY)
    assert rows[1].accuracy_mean == direct.accuracy
    assert rows[1].ops_per_1k_tokens == pytest.approx(direct.ops_per_1k_tokens)


def test_benchmark_of_every_heuristic_is_deterministic(tmp_path):
    pytest.importorskip("ahm.agents.heuristics")
    from ahm.agents import CONTROLLER_NAMES

    def run(out):
        config = BenchmarkConfig(tasks="AHMMemory-MQAR-v0", lengths="1024", chunk_size=64, seeds=2, episodes=2,
                                 num_envs=2, plots=False, out_dir=str(out))
        return run_benchmark(config, log=None)

    rows = run(tmp_path / "a")
    assert [r.controller for r in rows] == list(CONTROLLER_NAMES)
    timing = ("tokens_per_s", "tokens_per_s_with_resets")
    again = run(tmp_path / "b")  # heuristics are built afresh per evaluation: `random` repeats itself
    strip = [{k: v for k, v in r.__dict__.items() if k not in timing} for r in rows]
    assert strip == [{k: v for k, v in r.__dict__.items() if k not in timing} for r in again]
    by_name = {r.controller: r for r in rows}
    assert by_name["none"].ops_per_1k_tokens == 0 and by_name["none"].bytes_held == 0
    assert by_name["write_all"].ops_per_1k_tokens > by_name["oracle"].ops_per_1k_tokens > 0
    assert all(0 <= r.accuracy_mean <= 1 and r.accuracy_ci95 >= 0 and r.episodes == 4 for r in rows)


# ====================================================================== the user paths (issue 17)
def _untrained_ppo(path, env_spec=None):
    """A tiny saved SB3 controller (untrained MaskablePPO), optionally recording a training env."""
    learned = pytest.importorskip("ahm.agents.learned")
    from sb3_contrib import MaskablePPO

    from ahm.agents.sb3_adapter import SB3VecEnvAdapter

    env = SB3VecEnvAdapter(make_eval_env("AHMMemory-v0", num_envs=1, stream_seeds=(0,), **TINY))
    model = MaskablePPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu")
    return learned.save_controller(path, model, env_spec)


def _quiet(tmp_path, **kwargs):
    base = dict(tasks="AHMMemory-v0", lengths="1024", chunk_size=64, seeds=1, plots=False, progress=False,
                out_dir=str(tmp_path / "out"))
    return BenchmarkConfig(**{**base, **kwargs})


def test_a_learned_controller_runs_on_the_backbone_its_checkpoint_records(tmp_path):
    import shutil

    from ahm.envs.default_backbones import shipped_backbone_path

    # The text backbone (byte-level like passkey) answers nothing here where the default one answers all (measured:
    # write_all 0.0 against 1.0), so running on the wrong one would show.
    shutil.copytree(shipped_backbone_path("text"), tmp_path / "trained_on")
    path = _untrained_ppo(tmp_path / "ppo", {"env_id": "AHMMemory-v0", "env_kwargs": {"backbone": "trained_on"}})
    rows = run_benchmark(_quiet(tmp_path, controllers=["write_all", str(path)]), log=None)
    # the relative path recorded at training is found beside the checkpoint
    assert [(r.controller, r.backbone) for r in rows] == [("write_all", "default"),
                                                           ("ppo", str(tmp_path / "trained_on"))]
    direct = evaluate(str(path), "AHMMemory-v0", episodes=1, seed=0, backbone=str(tmp_path / "trained_on"), **TINY)
    assert rows[1].accuracy_mean == direct.accuracy and rows[1].bytes_held == direct.bytes_held
    assert rows[0].accuracy_mean == 1.0  # write_all on the default backbone
    table = benchmark_table(rows).splitlines()
    assert table[0].endswith("| backbone |") and table[3].endswith(f"| {tmp_path / 'trained_on'} |")
    # --backbone overrides what the checkpoint records, for every controller
    shipped = str(shipped_backbone_path("passkey"))
    again = run_benchmark(_quiet(tmp_path, controllers=["write_all", str(path)], backbone=shipped,
                                 out_dir=str(tmp_path / "override")), log=None)
    assert [r.backbone for r in again] == [shipped, shipped]
    assert again[0].accuracy_mean == rows[0].accuracy_mean
    missing = _untrained_ppo(tmp_path / "lost", {"env_id": "AHMMemory-v0", "env_kwargs": {"backbone": "nowhere"}})
    with pytest.raises(ValueError, match="pass --backbone"):
        run_benchmark(_quiet(tmp_path, controllers=[str(missing)]), log=None)


def test_labels_name_checkpoints_that_share_a_directory_name(tmp_path):
    first = _untrained_ppo(tmp_path / "a" / "controller")
    second = _untrained_ppo(tmp_path / "b" / "controller")
    with pytest.raises(SystemExit, match="two controllers are named 'controller'.*a=path"):
        main(["--tasks", "AHMMemory-v0", "--lengths", "1024", "--chunk-size", "64", "--seeds", "1", "--no-plots",
              "--no-progress", "--controllers", f"{first},{second}", "--out-dir", str(tmp_path / "out")])
    rows = main(["--tasks", "AHMMemory-v0", "--lengths", "1024", "--chunk-size", "64", "--seeds", "1", "--no-plots",
                 "--no-progress", "--controllers", f"first={first},second={second},fifo=write_all",
                 "--out-dir", str(tmp_path / "out")])
    assert [r.controller for r in rows] == ["first", "second", "fifo"]
    assert rows[0].accuracy_mean == rows[1].accuracy_mean  # the same untrained weights (seed 0)
    assert rows[2].ops_per_1k_tokens > 0 and rows[0].cell_id != rows[1].cell_id != ""


def test_module_attr_names_a_controller_in_user_code(tmp_path):
    code = tmp_path / "my_controllers.py"
    code.write_text("import numpy as np\n\n"
                    "def keep_nothing(observation, action_mask):\n"
                    "    return np.zeros((len(observation['wm_occupied']), 5), dtype=np.int64)\n")
    rows = run_benchmark(_quiet(tmp_path, controllers=[f"{code}:keep_nothing", "mine=ahm.agents.heuristics:"
                                                       "WriteAllController"]), log=None)
    assert [r.controller for r in rows] == ["keep_nothing", "mine"]
    assert rows[0].ops_per_1k_tokens == 0 and rows[0].cell_id == ""  # user code: never reused
    assert rows[1].ops_per_1k_tokens > 0
    with pytest.raises(ValueError, match="cannot load"):
        run_benchmark(_quiet(tmp_path, controllers=[f"{code}:nope"]), log=None)


def test_an_interrupted_benchmark_resumes_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    import ahm.agents.benchmark as bench

    def run(out):
        config = _quiet(tmp_path, tasks="AHMMemory-v0,AHMMemory-Copy-v0", controllers="none,write_all", seeds=2,
                        out_dir=str(out))
        return run_benchmark(config, log=None)

    def table(path):
        timing = set(bench.TIMING_COLUMNS)
        with open(path) as f:
            return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]

    whole = run(tmp_path / "whole")
    assert len(whole) == 4
    csv_path = tmp_path / "part" / "benchmark.csv"
    run(tmp_path / "part")
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:2]) + lines[2][:20])  # header, the first cell, a row cut short
    evaluated = []
    real = bench.evaluate_seeds
    monkeypatch.setattr(bench, "evaluate_seeds", lambda c, *a, **k: evaluated.append(c.name) or real(c, *a, **k))
    resumed = run(tmp_path / "part")
    assert evaluated == ["write_all", "none", "write_all"]  # the 3 missing cells, each seed's episodes together
    assert table(csv_path) == table(tmp_path / "whole" / "benchmark.csv")
    strip = [{k: v for k, v in r.__dict__.items() if k not in bench.TIMING_COLUMNS} for r in resumed]
    assert strip == [{k: v for k, v in r.__dict__.items() if k not in bench.TIMING_COLUMNS} for r in whole]
    evaluated.clear()
    run(tmp_path / "part")  # everything is there: nothing runs
    assert evaluated == []
    run_benchmark(_quiet(tmp_path, tasks="AHMMemory-v0", controllers="none", seeds=2, resume=False,
                         out_dir=str(tmp_path / "part")), log=None)
    assert evaluated == ["none"]  # --no-resume evaluates again; the other cells' rows stay in the CSV
    assert len(table(csv_path)) == 4


def test_each_cell_is_in_the_csv_as_soon_as_it_finishes(tmp_path, monkeypatch):
    import ahm.agents.benchmark as bench

    seen = []
    real = bench.evaluate_seeds

    def spy(controller, *args, **kwargs):
        seen.append(len((tmp_path / "out" / "benchmark.csv").read_text().splitlines()))
        return real(controller, *args, **kwargs)

    monkeypatch.setattr(bench, "evaluate_seeds", spy)
    run_benchmark(_quiet(tmp_path, lengths="1024,2048", controllers="none"), log=None)
    assert seen == [1, 2]  # header; header + the first cell


def test_benchmark_progress_bar_counts_cells(tmp_path, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    run_benchmark(_quiet(tmp_path, lengths="1024,2048", controllers="none", progress=True), log=None)
    assert "benchmark" in err.getvalue() and "2/2" in err.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    run_benchmark(_quiet(tmp_path, lengths="1024", controllers="none", out_dir=str(tmp_path / "q")), log=None)
    assert quiet.getvalue() == ""


def test_ppo_progress_bar_counts_timesteps(monkeypatch):
    import io

    learned = pytest.importorskip("ahm.agents.learned")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    config = learned.ControllerTrainConfig(num_envs=2, total_timesteps=32, n_steps=8, batch_size=16, eval_freq=0,
                                           env_kwargs=dict(TINY), progress=True)
    model = learned.train_controller(config)
    assert model.num_timesteps == 32 and "32/32" in err.getvalue()


def test_overlapping_lines_get_distinct_markers_and_offsets(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    import ahm.agents.benchmark as bench

    names = [f"c{i}" for i in range(9)]
    rows = [BenchmarkRow("AHMMemory-v0", n, c, 0.0 if i < 7 else 1.0, 0.0, 1 / 9, 0.0, 1.0, 1.0, 1.0, 1.0, 3, 3)
            for i, c in enumerate(names) for n in (4096, 16384)]
    positions = []
    real = plt.Axes.errorbar
    # every controller's x positions, as drawn
    plt.Axes.errorbar = lambda self, x, y, **k: positions.append((tuple(x), k["marker"])) or real(self, x, y, **k)
    try:
        (path,) = bench._plots(rows, {}, tmp_path, print)
    finally:
        plt.Axes.errorbar = real
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert len({x for x, _ in positions}) == 9 and len({m for _, m in positions}) == 9
    spread = [math.log10(x[0] / 4096) for x, _ in positions]
    assert max(spread) - min(spread) <= 0.3 + 1e-9  # points stay nearer their length than the next one (0.6)
