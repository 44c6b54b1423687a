"""Vector codecs of the compressed long-term memory (proposal Sec. 2.1, item 3).

A codec stores a vector ``x`` (d,) as a few small tensors, its *code fields*
(:class:`CodeField`), reconstructs it (``decode``), reports the bytes one vector
costs, and searches stored codes by inner product with queries. The long-term
memory keeps keys and values each through a codec of the same kind.

| name | fields per vector | bytes (d = 32) | search |
| --- | --- | --- | --- |
| ``none`` | d float32 | 4 d (128) | exact, :func:`ahm.kernels.retrieval.topk_similarity` |
| ``int8`` | d int8 + one float32 scale | d + 4 (36) | exact over ``scale * codes``, ``topk_similarity_int8`` |
| ``pq`` | d / s uint8 (s dims per sub-vector) | d / s (8) | exact over the reconstructions |
| ``autoencoder`` | d / r float16 latent | 2 d / r (16) | exact over the reconstructions (linear decoder) |
| ``hash`` | n_bits sign bits + a float16 norm | n_bits / 8 + 2 (18) | Hamming distance |

"Exact" means: the returned top-k are the true top-k inner products between the
queries and the *decoded* vectors (tested against brute force). ``pq`` is
trained by k-means per sub-space, with faiss when the ``ann`` extra is installed
and a built-in k-means otherwise (``pq_backend``). ``autoencoder`` is a small
MLP encoder with a linear decoder, trained with :meth:`VectorCodec.reconstruction_loss`
(in the backbone phase) or :meth:`AutoencoderCodec.fit`; its decoder being linear,
``q . decode(z) = (W^T q) . z + q . b``, so search runs in the latent space and is
still exact. ``hash`` keeps the signs of ``n_bits`` random projections
(Charikar, 2002): the Hamming distance h estimates the angle, ``cos(pi h / n_bits)``
is the reported score, and decoding returns the norm times the normalised
back-projection of the signs (a coarse reconstruction).

Search over m stored vectors never builds a (q x m) score matrix: codes are
decoded ``_SEARCH_BLOCK`` at a time and the kernel's running top-k is merged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.retrieval import dequantize_int8, quantize_int8, topk_similarity, topk_similarity_int8
from .config import dataclass_from_dict

__all__ = [
    "CODECS",
    "CodeField",
    "CodecOptions",
    "VectorCodec",
    "NoneCodec",
    "Int8Codec",
    "PQCodec",
    "AutoencoderCodec",
    "HashCodec",
    "make_codec",
    "faiss_available",
    "import_faiss",
]

# Stored vectors decoded per block of a search: a (block x d) float32 block of
# 65536 x 64 is 16 MiB, and the kernel walks it in its own smaller blocks.
_SEARCH_BLOCK = 65536

FAISS_MISSING = "faiss is not installed; install the 'ann' extra: pip install 'ahm-ssm[ann]'"


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one thread (restoring the count after).

    For loops of tiny ops (autoencoder training steps): waking the thread pool costs
    more than the work, and on a loaded 2-core machine each step took ~60 ms on two
    threads against ~1 ms on one (measured; the same effect as in ahm.kernels.scan_cpu).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def import_faiss() -> Any:
    """Import faiss lazily; raises ImportError saying how to install it."""
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError as err:
        raise ImportError(FAISS_MISSING) from err
    return faiss


def faiss_available() -> bool:
    """Whether faiss can be imported (the ``ann`` extra is installed)."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


