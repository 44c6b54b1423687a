"""How well a backbone's keep head tells the chunks a later query needs from the rest, on streams no training saw.

The keep head (``AHMConfig.keep_head``, trained by ``train_lm.py --keep-weight``) predicts at every chunk boundary
whether the chunk's entry will be needed later; controllers observe the prediction as ``keep_score``. This script
streams held-out task streams through the backbone and reports the area under the ROC curve (AUC: the chance that
a needed chunk scores above another chunk; 0.5 is chance) of the head's score against the hindsight labels, over
all chunks and against each other kind of chunk alone (decoys, stale assignments, noise, filler): the decoys are
the ones that only context (the stream's opening cue) tells apart.

    python benchmarks/keep_head.py --backbone runs/recall_keep_export --tasks decoy,forget --lengths 16384,100000

Stream seeds start at --seed-base (default 1,000,000 + 1,000 x task index); the supervised phase draws 62-bit
random stream seeds, so these are streams it did not see.

``--probe N`` asks instead what the backbone's features carry at the boundary of each Decoy fact chunk (its last
hidden state and the env's ``ssm_features``, standardised): probes (logistic regression, and an MLP of 128) are
fitted on the first 3/4 of N held-out episodes at the first of --lengths and scored (AUC) on the last 1/4, for
three labels: the fact's marker, the stream's cue (which kind will be asked), and target vs decoy (the two agree).
A head can tell a target from a decoy only if both the marker and the cue are there.

    python benchmarks/keep_head.py --backbone runs/keep_export --probe 400 --lengths 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

from ahm.agents.behaviour import CHUNK_KINDS, chunk_kinds  # noqa: E402
from ahm.backbone.checkpoint import load_ahm_checkpoint  # noqa: E402
from ahm.envs.episode_scoring import Annotations  # noqa: E402
from ahm.envs.streams import make_task  # noqa: E402


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney U statistic over n_p n_n)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


@torch.no_grad()
def keep_scores(model, tokens: np.ndarray) -> np.ndarray:
    """(n,) the keep head's probability at each chunk boundary of one stream."""
    c = model.config.chunk_size
    x = torch.from_numpy(tokens.astype(np.int64))[None]
    state, out = None, []
    for s in range(0, x.shape[1], c):
        features, state = model.chunk_features(x[:, s : s + c], state)
        out.append(torch.sigmoid(features.boundary.keep_logit)[0].item())
    return np.asarray(out)


def fit_probe(x: torch.Tensor, y: np.ndarray, train: np.ndarray, hidden: int) -> np.ndarray:
    """Scores of a probe (logistic regression, or an MLP of ``hidden`` units) fitted on the ``train`` rows."""
    torch.manual_seed(0)
    net = (torch.nn.Linear(x.shape[1], 1) if hidden == 0 else
           torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1)))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    target = torch.tensor(y[train], dtype=torch.float32)
    for _ in range(1500):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x[train])[:, 0], target).backward()
        opt.step()
    with torch.no_grad():
        return net(x)[:, 0].numpy()


def probe(model, length: int, episodes: int, seed_base: int) -> list[list[object]]:
    """What the features at Decoy's fact boundaries carry: marker, cue, target (module doc)."""
    from ahm.envs.mqar import KIND_MARKERS

    c = model.config.chunk_size
    feats, marker, cue, target, episode = [], [], [], [], []
    with torch.no_grad():
        for e in range(episodes):
            stream = make_task("decoy", length, c, seed_base + e)
            x = torch.from_numpy(stream.tokens(0, length).astype(np.int64))[None]
            state, at_boundary = None, []
            for s in range(0, length, c):
                features, state = model.chunk_features(x[:, s : s + c], state)
                at_boundary.append(torch.cat([features.hidden[0, -1], features.boundary.ssm_features[0]]).float())
            for fact in stream.facts:
                feats.append(at_boundary[fact.chunk])
                marker.append(fact.tokens[0] == KIND_MARKERS[0])
                cue.append(stream.asked_marker == KIND_MARKERS[0])
                target.append(fact.kind == "target")
                episode.append(e)
    x = torch.stack(feats)
    ep = np.asarray(episode)
    train, test = ep < (3 * episodes) // 4, ep >= (3 * episodes) // 4
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    rows: list[list[object]] = []
    for name, labels in (("marker", marker), ("cue", cue), ("target vs decoy", target)):
        y = np.asarray(labels)
        cells: list[object] = [name, int(train.sum()), int(test.sum())]
        for hidden in (0, 128):
            p = fit_probe(x, y, train, hidden)
            cells.append(f"{auc(p[test & y], p[test & ~y]):.3f}")
        rows.append(cells)
    return rows


def main(argv: list[str] | None = None) -> list[list[object]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="an AHM checkpoint folder whose model has a keep head")
    p.add_argument("--tasks", default="decoy,forget")
    p.add_argument("--lengths", default="16384,100000")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--seed-base", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe", type=int, default=0, help="N > 0: probe the features of N Decoy episodes instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load_ahm_checkpoint(args.backbone)
    model.eval()
    if args.probe > 0:
        length = int(args.lengths.split(",")[0])
        rows = probe(model, length, args.probe, args.seed_base)
        print(f"Probes on the features at Decoy's fact boundaries, {length:,}-token streams, held-out episodes")
        print(markdown_table(["label", "train facts", "test facts", "AUC linear", "AUC MLP"], rows))
        return rows
    if not model.config.keep_head:
        sys.exit(f"keep_head.py: the model in {args.backbone!r} has no keep head; train one with --keep-weight")
    rows: list[list[object]] = []
    for ti, task in enumerate(args.tasks.split(",")):
        for length in (int(n) for n in args.lengths.split(",")):
            t0 = time.perf_counter()
            scores, labels, kinds = [], [], []
            for e in range(args.episodes):
                stream = make_task(task, length, model.config.chunk_size, args.seed_base + 1000 * ti + e)
                scores.append(keep_scores(model, stream.tokens(0, length)))
                labels.append(Annotations.of_stream(stream).keep_labels() > 0)
                kinds.append(chunk_kinds(stream))
            s, y, k = np.concatenate(scores), np.concatenate(labels), np.concatenate(kinds)
            cells: list[object] = [task, f"{length:,}", int(y.sum()), f"{auc(s[y], s[~y]):.3f}"]
            for kind in ("decoy", "stale", "noise", "filler"):
                other = ~y & (k == CHUNK_KINDS.index(kind))
                cells.append("-" if not other.any() else f"{auc(s[y], s[other]):.3f}")
            cells += [f"{s[y].mean():.3f}", f"{s[~y].mean():.3f}", f"{time.perf_counter() - t0:.0f}"]
            rows.append(cells)
            print(f"{task} {length}: done", file=sys.stderr, flush=True)
    print(markdown_table(["task", "tokens", "needed chunks", "AUC all", "vs decoy", "vs stale", "vs noise",
                          "vs filler", "mean score needed", "mean score other", "s"], rows))
    return rows


if __name__ == "__main__":
    main()
