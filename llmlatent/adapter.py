"""Family adapter: where a loaded HF causal LM keeps its blocks, final norm and unembedding.

The logit lens needs three things from a model: the list of transformer blocks (to read the
residual stream after each one), the final norm and the unembedding (to decode a residual into
next-token logits, with final-logit soft-capping where the family has it, e.g. Gemma 2).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from llmlatent.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("unembedding_sha256", "n_layers", "hidden_size")


@dataclass(frozen=True, eq=False)
class Fingerprint(Mapping):
    """A model's identity: display name, blocks, width and a hash of its final norm + unembedding.

    Two fingerprints are the same model (:meth:`same_model`) when hash, layers and width agree; the
    name is for display only, so a model loaded by hub id and by local path is the same model.
    It reads like its JSON dict (``fp["n_layers"]``, ``dict(fp)``); files hold :meth:`to_dict`.
    Equality (``==``) compares every field including the name, like the dicts it replaces (so a stored
    dict equals it); use :meth:`same_model` for "same weights".
    """

    model: str
    n_layers: int
    hidden_size: int
    unembedding_sha256: str

    @classmethod
    def of(cls, value: Fingerprint | Mapping) -> Fingerprint:
        """Return ``value`` as a Fingerprint (from a stored JSON dict or a Fingerprint)."""
        if isinstance(value, Fingerprint):
            return value
        return cls(
            model=str(value.get("model", "")),
            n_layers=int(value["n_layers"]),
            hidden_size=int(value["hidden_size"]),
            unembedding_sha256=str(value["unembedding_sha256"]),
        )

    def to_dict(self) -> dict:
        """Return the JSON-able dict form (as stored in run.json, store.json, vector metadata)."""
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "unembedding_sha256": self.unembedding_sha256,
        }

    def __eq__(self, other: object) -> bool:
        """Return True when ``other`` (a Fingerprint or its dict form) has the same four fields."""
        if isinstance(other, Mapping):
            return dict(self) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        """Return a hash of the four fields."""
        return hash(tuple(self.to_dict().values()))

    def __getitem__(self, key: str) -> str | int:
        """Return one field by its JSON key (read-only Mapping view of :meth:`to_dict`)."""
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        """Return an iterator over the JSON keys."""
        return iter(_FIELDS)

    def __len__(self) -> int:
        """Return the number of JSON keys (4)."""
        return len(_FIELDS)

    def same_model(self, other: Fingerprint | Mapping) -> bool:
        """Return True when ``other`` identifies the same weights (hash, layers, width; the name is ignored)."""
        other = Fingerprint.of(other)
        return all(getattr(self, k) == getattr(other, k) for k in IDENTITY_KEYS)

    def describe(self) -> str:
        """Return a one-line description: name, layers × width, hash."""
        return f"{self.model} ({self.n_layers} layers × {self.hidden_size}, unembedding {self.unembedding_sha256})"


_FIELDS = ("model", "n_layers", "hidden_size", "unembedding_sha256")


def same_model(a: Fingerprint | Mapping, b: Fingerprint | Mapping) -> bool:
    """Return True when two fingerprints (Fingerprint or stored dict) identify the same model: the one definition."""
    return Fingerprint.of(a).same_model(b)


# Attribute paths tried in order; the first that exists wins.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma 1/2/3, Phi-3, OLMo ...
    "model.language_model.layers",  # Gemma 3 multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "transformer.norm_f",
)

# Families whose transformers implementation returns the *normalised* residual as
# hidden_states[-1] (all raw block outputs otherwise). Checked by tests for each family.
LAST_HIDDEN_NORMALISED = {"llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3", "gemma3_text", "gpt2"}


def get_path(obj: object, path: str) -> object | None:
    """Return the attribute at a dotted path, or None when any step is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def norm_scale(norm: nn.Module) -> torch.Tensor:
    """Return the per-dimension scale a final norm applies (handles Gemma's ``1 + weight``)."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        raise ModelLoadError(f"final norm {type(norm).__name__} has no weight")
    if isinstance(norm, nn.LayerNorm):
        return weight.detach().float()
    # RMS-style norms: norm(ones) = scale / sqrt(1 + eps) -> recover the effective scale.
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)) or 0.0)
    with torch.no_grad():
        ones = torch.ones(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)
        return (norm(ones)[0].float() * (1.0 + eps) ** 0.5).detach()


@dataclass(frozen=True)
class Float32Head:
    """A float32 copy of a final norm and unembedding (weight [vocab, hidden], optional bias), and what it copied."""

    norm: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    key: tuple


def _copyable(module: nn.Module) -> bool:
    """Return True when a module's parameters are ordinary floating-point tensors (not quantised, offloaded or meta)."""
    params = list(module.parameters())
    return not hasattr(module, "_hf_hook") and all(
        p.is_floating_point() and p.device.type != "meta" and type(p) in (torch.Tensor, nn.Parameter) for p in params
    )