class CodeField(NamedTuple):
    """One tensor a codec stores per vector: ``(n, *shape)`` of ``dtype`` for n vectors."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class CodecOptions:
    """Parameters of the codecs; each codec reads only its own."""

    pq_subvector_dim: int = 4
    """``pq``: dimensions per sub-vector; the vector dimension must be a multiple. One byte per sub-vector."""
    pq_bits: int = 8
    """``pq``: bits per sub-vector code, 1..8 (2**bits centroids per sub-space)."""
    pq_backend: str = "auto"
    """``pq`` training: ``"faiss"`` (the ``ann`` extra), ``"builtin"`` k-means, or ``"auto"`` (faiss if installed)."""
    pq_iters: int = 25
    """``pq``: k-means iterations (faiss's default is 25)."""
    ae_latent_dim: int | None = None
    """``autoencoder``: latent width; None means ``max(1, d // 4)`` (a 8x smaller float16 code)."""
    ae_hidden_dim: int | None = None
    """``autoencoder``: encoder hidden width; None means ``2 d``."""
    hash_bits: int | None = None
    """``hash``: sign bits per vector, a multiple of 8; None means ``4 d``."""
    seed: int = 0
    """Seed of the codec's own randomness (hash projections, autoencoder init, k-means init)."""

    def __post_init__(self) -> None:
        if not isinstance(self.pq_subvector_dim, int) or self.pq_subvector_dim < 1:
            raise ValueError(f"CodecOptions.pq_subvector_dim must be a positive int, got {self.pq_subvector_dim!r}")
        if not isinstance(self.pq_bits, int) or not 1 <= self.pq_bits <= 8:
            raise ValueError(f"CodecOptions.pq_bits must be an int in 1..8 (codes are uint8), got {self.pq_bits!r}")
        if self.pq_backend not in ("auto", "faiss", "builtin"):
            raise ValueError(f"CodecOptions.pq_backend must be 'auto', 'faiss' or 'builtin', got {self.pq_backend!r}")
        if not isinstance(self.pq_iters, int) or self.pq_iters < 1:
            raise ValueError(f"CodecOptions.pq_iters must be a positive int, got {self.pq_iters!r}")
        for name in ("ae_latent_dim", "ae_hidden_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"CodecOptions.{name} must be None or a positive int, got {value!r}")
        if self.hash_bits is not None and (not isinstance(self.hash_bits, int) or self.hash_bits < 8
                                           or self.hash_bits % 8):
            raise ValueError(f"CodecOptions.hash_bits must be None or a positive multiple of 8, got {self.hash_bits!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecOptions:
        return dataclass_from_dict(cls, data)


def _merge_topk(best: tuple[Tensor, Tensor] | None, scores: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge a block's top-k (scores, global indices) (b, q, k) into the running best."""
    if best is None:
        return scores, idx
    scores, idx = torch.cat([best[0], scores], -1), torch.cat([best[1], idx], -1)
    top, order = torch.topk(scores, k, dim=-1)
    return top, torch.gather(idx, -1, order)


def _finish(best: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    assert best is not None, "a search needs m >= 1 stored vectors"
    return best[0], torch.where(torch.isneginf(best[0]), torch.full_like(best[1], -1), best[1])


def blocked_topk(queries: Tensor, m: int, key_block, k: int, mask: Tensor | None,
                 block: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact top-k of ``queries`` (b, q, d') against keys produced block by block.

    ``key_block(s, e)`` returns float keys (b, e - s, d'); each block goes through
    :func:`topk_similarity` and the per-block results are merged, so at most
    ``block`` keys are decoded at a time. Returns scores / indices (b, q, k) with
    ``-inf`` / ``-1`` where fewer than k keys are valid. ``block`` defaults to ``_SEARCH_BLOCK``.
    """
    block = block or _SEARCH_BLOCK
    best = None
    for s in range(0, m, block):
        e = min(m, s + block)
        scores, idx = topk_similarity(queries, key_block(s, e), k, None if mask is None else mask[:, s:e])
        best = _merge_topk(best, scores, torch.where(idx >= 0, idx + s, idx), k)
    return _finish(best)


def blocked_scores_topk(score_block, m: int, k: int, mask: Tensor | None, block: int) -> tuple[Tensor, Tensor]:
    """Exact top-k from scores computed block by block: ``score_block(s, e)`` -> (b, q, e - s)."""
    best = None
    for s in range(0, m, block):
        e = min(m, s + block)
        scores = score_block(s, e)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, s:e], float("-inf"))
        kk = min(k, e - s)
        top, idx = torch.topk(scores, kk, dim=-1)
        if kk < k:
            pad = k - kk
            top = torch.cat([top, top.new_full((*top.shape[:-1], pad), float("-inf"))], -1)
            idx = torch.cat([idx, idx.new_full((*idx.shape[:-1], pad), -1)], -1)
        best = _merge_topk(best, top, torch.where(idx >= 0, idx + s, idx), k)
    return _finish(best)


class VectorCodec(nn.Module, ABC):
    """A way to store d-dimensional vectors compactly (see the module doc).

    Codes of n vectors are a tuple of tensors, one per :attr:`fields` entry, each
    ``(..., *field.shape)`` with the leading dims of the input.
    """

    name: ClassVar[str]

    def __init__(self, dim: int, options: CodecOptions) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.options = options

    @property
    @abstractmethod
    def fields(self) -> tuple[CodeField, ...]:
        """The tensors stored per vector."""

    @property
    def bytes_per_vector(self) -> int:
        """Bytes one stored vector costs (the sum of its code fields)."""
        return sum(f.nbytes for f in self.fields)

    @property
    def is_fitted(self) -> bool:
        """Whether the codec can encode (only ``pq`` needs :meth:`fit` first)."""
        return True

    def fit(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Fit the codec to sample vectors x (n, d); a no-op for codecs with nothing to fit."""
        self._check_vectors(x, "fit")

    @abstractmethod
    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        """x (..., d) -> codes, one tensor (..., *field.shape) per field; never tracks gradients."""

    @abstractmethod
    def decode(self, codes: tuple[Tensor, ...]) -> Tensor:
        """codes (..., *field.shape) per field -> float32 reconstructions (..., d)."""

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x)), differentiable where the codec has parameters. x: (..., d)."""
        return self.decode(self.encode(x))

    def reconstruction_loss(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error of x (..., d): the codec's training loss."""
        return F.mse_loss(self.reconstruct(x), x.float())

    def search(self, queries: Tensor, codes: tuple[Tensor, ...], k: int, mask: Tensor | None = None):
        """Top-k stored vectors by the codec's similarity (module doc).

        Args:
            queries: (b, q, d).
            codes: stored codes, one tensor (b, m, *field.shape) per field.
            k: results per query.
            mask: (b, m) bool, True where a stored vector is valid.

        Returns:
            scores (b, q, k) float32 and indices (b, q, k) int64, best first; ``-inf`` / ``-1``
            where fewer than k stored vectors are valid.
        """
        m = codes[0].shape[1]
        return blocked_topk(queries.float(), m, lambda s, e: self.decode(tuple(c[:, s:e] for c in codes)), k, mask)

    def _check_vectors(self, x: Tensor, what: str) -> None:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name} codec {what}: vectors must have shape (..., {self.dim}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bytes_per_vector={self.bytes_per_vector}"


class NoneCodec(VectorCodec):
    """No compression: the float32 vector itself."""

    name = "none"

    @property
    def fields(self) -> tuple[CodeField, ...]:
        return (CodeField("x", (self.dim,), torch.float32),)

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        self._check_vectors(x, "encode")
        return (x.detach().float(),)

    def decode(self, codes: tuple[Tensor, ...]) -> Tensor:
        return codes[0].float()

    def reconstruct(self, x: Tensor) -> Tensor:
        return x.float()

    def search(self, queries: Tensor, codes: tuple[Tensor, ...], k: int, mask: Tensor | None = None):
        return topk_similarity(queries.float(), codes[0], k, mask)


class Int8Codec(VectorCodec):
    """Symmetric per-vector int8 (:func:`ahm.kernels.retrieval.quantize_int8`)."""

    name = "int8"

    @property
    def fields(self) -> tuple[CodeField, ...]:
        return (CodeField("codes", (self.dim,), torch.int8), CodeField("scale", (), torch.float32))

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        self._check_vectors(x, "encode")
        return quantize_int8(x.detach())

    def decode(self, codes: tuple[Tensor, ...]) -> Tensor:
        return dequantize_int8(codes[0], codes[1])

    def search(self, queries: Tensor, codes: tuple[Tensor, ...], k: int, mask: Tensor | None = None):
        return topk_similarity_int8(queries.float(), codes[0], codes[1], k, mask)


def _kmeans(x: Tensor, n_centroids: int, iters: int, generator: torch.Generator) -> Tensor:
    """Lloyd's k-means in S sub-spaces at once: x (S, n, ds) -> centroids (S, n_centroids, ds).

    Initialised with n_centroids distinct samples (the same rows in every sub-space);
    an empty cluster keeps its previous centroid.
    """
    s_dim, n, ds = x.shape
    centroids = x[:, torch.randperm(n, generator=generator)[:n_centroids]].clone()  # (S, C, ds)
    x_sq = x.pow(2).sum(-1, keepdim=True)  # (S, n, 1)
    for _ in range(iters):
        dist = x_sq - 2 * x @ centroids.transpose(1, 2) + centroids.pow(2).sum(-1)[:, None, :]  # (S, n, C)
        assign = dist.argmin(-1)  # (S, n)
        sums = torch.zeros_like(centroids).scatter_add_(1, assign[..., None].expand(-1, -1, ds), x)
        counts = torch.zeros(s_dim, n_centroids, dtype=x.dtype).scatter_add_(1, assign, torch.ones_like(x[..., 0]))
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centroids)
    return centroids


class PQCodec(VectorCodec):
    """Product quantisation (Jegou et al., 2011): one centroid id per sub-vector.

    The d dims are cut into ``S = d / pq_subvector_dim`` sub-vectors; each is replaced
    by the id of its nearest of ``2**pq_bits`` centroids of that sub-space, learnt by
    k-means in :meth:`fit` (faiss's ``ProductQuantizer`` or the built-in k-means).
    """

    name = "pq"
    _ENCODE_BLOCK = 16384  # vectors encoded at a time: (block, S, 256) distances stay small

    def __init__(self, dim: int, options: CodecOptions) -> None:
        super().__init__(dim, options)
        sub = options.pq_subvector_dim
        if dim % sub:
            raise ValueError(
                f"pq codec: dim {dim} is not a multiple of pq_subvector_dim {sub}; choose a divisor of {dim}"
            )
        self.n_sub, self.sub_dim, self.n_centroids = dim // sub, sub, 2**options.pq_bits
        if options.pq_backend == "faiss":
            import_faiss()  # fail now, not at fit time
        self.register_buffer("codebooks", torch.zeros(self.n_sub, self.n_centroids, sub))  # (S, C, ds)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def backend(self) -> str:
        """The k-means used by :meth:`fit`: ``"faiss"`` or ``"builtin"``."""
        if self.options.pq_backend == "auto":
            return "faiss" if faiss_available() else "builtin"
        return self.options.pq_backend

    @property
    def fields(self) -> tuple[CodeField, ...]:
        return (CodeField("codes", (self.n_sub,), torch.uint8),)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def fit(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Learn the codebooks from x (n, d), n >= 2**pq_bits; at most 256 samples per centroid are used."""
        self._check_vectors(x, "fit")
        x = x.detach().float().reshape(-1, self.dim).cpu()
        if x.shape[0] < self.n_centroids:
            raise ValueError(
                f"pq codec fit: needs at least {self.n_centroids} sample vectors (2**pq_bits), got {x.shape[0]}"
            )
        generator = generator or torch.Generator().manual_seed(self.options.seed)
        limit = 256 * self.n_centroids  # faiss's max_points_per_centroid
        if x.shape[0] > limit:
            x = x[torch.randperm(x.shape[0], generator=generator)[:limit]]
        if self.backend == "faiss":
            faiss = import_faiss()
            pq = faiss.ProductQuantizer(self.dim, self.n_sub, self.options.pq_bits)
            pq.cp.seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
            pq.cp.niter = self.options.pq_iters
            pq.cp.min_points_per_centroid = 1  # n >= n_centroids is checked above; silences faiss's warning
            pq.train(x.numpy())
            books = torch.from_numpy(faiss.vector_to_array(pq.centroids).copy())
            books = books.reshape(self.n_sub, self.n_centroids, self.sub_dim)
        else:
            sub = x.reshape(-1, self.n_sub, self.sub_dim).transpose(0, 1).contiguous()  # (S, n, ds)
            books = _kmeans(sub, self.n_centroids, self.options.pq_iters, generator)
        with torch.no_grad():
            self.codebooks.copy_(books)
            self.fitted.fill_(True)

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        self._check_vectors(x, "encode")
        if not self.is_fitted:
            raise ValueError(
                "pq codec is not fitted: call fit(sample_vectors) first "
                "(LongTermMemory.fit_codecs, or AHMModel.calibrate_codecs for a model)"
            )
        lead = x.shape[:-1]
        flat = x.detach().float().reshape(-1, self.n_sub, self.sub_dim)  # (n, S, ds)
        books = self.codebooks  # (S, C, ds)
        out = []
        for s in range(0, flat.shape[0], self._ENCODE_BLOCK):
            blk = flat[s : s + self._ENCODE_BLOCK].transpose(0, 1)  # (S, nb, ds)
            dist = books.pow(2).sum(-1)[:, None, :] - 2 * blk @ books.transpose(1, 2)  # (S, nb, C), + |x|^2 omitted
            out.append(dist.argmin(-1).transpose(0, 1))  # (nb, S)
        codes = torch.cat(out) if out else torch.zeros(0, self.n_sub, dtype=torch.long)
        return (codes.to(torch.uint8).reshape(*lead, self.n_sub),)

    def decode(self, codes: tuple[Tensor, ...]) -> Tensor:
        c = codes[0].long()  # (..., S)
        sub_index = torch.arange(self.n_sub, device=c.device)
        return self.codebooks[sub_index, c].reshape(*c.shape[:-1], self.dim)  # (..., S, ds) -> (..., d)

    # Queries per call up to which search uses lookup tables; more queries decode blocks and use the kernel.
    _ADC_MAX_QUERIES = 16

    def search(self, queries: Tensor, codes: tuple[Tensor, ...], k: int, mask: Tensor | None = None):
        """Asymmetric distance computation (Jegou et al., 2011, Sec. 3.1) for a few queries per call.

        ``q . decode(c) = sum_s <q_s, codebook_s[c_s]>``: one (S x C) table of sub-vector inner
        products per query, then S table look-ups per stored vector instead of decoding it.
        The same scores as the inner product with the decoded vector, summed in another order.
        """
        b, nq, _ = queries.shape
        if nq > self._ADC_MAX_QUERIES:
            return super().search(queries, codes, k, mask)
        sub = queries.float().reshape(b, nq, self.n_sub, self.sub_dim)
        tables = torch.einsum("bqsd,scd->bqsc", sub, self.codebooks).reshape(b, nq, -1)  # (b, q, S C)
        offsets = torch.arange(self.n_sub, device=queries.device) * self.n_centroids  # (S,)
        stored = codes[0]

        def score_block(s: int, e: int) -> Tensor:
            idx = (stored[:, s:e].long() + offsets).reshape(b, 1, -1).expand(b, nq, -1)  # (b, q, n S)
            return tables.gather(2, idx).view(b, nq, e - s, self.n_sub).sum(-1)  # (b, q, n)

        block = max(1024, _SEARCH_BLOCK // nq)
        return blocked_scores_topk(score_block, stored.shape[1], k, mask, block)


class AutoencoderCodec(VectorCodec):
    """A small learnt compressor: MLP encoder to a float16 latent, linear decoder.

    encoder: Linear(d, H) -> GELU -> Linear(H, r); decoder: Linear(r, d).
    The decoder is linear so that inner-product search over the reconstructions
    runs in the latent space (module doc). Trained by :meth:`reconstruction_loss`.
    """

    name = "autoencoder"

    def __init__(self, dim: int, options: CodecOptions) -> None:
        super().__init__(dim, options)
        self.latent_dim = options.ae_latent_dim or max(1, dim // 4)
        hidden = options.ae_hidden_dim or 2 * dim
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, self.latent_dim))
        self.decoder = nn.Linear(self.latent_dim, dim)
        g = torch.Generator().manual_seed(options.seed)
        with torch.no_grad():  # PyTorch's default Linear init, drawn from the codec's own generator
            for layer in (self.encoder[0], self.encoder[2], self.decoder):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 2 * bound - bound)
                layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) * 2 * bound - bound)

    @property
    def fields(self) -> tuple[CodeField, ...]:
        return (CodeField("latent", (self.latent_dim,), torch.float16),)

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        self._check_vectors(x, "encode")
        with torch.no_grad():
            return (self.encoder(x.float()).to(torch.float16),)

    def decode(self, codes: tuple[Tensor, ...]) -> Tensor:
        return self.decoder(codes[0].float())

    def reconstruct(self, x: Tensor) -> Tensor:
        # Differentiable path for training; the float16 rounding of storage is left out.
        return self.decoder(self.encoder(x.float()))

    def fit(self, x: Tensor, generator: torch.Generator | None = None, steps: int = 500, lr: float = 3e-3,
            batch: int = 256) -> None:
        """Train on x (n, d) alone with Adam for ``steps`` minibatches (the backbone phase trains it jointly)."""
        self._check_vectors(x, "fit")
        x = x.detach().float().reshape(-1, self.dim)
        generator = generator or torch.Generator().manual_seed(self.options.seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        with torch.enable_grad(), _one_thread():
            for _ in range(steps):
                rows = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=generator)
                loss = self.reconstruction_loss(x[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()

    def search(self, queries: Tensor, codes: tuple[Tensor, ...], k: int, mask: Tensor | None = None):
        # q . (W z + b) = (W^T q) . z + q . b: rank in latent space, add the per-query constant.
        queries = queries.float()
        with torch.no_grad():
            q_lat = queries @ self.decoder.weight  # (b, q, r)
            offset = queries @ self.decoder.bias  # (b, q)
        latent = codes[0]
        scores, idx = blocked_topk(q_lat, latent.shape[1], lambda s, e: latent[:, s:e].float(), k, mask)
        return scores + offset[..., None], idx


class HashCodec(VectorCodec):
    """Random-projection sign bits (SimHash, Charikar 2002) and Hamming search.

    ``bits = sign(P x)`` for a fixed Gaussian P (n_bits, d); the Hamming distance h
    between the bits of a query and of a stored vector estimates their angle
    ``theta ~ pi h / n_bits``. Search ranks by h and reports ``cos(pi h / n_bits)``.
    """

    name = "hash"

    def __init__(self, dim: int, options: CodecOptions) -> None:
        super().__init__(dim, options)
        self.n_bits = options.hash_bits or 4 * dim
        if self.n_bits % 8:
            raise ValueError(f"hash codec: n_bits must be a multiple of 8, got {self.n_bits}")
        g = torch.Generator().manual_seed(options.seed)
        self.register_buffer("projection", torch.randn(self.n_bits, dim, generator=g))  # (n_bits, d)
        self.register_buffer("_bit_weights", 2 ** torch.arange(8, dtype=torch.int32), persistent=False)
        # Byte -> its 8 bits as +-1 (least significant first): unpacking is one table look-up.
        table = torch.where((torch.arange(256, dtype=torch.int32)[:, None] & self._bit_weights) > 0, 1.0, -1.0)
        self.register_buffer("_unpack_table", table, persistent=False)  # (256, 8)

    @property
    def fields(self) -> tuple[CodeField, ...]:
        return (CodeField("bits", (self.n_bits // 8,), torch.uint8), CodeField("norm", (), torch.float16))

    def _signs(self, x: Tensor) -> Tensor:
        """x (..., d) -> +-1 float32 (..., n_bits); a zero projection counts as +1."""
        return torch.where(x.float() @ self.projection.T >= 0, 1.0, -1.0)

    def _unpack(self, bits: Tensor) -> Tensor:
        """bits (..., n_bits / 8) uint8 -> +-1 float32 (..., n_bits)."""
        return self._unpack_table[bits.long()].reshape(*bits.shape[:-1], self.n_bits)  # (..., n_bytes, 8) -> flat

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        self._check_vectors(x, "encode")
        x = x.detach().float()
        on = (self._signs(x) > 0).reshape(*x.shape[:-1], self.n_bits // 8, 8).to(torch.int32)
        bits = (on * self._bit_weights).sum(-1).to(torch.uint8)
        return bits, x.norm(dim=-1).to(torch.float16)

    def decode(self, codes: tuple[Tensor, ...]) -> Tensor:
        direction = F.normalize(self._unpack(codes[0]) @ self.projection, dim=-1)  # (..., d)
        return direction * codes[1].float()[..., None]

    _TABLE_MAX_QUERIES = 16  # as PQCodec: per-byte lookup tables for a few queries, unpacking for many

    def search(self, queries: Tensor, codes: tuple[Tensor, ...], k: int, mask: Tensor | None = None):
        b, nq, _ = queries.shape
        bits = codes[0]
        if nq > self._TABLE_MAX_QUERIES:
            # +-1 inner product = n_bits - 2 h, so the kernel's top-k over unpacked bits is the Hamming top-k.
            ip, idx = blocked_topk(self._signs(queries), bits.shape[1], lambda s, e: self._unpack(bits[:, s:e]), k,
                                   mask)
        else:
            # h = sum_j popcount(q_j xor c_j) over bytes j: a (n_bytes x 256) table per query, one look-up per byte.
            n_bytes = self.n_bits // 8
            q_bytes = self.encode(queries)[0].long()  # (b, q, n_bytes)
            xor = q_bytes[..., None] ^ torch.arange(256, device=queries.device)  # (b, q, n_bytes, 256)
            tables = (self._unpack_table[xor] > 0).sum(-1).float().reshape(b, nq, -1)  # set bits of xor: differing
            offsets = torch.arange(n_bytes, device=queries.device) * 256

            def score_block(s: int, e: int) -> Tensor:  # n_bits - 2 h, the +-1 inner product
                look = (bits[:, s:e].long() + offsets).reshape(b, 1, -1).expand(b, nq, -1)
                return self.n_bits - 2 * tables.gather(2, look).view(b, nq, e - s, n_bytes).sum(-1)

            ip, idx = blocked_scores_topk(score_block, bits.shape[1], k, mask, max(1024, _SEARCH_BLOCK // nq))
        hamming = (self.n_bits - ip) / 2
        scores = torch.where(torch.isneginf(ip), ip, torch.cos(math.pi * hamming / self.n_bits))
        return scores, idx

    def hamming(self, queries: Tensor, codes: tuple[Tensor, ...]) -> Tensor:
        """Brute-force Hamming distances: queries (b, q, d), codes (b, m, ...) -> (b, q, m) int64."""
        q_on = self._signs(queries) > 0  # (b, q, n_bits)
        c_on = self._unpack(codes[0]) > 0  # (b, m, n_bits)
        return (q_on[:, :, None, :] != c_on[:, None, :, :]).sum(-1)


CODECS: dict[str, type[VectorCodec]] = {
    c.name: c for c in (NoneCodec, Int8Codec, PQCodec, AutoencoderCodec, HashCodec)
}
"""The codec registry: name -> class (drives ``make_codec``, the tests and the benchmark)."""


def make_codec(name: str, dim: int, options: CodecOptions | None = None) -> VectorCodec:
    """The codec ``name`` (a key of :data:`CODECS`) for ``dim``-dimensional vectors.

    Raises:
        ValueError: unknown name or options that do not fit ``dim``.
        ImportError: ``pq`` with ``pq_backend="faiss"`` and faiss not installed.
    """
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}")
    return CODECS[name](dim, options or CodecOptions())
