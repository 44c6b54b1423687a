"""The supervised phase's typed config (``train_lm.py``'s command line) and the model it describes.

Every field's attribute docstring is its ``--help`` (:func:`ahm.cli.parse_config`). Sequence
fields are typed tuples (``tuple[int, ...]``, ``tuple[str, ...]``), written comma-separated on
the command line (``--lengths 1K,2K,4K``); from Python a tuple, a list, or the comma-separated
string of earlier versions is accepted and normalised to the tuple.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ahm.backbone import AHMConfig, AHMModel, MambaConfig
from ahm.backbone.config import parse_int

__all__ = ["TrainLMConfig", "build_model", "command_line", "int_tuple", "str_tuple", "parse_task_kwargs",
           "saved_field"]


# ====================================================================== typed sequence fields
def str_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` -> ``("a", "b")`` (blank entries dropped)."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(str(p).strip() for p in parts if str(p).strip())


def int_tuple(value: str | Sequence[int | str], name: str, minimum: int = 1,
              allow_empty: bool = False) -> tuple[int, ...]:
    """``"1K,2048"`` or ``[1024, 2048]`` -> ``(1024, 2048)``, each >= ``minimum``; errors name ``--name``."""
    parts = str_tuple(value) if isinstance(value, str) else tuple(value)
    try:
        values = tuple(parse_int(x) if isinstance(x, str) else int(x) for x in parts)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--{name} must be comma-separated integers, got {value!r}") from err
    if (not values and not allow_empty) or any(v < minimum for v in values):
        raise ValueError(f"--{name} must be comma-separated integers >= {minimum}, got {value!r}")
    return values


def parse_task_kwargs(value: str | Sequence[str]) -> dict[str, Any]:
    """Task keyword arguments: ``key=value`` pairs (values JSON literals; a bare word is a string), or, as
    before, one JSON object. ``("variant=repeated", "n_keys=4")`` -> ``{"variant": "repeated", "n_keys": 4}``.

    The command line splits at commas, so a part without ``=`` continues the pair before it (a JSON list
    value: ``sizes=[1,2]``) and parts that start a JSON object are joined back into it.
    """
    parts = [value] if isinstance(value, str) else [str(p) for p in value]
    text = ",".join(p.strip() for p in parts).strip()
    if not text:
        return {}
    if text.startswith("{"):  # the JSON-object form of earlier versions
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--task-kwargs must be key=value pairs or a JSON object, got {value!r} ({err})") from err
        if not isinstance(obj, dict):
            raise ValueError(f"--task-kwargs must be key=value pairs or a JSON object, got {value!r}")
        return obj
    pairs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if "=" in part or not pairs:
            pairs.append(part)
        else:
            pairs[-1] += "," + part
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--task-kwargs must be key=value pairs like variant=repeated, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()  # a bare word: variant=repeated
    return out


# ====================================================================== the config
@dataclass
class TrainLMConfig:
    """Train an AHM model (backbone + memory projections + codec + readout) on text or task streams."""

    source: str = "text"
    """'text' (byte-level language modelling) or 'tasks' (the streams of ahm.envs, with answers)."""
    model: str = "ahm"
    """'ahm' (the backbone with hierarchical memory and a controller) or a comparison model of
    ahm.backbone.baselines (mamba, transformer, longformer, bigbird, s4d, moe_mamba, jamba, smr, lmn), trained on
    the same data with the same budget (no memory options apply to those)."""
    model_size: str = "0.1M"
    """Comparison models: the parameter budget, '0.1M' or '1M' (or a count)."""
    model_options: tuple[str, ...] = ()
    """Comparison models: config fields as key=value pairs (JSON values), e.g. 'window=256,n_experts=4'."""
    corpus: str = "stdlib"
    """Text corpus: 'stdlib' (the Python standard library's sources, built in) or a path (see ahm.envs.text_corpus)."""
    max_documents: int = 0
    """Use only the first N documents of the corpus (0: all)."""
    tasks: tuple[str, ...] = ("passkey",)
    """Task families for --source tasks, comma-separated (passkey, mqar, forget, copy, decoy)."""
    task_kwargs: tuple[str, ...] = ()
    """Keyword arguments for every task stream, comma-separated key=value pairs whose values are JSON literals
    (a bare word is a string), e.g. 'variant=repeated,n_keys=4'; a JSON object ('{"variant": "repeated"}') is
    also accepted."""
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    """Task sequence lengths (tokens) of the curriculum, comma-separated (K = 1024)."""
    curriculum: str = "grow"
    """'grow' (start short, add the next length once answers are right) or 'mixed' (all lengths from the start)."""
    controller: str = "write_all"
    """Who decides memory operations: a heuristic (none, random, write_all, lru, surprise, dedupe), 'oracle'
    (task streams only), or the path of a learned controller."""
    seq_len: int = 8192
    """Text: tokens per training sequence (state and memory carried across its windows)."""
    window: int = 2048
    """Tokens per truncated-backpropagation window (one optimisation step); a multiple of chunk_size."""
    chunk_size: int = 256
    """Tokens per chunk (memory operations happen at chunk boundaries)."""
    d_model: int = 64
    """Width of the backbone."""
    n_layer: int = 2
    """Number of Mamba blocks."""
    d_state: int = 16
    """SSM state size per channel."""
    key_dim: int = 32
    """Memory key / query width."""
    value_dim: int = 0
    """Memory value width (0: d_model)."""
    wm_slots: int = 8
    """Working-memory slots."""
    ltm_capacity: int = 512
    """Long-term memory entries."""
    ltm_codec: str = "int8"
    """Long-term memory codec: none, int8, pq, autoencoder, hash."""
    integration: str = "readout"
    """'readout' (memory enters the answer / logits) or 'state' (gated into the SSM input)."""
    level_readout: str = ""
    """How the integration reads the two memory levels: 'shared' (one projection of the WM read + the LTM read) or
    'separate' (columns of its own per level); '': 'shared' for a fresh model, the checkpoint's own with
    --init-from. Given with --init-from, the loaded model is converted (separate -> shared keeps the WM's columns)."""
    integration_init: float = 1.0
    """Scale of the random initialisation of the memory integration projection (0: zero, AHMModel's default)."""
    write_recency_init: float = 0.1
    """Initial recency decay (per token) of the write pooling (AHMModel's default 0.1: the last ~10 tokens share
    the write). The recall tasks' facts are their chunk's last 2-3 tokens among random value tokens: 1.0 puts
    58% of the write on the last token and 21% on the one before from the start."""
    embedding_init: float = 0.02
    """Std of the token embeddings' normal initialisation (tied with the LM head; 0.02 is Mamba's). The
    8,192-token recall tasks need a larger one (0.125 for the shipped recall backbone): their answer is copied from
    memory through the tied head, whose logit margin scales with the embeddings' squared norm."""
    batch: int = 8
    """Sequences per step (per process under torchrun)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over the first 5% of steps, cosine after)."""
    weight_decay: float = 0.1
    """AdamW weight decay, on weight matrices (embeddings included) only: not on biases and norm weights, nor
    on the SSM's ``A_log`` / ``D`` (the reference recipe; :mod:`ahm.backbone.optim`)."""
    lm_weight: float = 1.0
    """Weight of the next-token loss."""
    answer_weight: float = 1.0
    """Weight of the answer loss at query boundaries (task streams)."""
    keep_weight: float = 0.0
    """Weight of the keep head's loss (task streams): > 0 gives the model a keep head (a model loaded with
    --init-from without one gets a fresh head), trained on hindsight labels (1 where a later query asks for the
    fact ending in the chunk), whose prediction controllers observe as 'keep_score'. 0: no head."""
    ask_weight: float = 0.0
    """Weight of the ask head's loss (task streams), an auxiliary objective: > 0 gives the model an ask head (a
    model loaded with --init-from gets a fresh one) trained to name, at every boundary, the first token of the fact
    the next query asks for (on Decoy, the asked kind's marker, which only the stream's opening cue tells), so the
    backbone carries it. Controllers do not observe it. 0: no head."""
    max_steps: int = 300
    """Optimisation steps (windows)."""
    minutes: float = 0.0
    """Wall-clock budget (0: none); a run stopped by it cannot be resumed bit-exactly (use max_steps for that)."""
    seed: int = 0
    """Seed of the initialisation (torch) and of the data (numpy; rank r uses seed + r)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    out_dir: str = "checkpoints/lm"
    """Where checkpoints (model.safetensors, ahm_model.json, optimizer.safetensors, trainer.json) and logs go."""
    init_from: str = ""
    """Start from the weights of this AHM checkpoint (save_ahm_checkpoint folder, e.g. an earlier run's export or
    step_<N>/, or an earlier run's out_dir: its latest checkpoint) instead of a fresh initialisation; its model
    settings replace the ones above."""
    export_dir: str = ""
    """Also write the final model alone (model.safetensors + ahm_model.json, with this command recorded) here,
    e.g. envs/checkpoints/<task> to ship it as the env's default backbone."""
    checkpoint_every: int = 50
    """Save a checkpoint after the first sequence batch that ends at or after every N steps (and at the end)."""
    resume: bool = False
    """Continue the run saved in out_dir exactly where it stopped."""
    eval: bool = False
    """Only evaluate the checkpoint in out_dir (no training)."""
    eval_contexts: tuple[int, ...] = (8192, 65536, 0)
    """Text evaluation: context lengths in bytes (0: the whole document), comma-separated."""
    eval_bytes: int = 100_000
    """Text evaluation: held-out bytes per context length."""
    eval_lengths: tuple[int, ...] = ()
    """Task evaluation: sequence lengths, comma-separated ('' : the curriculum's lengths)."""
    eval_episodes: int = 16
    """Task evaluation: episodes per length."""
    tensorboard: bool = True
    """Write TensorBoard logs to out_dir/tb."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "window", "chunk_size", "d_model", "n_layer", "d_state", "key_dim", "wm_slots",
                     "ltm_capacity", "batch", "max_steps", "checkpoint_every", "eval_bytes", "eval_episodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("value_dim", "max_documents", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if self.level_readout not in ("", "shared", "separate"):
            raise ValueError(f"--level-readout must be '', 'shared' or 'separate', got {self.level_readout!r}")
        if self.source not in ("text", "tasks"):
            raise ValueError(f"--source must be 'text' or 'tasks', got {self.source!r}")
        if not (self.embedding_init > 0 and self.write_recency_init > 0):
            raise ValueError(f"--embedding-init and --write-recency-init must be > 0, got {self.embedding_init!r} "
                             f"and {self.write_recency_init!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.lm_weight >= 0 and self.answer_weight >= 0
                and self.keep_weight >= 0 and self.ask_weight >= 0 and self.minutes >= 0):
            raise ValueError("--lr must be > 0; --weight-decay, --lm-weight, --answer-weight, --keep-weight, "
                             "--ask-weight, --minutes >= 0")
        for name in ("keep", "ask"):
            if getattr(self, f"{name}_weight") > 0 and self.source != "tasks":
                raise ValueError(f"--{name}-weight trains the {name} head on the task streams' hindsight labels; "
                                 "text has none: use --source tasks")
        if self.window % self.chunk_size:
            raise ValueError(f"--window ({self.window}) must be a multiple of --chunk-size ({self.chunk_size})")
        if self.source == "text" and self.controller == "oracle":
            raise ValueError("--controller oracle reads task ground truth; text has none: pick a heuristic")
        # Sequence fields: typed tuples (a comma-separated str or a list, as earlier versions took, is converted).
        self.tasks = str_tuple(self.tasks)
        self.lengths = int_tuple(self.lengths, "lengths")
        self.eval_contexts = int_tuple(self.eval_contexts, "eval-contexts", minimum=0)
        self.eval_lengths = int_tuple(self.eval_lengths, "eval-lengths", allow_empty=True)
        self.task_kwargs = tuple(k + "=" + json.dumps(v, separators=(",", ":"))
                                 for k, v in parse_task_kwargs(self.task_kwargs).items())

    @property
    def task_kwargs_dict(self) -> dict[str, Any]:
        """``task_kwargs`` as the keyword arguments of :func:`ahm.envs.streams.make_task`."""
        return parse_task_kwargs(self.task_kwargs)

    # The settings that define the model; a resumed run must match them.
    MODEL_FIELDS = ("d_model", "n_layer", "d_state", "key_dim", "value_dim", "chunk_size", "wm_slots",
                    "ltm_capacity", "ltm_codec", "integration", "level_readout", "integration_init", "embedding_init",
                    "write_recency_init", "keep_weight", "ask_weight")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainLMConfig)}


def saved_field(name: str, saved: dict[str, Any]) -> Any:
    """Field ``name`` of a config saved as JSON (``asdict`` in a trainer.json) in this version's type: a run
    saved before the field existed has its default; a sequence field, saved as a list (or, by earlier versions,
    as a comma-separated string), is normalised as ``TrainLMConfig`` normalises it."""
    value = saved.get(name, _DEFAULTS.get(name))
    if isinstance(_DEFAULTS.get(name), tuple) and isinstance(value, (str, list)):
        try:
            return getattr(dataclasses.replace(TrainLMConfig(), **{name: value}), name)
        except ValueError:
            return value  # not a valid value now: it differs from any valid one
    return value


def build_model(cfg: TrainLMConfig, vocab_size: int, level_readout: str | None = None) -> AHMModel:
    """A fresh AHM model for ``cfg`` (initialised from torch's global generator); ``level_readout`` overrides
    ``cfg.level_readout`` (default ``shared``)."""
    backbone = MambaConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer, d_state=cfg.d_state)
    model = AHMModel(AHMConfig(backbone, chunk_size=cfg.chunk_size, wm_slots=cfg.wm_slots,
                               ltm_capacity=cfg.ltm_capacity, key_dim=cfg.key_dim, value_dim=cfg.value_dim or None,
                               ltm_codec=cfg.ltm_codec, integration=cfg.integration,
                               level_readout=level_readout or cfg.level_readout or "shared",
                               keep_head=cfg.keep_weight > 0, ask_head=cfg.ask_weight > 0))
    # AHMModel starts its integration projection at zero (an untrained AHM model is its backbone LM). Trained
    # from scratch, that zero is a saddle: the projection learns only once the stored values carry the answer,
    # and the backbone learns to store it only through the projection. A small random start breaks the tie
    # (measured on passkey: with the zero start the answer stayed at chance for 300 steps).
    with torch.no_grad():
        proj = model.integration.proj.weight
        proj.normal_(0.0, cfg.integration_init / math.sqrt(proj.shape[1]))
        if cfg.embedding_init != 0.02:  # keep torch's generator stream (and so every earlier run) unchanged at 0.02
            model.backbone.embedding.weight.normal_(0.0, cfg.embedding_init)
    model.set_write_recency(cfg.write_recency_init)
    return model


def command_line(cfg: TrainLMConfig) -> str:
    """The ``train_lm.py`` command that reproduces ``cfg`` (its fields that differ from the defaults)."""
    default = TrainLMConfig()
    parts = ["python train_lm.py"]
    for name, value in asdict(cfg).items():
        if name in ("export_dir", "out_dir", "progress", "resume", "eval") or value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, tuple):  # a sequence field: comma-separated, as parse_config reads it
            parts.append(f"{flag} {shlex.quote(','.join(str(v) for v in value))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)
