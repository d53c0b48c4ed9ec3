"""Steering vectors: a direction added to the residual stream after one block, as a context manager.

``layer`` i is the residual stream after block i (0-based), the same rule as the lens. A
:class:`SteeringVector` is usually a mean difference of cached last-token latents (μ_target − μ_source,
arXiv 2312.06681); ``with vector.apply(model, alpha=4):`` adds ``alpha · vector`` to the output of
``model.adapter.blocks[layer]`` at the chosen positions and removes its hooks on exit, also after an
exception; :func:`apply_rows` steers each block of rows by its own (vector, α) setting, so that many
settings run as one forward (:mod:`llmlatent.steering.batched`: steered last-token forwards and greedy generations
over one prompt-prefix KV cache; the hooks: :mod:`llmlatent.steering.hook`). The RU→ZH demo that sweeps layers × α is
pipeline code in :mod:`llmlatent.experiments.steering.demo`;
this module never imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llmlatent import checks
from llmlatent.adapter import Fingerprint, same_model
from llmlatent.errors import SteeringError
from llmlatent.steering import file as vector_file
from llmlatent.steering.hook import SteeringHook

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore
    from llmlatent.model import Model
    from llmlatent.tasks import PromptSet

log = logging.getLogger(__name__)


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` as an int if 0 ≤ layer < n_layers, else raise a SteeringError."""
    return checks.layer(layer, n_layers, error=SteeringError)


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float if it is finite, else raise a SteeringError."""
    try:
        value = float(alpha)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"alpha must be a number, got {alpha!r}") from exc
    if not math.isfinite(value):
        raise SteeringError(f"alpha must be finite, got {alpha!r}")
    return value


def _jsonable(value: object) -> object:
    """Return a JSON-able form of a metadata value (a Fingerprint as its dict; anything else as text)."""
    return value.to_dict() if isinstance(value, Fingerprint) else str(value)


def check_count(value: int, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int if it is a whole number ≥ ``minimum``, else a UsageError naming it and its flag."""
    return checks.count(value, name, minimum=minimum, flag="--" + name.replace("_", "-"))


def _fingerprint(meta_fp: Mapping | None, what: str) -> Fingerprint | None:
    """Return a stored fingerprint dict as a :class:`Fingerprint` (None when absent); SteeringError when incomplete."""
    if not meta_fp:
        return None
    try:
        return Fingerprint.of(meta_fp)
    except (KeyError, TypeError, ValueError) as exc:
        raise SteeringError(
            f"{what} has an incomplete model fingerprint {dict(meta_fp)!r}: it needs unembedding_sha256, n_layers and "
            "hidden_size (as Model.fingerprint() gives)"
        ) from exc