class Unembedding(nn.Module):
    """Final norm + unembedding (+ soft-capping): decodes residual-stream vectors into logits."""

    def __init__(self, final_norm: nn.Module, head: nn.Module, softcap: float | None = None) -> None:
        super().__init__()
        self.final_norm = final_norm
        self.head = head
        self.softcap = softcap
        self._energy_gram: torch.Tensor | None = None
        self._float32: Float32Head | None = None

    @property
    def weight(self) -> torch.Tensor:
        """Return the unembedding matrix [vocab, hidden]."""
        return cast(torch.Tensor, self.head.weight)  # torch types Module attributes Tensor | Module

    @property
    def vocab_size(self) -> int:
        """Return the number of rows of the unembedding."""
        return int(cast(torch.Tensor, self.head.weight).shape[0])

    def float32(self) -> Float32Head | None:
        """Return the float32 copy of the final norm and head the lens decodes with (None if the head cannot be copied).

        Precision trick: a bf16/fp16 model's lens logits are computed from float32 hidden states
        through a float32 copy of the final norm and the unembedding, so that the logits, the
        softmax and every probability are float32 end to end (bf16 logits of a 7B model are off
        by ~1e-2 in absolute value, which moves small probabilities by percents). The copy is made
        once (on float32 models the tensors themselves are used, no copy) and is bound to the
        weights it copied: their storage, dtype and in-place version counters form its key, so any
        change of the norm or head rebuilds it. It costs one float32 matrix on the head's device
        (0.5 GB for Llama-2-7B's 32,000 × 4,096), and the float32 matmul about 1% of a forward.
        Quantised or offloaded heads (8-bit, ``device_map`` offloading) cannot be copied: then
        the head runs in its own dtype on float32-normed input cast to it, and its logits are
        converted to float32 (the README says so).
        """
        plain = type(self.head).forward is nn.Linear.forward  # F.linear below must equal the head's forward
        if not (plain and _copyable(self.head) and _copyable(self.final_norm)):
            return None
        weight = cast(torch.Tensor, self.head.weight)  # a Linear's weight (plain, checked above)
        bias = getattr(self.head, "bias", None)
        tensors = [weight, *([bias] if bias is not None else []), *self.final_norm.parameters()]
        key = tuple((t.data_ptr(), t._version, t.dtype, str(t.device)) for t in tensors)
        if self._float32 is None or self._float32.key != key:
            with torch.no_grad():
                if all(t.dtype == torch.float32 for t in tensors):
                    norm, w32, b32 = self.final_norm, weight, bias
                else:
                    norm = copy.deepcopy(self.final_norm).float()
                    w32 = weight.detach().float()
                    b32 = None if bias is None else bias.detach().float()
            self._float32 = Float32Head(norm, w32, b32, key)
        return self._float32

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """Return the final norm of raw residuals ``h`` in float32 (in the head's dtype if it cannot be copied)."""
        parts = self.float32()
        if parts is None:
            return self.final_norm(h.to(cast(torch.Tensor, self.head.weight).dtype))
        return parts.norm(h.float())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Return float32 logits of raw residuals ``h`` [..., hidden] (float32 norm and head, see :meth:`float32`)."""
        parts = self.float32()
        if parts is None:
            logits = self.head(self.normed(h)).float()
        else:
            logits = nn.functional.linear(parts.norm(h.float()), parts.weight, parts.bias)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def fingerprint(self) -> str:
        """Return a short sha256 of the final-norm and unembedding weights (identifies a model)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(name.encode())
            digest.update(str(tuple(t.shape)).encode())
            # a strided sample keeps hashing a 262k x 4096 matrix fast, yet any re-training changes it
            flat = t.reshape(-1)
            step = max(1, flat.numel() // 1_000_003)
            digest.update(flat[::step].numpy().tobytes())
        digest.update(str(self.softcap).encode())
        return digest.hexdigest()[:16]

    def energy_gram(self) -> torch.Tensor:
        """Return G = Uᵀ U / V for the norm-weighted, row-normalised unembedding U (float32, cached)."""
        if self._energy_gram is None:
            w = cast(torch.Tensor, self.head.weight)  # torch types Module attributes Tensor | Module
            scale = norm_scale(self.final_norm).to(w.device)
            d = w.shape[1]
            gram = torch.zeros(d, d, dtype=torch.float32, device=w.device)
            with torch.no_grad():
                for start in range(0, w.shape[0], 16384):
                    u = w[start : start + 16384].float() * scale
                    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    gram += u.T @ u
            self._energy_gram = gram / w.shape[0]
        return self._energy_gram


@dataclass(frozen=True, eq=False)
class LoadedHead:
    """A model's final norm + unembedding loaded without the model (:func:`llmlatent.model.load_unembedding`).

    ``name`` is the model's display name, ``tokenizer`` its tokenizer (None when the model has no
    tokenizer files; pass ``tokenizer=`` to :func:`llmlatent.lens.last_token.from_latents` then), ``config`` its
    HF config.
    """

    unembedding: Unembedding
    name: str
    tokenizer: PreTrainedTokenizerBase | None
    config: object

    def fingerprint(self) -> Fingerprint:
        """Return the model's :class:`Fingerprint` (blocks from its config): what the loaded model's would be."""
        return Fingerprint(
            model=self.name,
            n_layers=int(getattr(text_config(self.config), "num_hidden_layers", 0) or 0),
            hidden_size=int(cast(torch.Tensor, self.unembedding.head.weight).shape[1]),
            unembedding_sha256=self.unembedding.fingerprint(),
        )


def text_config(config: object) -> object:
    """Return the text part of an HF config (``get_text_config()`` of multimodal wrappers), else the config itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass
class Adapter:
    """Where a model keeps its blocks and unembedding; built by :func:`adapter_for`."""

    blocks: nn.ModuleList
    unembedding: Unembedding
    last_hidden_normalised: bool
    family: str = "unknown"

    @property
    def n_layers(self) -> int:
        """Return the number of transformer blocks."""
        return len(self.blocks)


def adapter_for(hf_model: nn.Module, *, blocks: str | None = None, final_norm: str | None = None) -> Adapter:
    """Return the :class:`Adapter` of a loaded HF causal LM, or raise one clear ModelLoadError."""
    family = str(getattr(getattr(hf_model, "config", None), "model_type", "unknown"))
    block_paths = (blocks,) if blocks else BLOCK_PATHS
    norm_paths = (final_norm,) if final_norm else NORM_PATHS
    found_blocks = next((get_path(hf_model, p) for p in block_paths if get_path(hf_model, p) is not None), None)
    found_norm = next((get_path(hf_model, p) for p in norm_paths if get_path(hf_model, p) is not None), None)
    # torch types Module attributes Tensor | Module: get_output_embeddings is the HF method
    head = (
        cast("Callable[[], nn.Module | None]", hf_model.get_output_embeddings)()
        if hasattr(hf_model, "get_output_embeddings")
        else None
    )
    missing = []
    if not isinstance(found_blocks, nn.ModuleList):
        missing.append(f"blocks (tried {', '.join(block_paths)})")
    if not isinstance(found_norm, nn.Module):
        missing.append(f"final norm (tried {', '.join(norm_paths)})")
    if head is None or getattr(head, "weight", None) is None:
        missing.append("unembedding (get_output_embeddings() returned nothing)")
    if missing:
        raise ModelLoadError(
            f"unsupported architecture {type(hf_model).__name__} ({family}): could not find "
            + "; ".join(missing)
            + ". Pass the attribute paths explicitly, e.g. load(name, blocks='model.layers', final_norm='model.norm')."
        )
    softcap = getattr(text_config(hf_model.config), "final_logit_softcapping", None)
    # the checks above raised unless found_blocks is a ModuleList, found_norm a Module and head a Module
    return Adapter(
        blocks=cast(nn.ModuleList, found_blocks),
        unembedding=Unembedding(
            cast(nn.Module, found_norm), cast(nn.Module, head), float(softcap) if softcap else None
        ),
        last_hidden_normalised=family in LAST_HIDDEN_NORMALISED,
        family=family,
    )
