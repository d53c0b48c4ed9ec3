"""Language means and the steering-vector methods built from them: mean_diff, target_only, pca, english_fit.

:class:`LanguageMeans` holds z_L(c), the last-token latent of concept c answering in language L at each
candidate layer (averaged over the prompts' input languages), read from latent stores. μ_L is its mean
over concepts and μ_all the mean of the μ_L. Every ordered pair's vectors are differences of these
(:func:`direction`); no latents are collected per pair. :func:`equal_norm` scales a direction to the
layer's common norm so that α means the same thing for every method and pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmlatent.errors import SteeringError

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore

METHODS = ("mean_diff", "target_only", "pca", "english_fit")
PIVOT = "en"  # english_fit's language (Schut et al. 2025)


@dataclass
class LanguageMeans:
    """Per-concept latents ``z[lang]`` [concepts, layers, hidden] (float64) at ``layers``, concepts in ``concepts``."""

    layers: list[int]
    concepts: list[str]
    z: dict[str, torch.Tensor]

    def mean(self, lang: str) -> torch.Tensor:
        """Return μ_lang [layers, hidden]: the mean over concepts."""
        return self.z[lang].mean(0)

    def mean_all(self) -> torch.Tensor:
        """Return μ_all [layers, hidden]: the mean of the languages' means."""
        return torch.stack([self.mean(lang) for lang in self.z]).mean(0)

    def index(self, layer: int) -> int:
        """Return the position of ``layer`` in ``layers``."""
        return self.layers.index(int(layer))


def concept_latents(stores: Sequence[LatentStore], layers: Sequence[int], concepts: Sequence[str]) -> torch.Tensor:
    """Return z(c) [concepts, layers, hidden] (float64): each concept's latent, averaged over ``stores``.

    Every store must hold exactly one prompt per concept in ``concepts`` (e.g. one store per input language).
    """
    parts = []
    for store in stores:
        frame = store.prompts
        where = {c: i for i, c in enumerate(frame["concept"])}
        missing = [c for c in concepts if c not in where]
        if missing or len(where) != len(frame):
            raise SteeringError(f"the latent store {store.path} lacks concepts {missing[:3]} or repeats one")
        rows = torch.tensor([where[c] for c in concepts])
        parts.append(torch.stack([store.latents(ell)[rows].double() for ell in layers], 1))
    return torch.stack(parts).mean(0)


def from_stores(
    stores: Mapping[str, Sequence[LatentStore]], layers: Sequence[int], concepts: Sequence[str]
) -> LanguageMeans:
    """Return the language means of ``stores`` (language → its stores, one per input language) at ``layers``."""
    layers, concepts = [int(x) for x in layers], list(concepts)
    return LanguageMeans(layers, concepts, {lang: concept_latents(s, layers, concepts) for lang, s in stores.items()})


def paired_pca(differences: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Return the unit first principal direction of paired ``differences`` [n, hidden], sign-aligned with ``reference``.

    The principal axis is taken about the origin (the top right-singular vector of the difference matrix),
    as repeng's PCA of differences whose pair order is randomised (±d, so their mean is zero): centring on
    the mean would throw away the shared direction that the differences carry.
    """
    _, _, vh = torch.linalg.svd(differences.double(), full_matrices=False)
    axis = vh[0]
    return -axis if float(axis @ reference.double()) < 0 else axis


def direction(means: LanguageMeans, method: str, source: str, target: str, layer: int) -> torch.Tensor | None:
    """Return the raw direction of ``method`` for source → target at ``layer`` (float64); None where it is undefined.

    ``english_fit`` (μ_target − μ_en) is undefined towards English and needs English among the languages.
    """
    i = means.index(layer)
    diff = means.mean(target)[i] - means.mean(source)[i]
    if method == "mean_diff":
        return diff
    if method == "target_only":
        return means.mean(target)[i] - means.mean_all()[i]
    if method == "pca":
        return paired_pca(means.z[target][:, i] - means.z[source][:, i], diff)
    if method == "english_fit":
        if target == PIVOT or PIVOT not in means.z:
            return None
        return means.mean(target)[i] - means.mean(PIVOT)[i]
    raise SteeringError(f"unknown steering method {method!r}; choose from {', '.join(METHODS)}")


def layer_norms(means: LanguageMeans, langs: Sequence[str]) -> dict[int, float]:
    """Return layer → the common norm: the mean of ‖μ_t − μ_s‖ over the ordered pairs of ``langs``."""
    out = {}
    for ell in means.layers:
        i = means.index(ell)
        norms = [float((means.mean(t)[i] - means.mean(s)[i]).norm()) for s in langs for t in langs if s != t]
        out[ell] = sum(norms) / len(norms)
    return out


def equal_norm(vector: torch.Tensor, norm: float) -> torch.Tensor:
    """Return ``vector`` rescaled to Euclidean norm ``norm`` (float32); a zero vector raises a SteeringError."""
    length = float(vector.norm())
    if not length > 0:
        raise SteeringError("cannot scale a zero steering direction to a common norm (two identical means?)")
    return (vector.double() * (float(norm) / length)).float()