@dataclass
class SteeringVector:
    """A residual-stream direction for the output of block ``layer``, with JSON-able ``meta``.

    ``meta`` usually holds ``method``, ``source``/``target`` language, ``via``, ``n_source``/``n_target``
    (prompts averaged) and ``fingerprint`` (:meth:`llmlatent.model.Model.fingerprint`).
    ``v1 + v2``, ``v1 - v2``, ``-v``, ``alpha * v`` and :meth:`scale` return new vectors.
    """

    layer: int
    vector: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vector = torch.as_tensor(self.vector).detach().to("cpu", torch.float32).clone()
        if self.vector.ndim != 1 or self.vector.numel() == 0:
            raise SteeringError(f"a steering vector must be 1-D and non-empty, got shape {tuple(self.vector.shape)}")
        if not bool(torch.isfinite(self.vector).all()):
            bad = int((~torch.isfinite(self.vector)).sum())
            raise SteeringError(f"the steering vector has {bad} non-finite entries (NaN or inf)")
        if isinstance(self.layer, bool) or int(self.layer) != self.layer or int(self.layer) < 0:
            raise SteeringError(f"layer must be a non-negative integer, got {self.layer!r}")
        self.layer = int(self.layer)
        self.meta = json.loads(json.dumps(dict(self.meta), default=_jsonable))

    @property
    def hidden_size(self) -> int:
        """Return the vector's length (the residual width it fits)."""
        return int(self.vector.numel())

    @property
    def norm(self) -> float:
        """Return the Euclidean norm of the vector."""
        return float(self.vector.norm())

    def scale(self, alpha: float) -> SteeringVector:
        """Return a new vector ``alpha · self`` (same layer and meta, ``meta['scale']`` multiplied)."""
        alpha = check_alpha(alpha)
        meta = {**self.meta, "scale": self.meta.get("scale", 1.0) * alpha}
        return SteeringVector(self.layer, self.vector * alpha, meta)

    def __mul__(self, alpha: float) -> SteeringVector:
        return self.scale(alpha)

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        meta = dict(self.meta)
        if "source" in meta or "target" in meta:  # the flipped direction points the other way
            meta["source"], meta["target"] = self.meta.get("target"), self.meta.get("source")
            meta["n_source"], meta["n_target"] = self.meta.get("n_target"), self.meta.get("n_source")
        return SteeringVector(self.layer, -self.vector, meta)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.layer != self.layer or other.hidden_size != self.hidden_size:
            raise SteeringError(
                f"cannot add a vector for layer {other.layer} (size {other.hidden_size}) to one for layer "
                f"{self.layer} (size {self.hidden_size}): layer and size must match"
            )
        fp_a = _fingerprint(self.meta.get("fingerprint"), "the left vector")
        fp_b = _fingerprint(other.meta.get("fingerprint"), "the right vector")
        if fp_a and fp_b and not fp_a.same_model(fp_b):  # the one definition: hash, layers, width (not the name)
            raise SteeringError(f"cannot add vectors from different models ({fp_a.describe()} vs {fp_b.describe()})")
        meta = {
            "method": "sum",
            "fingerprint": self.meta.get("fingerprint") or other.meta.get("fingerprint"),
            "parts": [self.meta, other.meta],
        }
        return SteeringVector(self.layer, self.vector + other.vector, meta)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + SteeringVector(other.layer, -other.vector, other.meta)

    def random_like(self, seed: int = 0) -> SteeringVector:
        """Return a random direction with the same norm and layer (a control), seeded."""
        gen = torch.Generator().manual_seed(int(seed))
        direction = torch.randn(self.hidden_size, generator=gen)
        meta = {
            "method": "random",
            "seed": int(seed),
            "norm_of": self.meta.get("method"),
            "fingerprint": self.meta.get("fingerprint"),
        }
        return SteeringVector(self.layer, direction / direction.norm() * self.norm, meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Return the path written: one ``.safetensors`` file (tensor ``vector``; layer, meta and sha256 in its header).

        The file is written to a temporary name and renamed (a crash never leaves half a file), with the
        umask's mode; :mod:`llmlatent.steering.file` is the format.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        vector_file.write(path, self.layer, self.vector, self.meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, trust_unverified: bool = False) -> SteeringVector:
        """Return the vector saved at ``path`` by :meth:`save`, verified (safetensors + JSON header; no pickle).

        A file whose sha256 does not match its content, or that is truncated or not a vector file, raises a
        SteeringError naming it. A file without sha256 or without model fingerprint (older versions, other
        tools) is refused unless ``trust_unverified=True``.
        """
        path = Path(path)
        if not path.exists() and path.with_name(path.name + ".safetensors").exists():
            path = path.with_name(path.name + ".safetensors")
        if not path.exists():
            raise SteeringError(f"no steering vector at {path}")
        layer, vector, meta = vector_file.read(path, error=SteeringError, trust_unverified=trust_unverified)
        return cls(layer, vector, meta)

    def check(self, model: Model, *, trust_unverified: bool = False) -> None:
        """Return None if the vector fits ``model`` (layer in range, hidden size, same model); raise SteeringError
        otherwise.

        "Same model" is :func:`llmlatent.adapter.same_model` (unembedding hash, layers, width; the name is
        ignored, so a model loaded by hub id and by local path match). A vector without model fingerprint
        is refused unless ``trust_unverified=True``.
        """
        self.check_shape(model)
        fp = _fingerprint(self.meta.get("fingerprint"), "the steering vector")
        if fp is None and not trust_unverified:
            raise SteeringError(
                "the steering vector has no model fingerprint (meta['fingerprint']), so it cannot be checked "
                f"against {model.name}; {vector_file.TRUST_HINT}"
            )
        if fp is not None:
            own = Fingerprint.of(model.fingerprint())
            if not fp.same_model(own):
                raise SteeringError(f"the steering vector comes from model {fp.describe()}, not from {own.describe()}")

    @contextlib.contextmanager
    def apply(self, model: Model, alpha: float = 1.0, positions: str = "last") -> Iterator[SteeringHook]:
        """Yield a :class:`SteeringHook` while ``alpha · vector`` is added after block ``layer`` of ``model``.

        ``positions``: ``"last"`` = the last real prompt token of each row (left or right padding,
        from the attention mask; a forward that continues a KV cache is left alone), ``"all"`` = every
        position of every forward, ``"generated"`` = the last prompt token and every token a
        ``generate`` call decodes with its KV cache. ``last`` and ``generated`` tell the prompt from
        decode steps by the cache length, so ``generate`` must keep its default ``use_cache=True``.
        The hooks are removed on exit, also after an exception. Raises SteeringError for a layer out of
        range, a size ≠ the model's hidden size, a non-finite α or unknown ``positions``. It checks the
        shape only (cheap, for sweeps); call :meth:`check` once for the model identity.
        """
        self.check_shape(model)
        hook = SteeringHook(model, self.layer, self.vector * check_alpha(alpha), positions)
        try:
            yield hook
        finally:
            hook.remove()

    def check_shape(self, model: Model) -> None:
        """Return None if layer and size fit ``model`` (cheap; no fingerprint); raise SteeringError otherwise."""
        check_layer(self.layer, model.n_layers)
        if self.hidden_size != model.hidden_size:
            raise SteeringError(
                f"the steering vector has size {self.hidden_size} but the model's hidden size is {model.hidden_size}"
            )


load = SteeringVector.load


def _rows(store: LatentStore, concepts: Collection[str] | None) -> torch.Tensor:
    frame = store.prompts
    if concepts is None:
        return torch.ones(len(frame), dtype=torch.bool)
    if "concept" not in frame:
        raise SteeringError(f"the latent store {store.path} has no 'concept' column to select prompts by concept")
    keep = torch.tensor(frame["concept"].isin(list(concepts)).to_numpy())
    if not bool(keep.any()):
        raise SteeringError(f"none of the {len(concepts)} requested concepts is in the latent store {store.path}")
    return keep


def _language(store: LatentStore) -> str | None:
    lang = store.meta.get("tgt")
    if not lang and "tgt" in store.prompts:
        langs = store.prompts["tgt"].dropna().unique().tolist()
        lang = langs[0] if len(langs) == 1 else None
    return lang or None


def mean_difference(
    target_store: LatentStore, source_store: LatentStore, layer: int, *, concepts: Collection[str] | None = None
) -> SteeringVector:
    """Return μ_target − μ_source at ``layer``: the mean last-token latents of two latent stores, subtracted.

    ``concepts`` restricts both stores to prompts of those concepts (e.g. the fit split). The stores
    must come from the same model (:func:`llmlatent.adapter.same_model`: hash, layers, width; a model
    loaded by id and by path is the same model).
    """
    fp_t, fp_s = target_store.fingerprint, source_store.fingerprint
    if not same_model(fp_t, fp_s):
        raise SteeringError(
            f"the latent stores come from different models: {Fingerprint.of(fp_t).describe()} vs "
            f"{Fingerprint.of(fp_s).describe()}"
        )
    layer = check_layer(layer, target_store.n_layers)
    rows_t, rows_s = _rows(target_store, concepts), _rows(source_store, concepts)
    mu_t = target_store.latents(layer)[rows_t].double().mean(0)
    mu_s = source_store.latents(layer)[rows_s].double().mean(0)
    meta = {
        "method": "mean_difference",
        "target": _language(target_store),
        "source": _language(source_store),
        "via": target_store.meta.get("src"),
        "task": target_store.meta.get("task"),
        "n_target": int(rows_t.sum()),
        "n_source": int(rows_s.sum()),
        "fingerprint": Fingerprint.of(fp_t).to_dict(),
    }
    return SteeringVector(layer, (mu_t - mu_s).float(), meta)


def collect_pair(
    model: Model,
    target_prompts: PromptSet,
    source_prompts: PromptSet,
    path: str | os.PathLike,
    *,
    batch_size: int = 16,
    dtype: str = "float32",
    progress: bool = False,
) -> tuple[LatentStore, LatentStore]:
    """Return (target store, source store) collected from two prompt sets into ``path``/target and ``path``/source."""
    from llmlatent import latents

    path = Path(path)
    target = latents.collect(
        model, target_prompts, path / "target", batch_size=batch_size, dtype=dtype, progress=progress
    )
    source = latents.collect(
        model, source_prompts, path / "source", batch_size=batch_size, dtype=dtype, progress=progress
    )
    if target is None or source is None:  # collect() under RANK/WORLD_SIZE: another rank's shards are missing
        raise SteeringError("collect_pair runs in one process; unset WORLD_SIZE/RANK (or collect each store per rank)")
    return target, source


def from_prompts(
    model: Model,
    target_prompts: PromptSet,
    source_prompts: PromptSet,
    path: str | os.PathLike,
    *,
    layers: Collection[int] | None = None,
    concepts: Collection[str] | None = None,
    batch_size: int = 16,
) -> dict[int, SteeringVector]:
    """Return layer → mean-difference vector (target − source), collecting both latent stores under ``path``."""
    target, source = collect_pair(model, target_prompts, source_prompts, path, batch_size=batch_size)
    layers = range(model.n_layers) if layers is None else layers
    return {int(ell): mean_difference(target, source, ell, concepts=concepts) for ell in layers}


# ---------------------------------------------------------------- many settings at once (rows tiled over a prefix)


@dataclass(frozen=True, eq=False)
class Setting:
    """One steering setting: ``alpha · vector`` added after block ``vector.layer``; no vector or α = 0: unsteered.

    ``layer`` is the vector's layer, or None without a vector ("no layer" is None, never ``pd.NA``).
    """

    vector: SteeringVector | None = None
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.vector is not None and not isinstance(self.vector, SteeringVector):
            raise SteeringError(f"a steering setting needs a SteeringVector or None, got {type(self.vector).__name__}")
        object.__setattr__(self, "alpha", check_alpha(self.alpha))

    @property
    def layer(self) -> int | None:
        """Return the block the setting steers after (None: no vector)."""
        return None if self.vector is None else self.vector.layer

    @property
    def steers(self) -> bool:
        """Return True when the setting changes anything (a vector and α ≠ 0)."""
        return self.vector is not None and self.alpha != 0

    @classmethod
    def of(cls, value: Setting | tuple[SteeringVector | None, float]) -> Setting:
        """Return ``value`` as a Setting (a ``(vector, α)`` pair is accepted too)."""
        if isinstance(value, Setting):
            return value
        try:
            vector, alpha = value
        except (TypeError, ValueError):
            raise SteeringError(
                f"a steering setting is Setting(vector, alpha) or (vector, alpha), got {value!r}"
            ) from None
        return cls(vector, alpha)


UNSTEERED = Setting()


@contextlib.contextmanager
def apply_rows(
    model: Model, settings: Sequence[Setting], rows: int, positions: str = "all"
) -> Iterator[list[SteeringHook]]:
    """Yield while setting j adds its ``α · vector`` to rows j·rows … (j+1)·rows − 1 of the batch (copy-major).

    One :class:`SteeringHook` per layer used, holding a [len(settings) · rows, hidden] delta whose other
    rows are zero (adding 0.0 leaves them bit-for-bit unchanged). ``positions`` as in
    :meth:`SteeringVector.apply`. The hooks are removed on exit, also after an exception.
    """
    settings = [Setting.of(x) for x in settings]
    deltas: dict[int, torch.Tensor] = {}
    for j, setting in enumerate(settings):
        if not setting.steers:
            continue
        vector, alpha = setting.vector, setting.alpha
        assert vector is not None  # setting.steers: a vector and α ≠ 0
        vector.check_shape(model)
        delta = deltas.setdefault(vector.layer, torch.zeros(len(settings) * rows, model.hidden_size))
        delta[j * rows : (j + 1) * rows] += vector.vector * float(alpha)  # the same float32 product as apply()
    hooks: list[SteeringHook] = []
    try:
        for layer, delta in deltas.items():
            hooks.append(SteeringHook(model, layer, delta, positions))
        yield hooks
    finally:
        for hook in hooks:
            hook.remove()
