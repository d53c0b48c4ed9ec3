"""Per-layer metrics: entropy, token energy, and confidence intervals over prompts."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from llmlatent.errors import UsageError

if TYPE_CHECKING:
    from llmlatent.adapter import Unembedding

log = logging.getLogger(__name__)

LOG2 = math.log(2.0)
# below this many prompts the normal-approximation interval is unreliable: summarize warns
MIN_N_INTERVAL = 10
PROBABILITIES = ("p_target", "p_english", "p_source")


def token_energy(unembedding: Unembedding, latents: torch.Tensor) -> torch.Tensor:
    """Return the paper's token energy of raw residual vectors [N, hidden] (float32 [N]).

    With U the unembedding rows multiplied by the final norm's scale and each row normalised to
    unit length (û_v), and ĥ the latent centred (LayerNorm families only) and normalised to unit
    length::

        energy(h) = sqrt( mean_v (û_v · ĥ)² ) / sqrt( mean_{v,w} (û_v · û_w)² )

    i.e. how strongly the latent aligns with token directions, relative to how strongly token
    directions align with each other on average (1 ≈ "as aligned as a typical token"). Both means are
    computed exactly through the Gram matrix G = Σ_v û_v û_vᵀ / V: the numerator is sqrt(ĥᵀ G ĥ)
    and the denominator is ‖G‖_F, so no vocabulary-sized product is needed.
    """
    gram = unembedding.energy_gram()
    h = latents.float().to(gram.device)
    if isinstance(getattr(unembedding, "final_norm", None), torch.nn.LayerNorm):
        h = h - h.mean(-1, keepdim=True)
    h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    numerator = ((h @ gram) * h).sum(-1).clamp_min(0).sqrt()
    return numerator / torch.linalg.matrix_norm(gram)


def _normal_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Return (mean, lo, hi): mean ± 1.96·SE; the interval is NaN for fewer than 2 values (no spread to estimate)."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if len(values) < 2:
        return (mean, math.nan, math.nan)
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))
    return (mean, mean - half, mean + half)


def _bootstrap_ci(values: np.ndarray, seed: int, n_resamples: int) -> tuple[float, float, float]:
    from scipy.stats import bootstrap

    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (float(values.mean()) if len(values) else math.nan, math.nan, math.nan)
    if np.all(values == values[0]):  # no spread: every resample has the same mean
        mean = float(values[0])
        return (mean, mean, mean)
    res = bootstrap(
        (values,),
        np.mean,
        confidence_level=0.95,
        n_resamples=n_resamples,
        random_state=np.random.default_rng(seed),
        method="percentile",
    )
    return (float(values.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high))


def probability_columns(columns: Iterable[str]) -> list[str]:
    """Return the probability columns a summary has: p_target, p_english, p_source (always, NaN where absent), then
    every p_latent_<code> among ``columns`` in their order."""
    return [*PROBABILITIES, *(c for c in columns if c.startswith("p_latent_"))]


def summarize(rows: pd.DataFrame, *, ci: str = "normal", seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """Return per-layer means with 95% intervals: layer, p_*_mean/lo/hi, entropy_mean, energy_mean, n.

    ``ci="normal"`` is the paper's mean ± 1.96·SE; ``ci="bootstrap"`` uses scipy's percentile
    bootstrap (seeded). NaN values (e.g. p_source where it is undefined) are ignored. With fewer than
    2 prompts the interval is NaN (never a zero-width "interval"); the normal interval of a
    probability is clipped to [0, 1]; below :data:`MIN_N_INTERVAL` prompts a warning is logged.
    """
    if ci not in ("normal", "bootstrap"):
        raise UsageError(f"ci must be 'normal' or 'bootstrap' (--ci), not {ci!r}")
    n_prompts = int(rows["prompt_id"].nunique()) if len(rows) else 0
    if n_prompts < MIN_N_INTERVAL:
        log.warning(
            "only %d prompt(s): the 95%% intervals are %s",
            n_prompts,
            "undefined (NaN)" if n_prompts < 2 else f"unreliable below {MIN_N_INTERVAL} prompts",
        )
    out = []
    for layer, group in rows.groupby("layer", sort=True):
        record: dict[str, float | int] = {"layer": int(layer), "n": int(group["prompt_id"].nunique())}
        for col in probability_columns(rows.columns):
            values = group[col].to_numpy(dtype=np.float64) if col in group else np.array([math.nan])
            mean, lo, hi = (
                _normal_ci(values) if ci == "normal" else _bootstrap_ci(values, seed + int(layer), n_resamples)
            )
            if ci == "normal":  # a probability's interval cannot leave [0, 1] (NaN stays NaN)
                lo, hi = float(np.clip(lo, 0.0, 1.0)), float(np.clip(hi, 0.0, 1.0))
            record.update({f"{col}_mean": mean, f"{col}_lo": lo, f"{col}_hi": hi})
        for col in ("entropy", "energy"):
            values = group[col].to_numpy(dtype=np.float64)
            mean, lo, hi = (
                _normal_ci(values) if ci == "normal" else _bootstrap_ci(values, seed + int(layer), n_resamples)
            )
            record.update({f"{col}_mean": mean, f"{col}_lo": lo, f"{col}_hi": hi})
        out.append(record)
    return pd.DataFrame(out)


def interval(
    values: np.ndarray, *, ci: str = "normal", seed: int = 0, n_resamples: int = 2000
) -> tuple[float, float, float]:
    """Return (mean, low, high) of the 95% interval of ``values`` (NaN ignored): normal or percentile bootstrap."""
    if ci not in ("normal", "bootstrap"):
        raise UsageError(f"ci must be 'normal' or 'bootstrap', not {ci!r}")
    values = np.asarray(values, dtype=np.float64)
    return _normal_ci(values) if ci == "normal" else _bootstrap_ci(values, seed, n_resamples)
