"""The paper's geometric analyses as pure functions: classical MDS of latent paths among token embeddings, the
Procrustes alignment of input embeddings to the unembedding and the ranks it gives, latent norms.

Row convention: every matrix of vectors is [n, d] (one vector per row): the unembedding ``U`` [V, d] with its
rows scaled by the final norm's weight (:func:`scaled_unembedding`), the input embeddings ``E`` [V, d],
latents [N, d]. The paper's R code (``R/embed_unembed.r`` of epfl-dlab/llm-latent-language) keeps vectors in
columns; the formulas below are its transposes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from llmlatent.adapter import norm_scale
from llmlatent.errors import UsageError

if TYPE_CHECKING:
    from llmlatent.adapter import Unembedding

RMS_EPS = 1e-6  # the paper's rmsnorm (Llama-2's eps)
LANCZOS_FROM = 300  # classical MDS of more points than this takes its top eigenvectors by Lanczos


def rms_normalise(latents: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """Return float32 latents [N, d] divided by their root mean square (no weight: it lives in the scaled U)."""
    x = latents.float()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def scaled_unembedding(unembedding: Unembedding) -> torch.Tensor:
    """Return the unembedding rows [V, d] (float32) multiplied feature-wise by the final norm's scale.

    ``U[v] · rms_normalise(h)`` is then the lens logit of token v (for RMS-norm families, up to eps): the
    paper folds the norm's weight σ into U so that latents only need the plain RMS normalisation.
    """
    w = unembedding.weight.detach().float()
    return w * norm_scale(unembedding.final_norm).to(w.device)


def latent_norms(latents: torch.Tensor) -> torch.Tensor:
    """Return the Euclidean norm of each raw latent (float32, the shape of ``latents`` without its last axis)."""
    return latents.float().norm(dim=-1)


def token_probabilities(
    latents: torch.Tensor,
    unembedding: torch.Tensor,
    token_ids: Sequence[int],
    *,
    softcap: float | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """Return float64 [N, len(token_ids)]: each normalised latent's softmax over the WHOLE vocabulary, read at
    ``token_ids``.

    The paper's latent–token similarity (``compute_probs``): logits = U·l over every token, softmax, then
    the sampled rows; the probabilities of a row therefore sum to at most 1. Computed ``chunk`` latents at a
    time so a 262k-token vocabulary never needs an [N, V] matrix; log-softmax in float32, exponentiated in
    float64 so that tiny probabilities (the MDS distances' −log) keep their digits.
    """
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    out = []
    with torch.no_grad():
        for start in range(0, latents.shape[0], chunk):
            logits = latents[start : start + chunk].float() @ unembedding.T
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            out.append(torch.log_softmax(logits, dim=-1)[:, ids].double().exp())
    return torch.cat(out) if out else torch.empty(0, len(ids), dtype=torch.float64)


def token_sample(n_tokens: int, path_ids: Sequence[int], vocab_size: int) -> list[int]:
    """Return the paper's token sample: ids n_tokens−1 … 0 (a fixed block), the first entries replaced by
    ``path_ids`` (the sampled prompts' target then English tokens; an id may appear twice, as in the paper)."""
    if len(path_ids) > n_tokens:
        raise UsageError(f"{len(path_ids)} path tokens do not fit in a sample of {n_tokens}")
    ids = list(range(min(n_tokens, vocab_size) - 1, -1, -1))
    ids[: len(path_ids)] = [int(i) for i in path_ids]
    return ids


def mds_distances(probabilities: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return the paper's distance matrix [(T+N), (T+N)] (float64) of T tokens then N latents, from the
    latent–token probabilities P [N, T].

    Similarity S is P between a latent and a token and zero latent–latent and token–token; the distance
    is −log(S + min P). Off the two blocks the distance is the constant −log(min P). Unlike the paper's
    matrix, the diagonal is set to zero (a proper dissimilarity): a constant c on the diagonal of the
    squared distances only shifts every centred eigenvalue by −c/2, so the MDS directions are the same.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    n_latents, n_tokens = p.shape
    floor = float(p.min())
    if not floor > 0:
        floor = np.finfo(np.float64).tiny  # a probability that underflowed: keep the log finite
    size = n_tokens + n_latents
    d = np.full((size, size), -np.log(floor))
    d[:n_tokens, n_tokens:] = -np.log(p.T + floor)
    d[n_tokens:, :n_tokens] = -np.log(p + floor)
    np.fill_diagonal(d, 0.0)
    return d


def classical_mds(distances: np.ndarray, dims: int = 2) -> np.ndarray:
    """Return float64 coordinates [n, dims] of classical (Torgerson) MDS of a symmetric distance matrix.

    B = −½ J D⁽²⁾ J with J = I − 11ᵀ/n; the coordinates are the top ``dims`` eigenvectors of B times the square
    root of their eigenvalues (negative eigenvalues count as 0), as R's ``cmdscale``. An eigenvector's sign is
    arbitrary: each column is flipped so that its largest-magnitude entry is positive (byte-identical reruns).
    """
    d2 = np.asarray(distances, dtype=np.float64) ** 2
    # double centring without forming J: subtract row and column means, add back the grand mean
    b = -0.5 * (d2 - d2.mean(0, keepdims=True) - d2.mean(1, keepdims=True) + d2.mean())
    b = (b + b.T) / 2
    n = b.shape[0]
    values, vectors = _top_eigen(b, min(dims, n))
    coords = vectors * np.sqrt(np.clip(values, 0.0, None))
    signs = np.sign(coords[np.abs(coords).argmax(0), np.arange(coords.shape[1])])
    return coords * np.where(signs == 0, 1.0, signs)


def _top_eigen(b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the k largest eigenvalues (descending) and their eigenvectors of a symmetric matrix.

    Speed trick: beyond a few hundred points only the top k are wanted, so Lanczos (``eigsh``, matrix–vector
    products only) replaces the full O(n³) decomposition: 2 s instead of 36 s for the paper's 4,900 points on
    one busy core. Its start vector is fixed (a ramp; not the constant vector, which B annihilates), so reruns
    are identical; ``tol=0`` asks for machine precision. Tested against the full decomposition.
    """
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    n = b.shape[0]
    if n <= LANCZOS_FROM or k >= n - 1:
        values, vectors = eigh(b, subset_by_index=(n - k, n - 1))
    else:
        values, vectors = eigsh(b, k=k, which="LA", v0=np.linspace(1.0, 2.0, n), tol=0)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the orthogonal R [d, d] (float64) minimising ‖R·sourceᵀ − targetᵀ‖_F over rows [V, d].

    The paper's ``R = u vᵀ`` from the SVD of U·Eᵀ (vectors in columns); in rows that is the SVD of
    targetᵀ·source. ``R @ source[v]`` is then source token v's vector in the target space.
    """
    m = target.double().T @ source.double()
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def procrustes_ranks(
    unembedding: torch.Tensor,
    embeddings: torch.Tensor,
    rotation: torch.Tensor,
    token_ids: Sequence[int],
    other_ids: Sequence[int],
    *,
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (rank of each token itself, rank of its ``other_ids`` partner) among the logits U·R·E[token].

    Ranks are 1-based over the whole vocabulary, ties counted in the token's favour (1 + the number of
    strictly larger logits; float32 logits, each compared within the same product). The paper reports the
    rank of a word's own token and of its English translation's token: how well the rotated input embedding
    points at the word in output space.
    """
    if len(token_ids) != len(other_ids):
        raise UsageError(f"{len(token_ids)} tokens but {len(other_ids)} partners")
    u = unembedding.float()
    rotated = (embeddings[list(token_ids)].double() @ rotation.T).float()  # row form of R·E[:, token]
    own_ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    other_ids_t = torch.as_tensor(list(other_ids), dtype=torch.long)
    own_ranks: list[torch.Tensor] = []
    other_ranks: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(own_ids), chunk):  # [chunk, V] logits at a time, one float32 matmul
            logits = rotated[start : start + chunk] @ u.T
            rows = torch.arange(logits.shape[0])
            for ids, out in ((own_ids, own_ranks), (other_ids_t, other_ranks)):
                at = logits[rows, ids[start : start + chunk]].unsqueeze(1)
                out.append(1 + (logits > at).sum(1))
    own = torch.cat(own_ranks).numpy() if own_ranks else np.empty(0, dtype=np.int64)
    other = torch.cat(other_ranks).numpy() if other_ranks else np.empty(0, dtype=np.int64)
    return own, other


def rank_summary(ranks: pd.DataFrame) -> pd.DataFrame:
    """Return R's ``summary()`` of each column (rows Min, 1st Qu., Median, Mean, 3rd Qu., Max; type-7 quantiles)."""
    stats = {
        "Min.": ranks.min(),
        "1st Qu.": ranks.quantile(0.25),
        "Median": ranks.median(),
        "Mean": ranks.mean(),
        "3rd Qu.": ranks.quantile(0.75),
        "Max.": ranks.max(),
    }
    return pd.DataFrame(stats).T.rename_axis("statistic").reset_index()
