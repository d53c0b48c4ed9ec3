"""The lens at every position of a text, and along a greedy generation, as tidy rows.

Two modes, one row layout (one row per position × layer × rank):

* :func:`positions`: one forward of a text; hooks keep every block's output at every position.
* :func:`generation`: a greedy generation with a KV cache. The hidden states decoded for generated token
  s are those of the decode step that produced it: the prompt's forward for s = 0 (its last position),
  then the one new position of step s's cached forward. The model's own logits pick the token, so at the
  last layer the lens's top-1 is the generated token (tests check it, and check every step against one
  full forward of the final text).

Columns: ``prompt_id, position`` (index of the decoded hidden state in the prompt's own tokens, padding not
counted; the lens there predicts the token at ``position + 1``), ``input_token`` (the token at
``position``), generation only: ``step`` and ``generated_token`` (the token that step produced), then
``layer, rank, token_id, token, probability, entropy, script`` (:func:`llmlatent.languages.scripts.script`),
``lang_tags`` (the ``|``-joined names of the word sets containing the token) and, per word set ``name``,
``in_<name>`` (the decoded token is in the set) and ``p_<name>`` (the probability mass of the set; the
same on every rank of a position × layer). Share of English among the layer-ℓ top-1 decodings:
``rows[rows["rank"] == 1].groupby("layer")["in_en"].mean()``.

Every decoding goes through ``of(model)`` (:func:`llmlatent.lens.base.of`) with
:func:`llmlatent.lens.decode.decode` (float32, streamed over the vocabulary). Hooks live only inside
:func:`llmlatent.capture.capture_last`'s ``with`` block, so they are removed after an exception too.
Prompts generated together are left-padded; results do not depend on the batch size or the padding
(tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch

from llmlatent import checks
from llmlatent.capture import capture_last, check_captured
from llmlatent.errors import UsageError
from llmlatent.languages.scripts import concepts_in, lang_tags, script, word_sets
from llmlatent.lens.base import of
from llmlatent.lens.decode import decode
from llmlatent.prefix import cache_kwarg

if TYPE_CHECKING:
    from llmlatent.model import Model

WordSets = Mapping[str, Sequence[int]]  # name → token ids (the p_<name> / in_<name> columns)


@dataclass(frozen=True)
class Generation:
    """A greedy generation's lens rows and, per prompt, the generated token ids and text."""

    rows: pd.DataFrame
    token_ids: list[list[int]]  # per prompt, the generated ids (through the first end-of-sequence token)
    texts: list[str]  # per prompt, the generated text (special tokens skipped)


def _per_prompt(sets: WordSets | Sequence[WordSets] | None, n: int) -> list[dict[str, list[int]]]:
    """Return one name → ids mapping per prompt (a single mapping is shared by all; None: no sets)."""
    if sets is None:
        return [{} for _ in range(n)]
    if isinstance(sets, Mapping):
        return [{k: list(v) for k, v in sets.items()} for _ in range(n)]
    sets = list(sets)
    if len(sets) != n or len({tuple(s) for s in sets}) > 1:
        raise UsageError(f"sets: give one mapping for all prompts, or {n} mappings with the same names")
    return [{k: list(v) for k, v in s.items()} for s in sets]


def _frame(
    model: Model,
    hidden: torch.Tensor,
    layers: torch.Tensor,
    index: pd.DataFrame,
    sets: list[dict[str, list[int]]],
    k: int,
) -> pd.DataFrame:
    """Return the tidy rows of ``hidden`` [N, hidden] (block ``layers`` [N]); ``index`` holds each row's leading
    columns, ``sets`` each row's word sets."""
    names = list(sets[0]) if sets else []
    stats = decode(of(model), hidden, {n: [s[n] for s in sets] for n in names}, k=k, energy=False, layers=layers)
    top_ids = stats["top_ids"].reshape(-1).tolist()
    vocab = {t: cast(str, model.tokenizer.decode([t])) for t in set(top_ids)}  # ids in, one text out
    out = index.loc[index.index.repeat(k)].reset_index(drop=True)
    out["layer"] = np.repeat(layers.numpy(), k)
    out["rank"] = np.tile(np.arange(1, k + 1), len(index))
    out["token_id"] = top_ids
    out["token"] = [vocab[t] for t in top_ids]
    out["probability"] = stats["top_probs"].reshape(-1).double().numpy()
    out["entropy"] = np.repeat(stats["entropy"].double().numpy(), k)
    out["script"] = [script(vocab[t]) for t in top_ids]
    row_sets = [s for s in sets for _ in range(k)]
    out["lang_tags"] = [lang_tags([t], s)[0] for t, s in zip(top_ids, row_sets)]
    for name in names:
        out[f"in_{name}"] = [t in s[name] for t, s in zip(top_ids, row_sets)]
        out[f"p_{name}"] = np.repeat(stats[f"p_{name}"].double().numpy(), k)
    return out


def positions(model: Model, text: str | Sequence[int], sets: WordSets | None = None, *, k: int = 5) -> pd.DataFrame:
    """Return the lens rows of every position × layer × rank of one text (or token ids); see the module docstring.

    One forward with hooks on every block's output at every position; ``sets`` name → token ids add the
    ``p_<name>``/``in_<name>`` columns.
    """
    checks.count(k, "k", flag="-k", maximum=model.unembedding.vocab_size)
    if isinstance(text, str):
        inputs = model.encode([text])
    else:
        given = torch.as_tensor(list(text), dtype=torch.long)[None].to(model.device)
        if given.shape[1] == 0:
            raise UsageError("no tokens to decode")
        inputs = {"input_ids": given, "attention_mask": torch.ones_like(given)}
        inputs["position_ids"] = torch.arange(given.shape[1], device=given.device)[None]
    ids = inputs["input_ids"][0].tolist()
    n = len(ids)
    with torch.inference_mode(), capture_last(model, torch.arange(n)[None]) as captured:
        model.run(inputs, logits_to_keep=1, use_cache=False)
    check_captured(captured, model.n_layers)
    hidden = torch.stack([c[0].to(captured[0].device) for c in captured], dim=1)  # [positions, layers, hidden]
    names = {t: model.tokenizer.decode([t]) for t in set(ids)}
    index = pd.DataFrame(
        {
            "prompt_id": 0,
            "position": np.repeat(np.arange(n), model.n_layers),
            "input_token": [names[t] for t in ids for _ in range(model.n_layers)],
        }
    )
    layers = torch.arange(model.n_layers).repeat(n)  # position-major rows
    row_sets = _per_prompt(sets, 1) * (n * model.n_layers)
    return _frame(model, hidden.reshape(-1, hidden.shape[-1]), layers, index, row_sets, k)


def _step(model: Model, batch: dict, cache: object | None) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Return (each row's last-position block outputs [B, layers, hidden], its model logits [B, V], the cache)."""
    last = torch.full((batch["input_ids"].shape[0],), batch["input_ids"].shape[1] - 1)
    kwargs = dict(batch)
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    with torch.inference_mode(), capture_last(model, last) as captured:
        out = model.run(kwargs, use_cache=True, logits_to_keep=1)
    check_captured(captured, model.n_layers)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return torch.stack([c.to(captured[0].device) for c in captured], dim=1), out.logits[:, -1].float(), cache


def _greedy(model: Model, prompts: list[str], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Return (hidden [B, steps, layers, hidden] of every decode step, generated ids [B, steps], the prompt inputs)."""
    inputs = model.encode(prompts)
    batch, cache, hidden, chosen = dict(inputs), None, [], []
    eos = model.tokenizer.eos_token_id
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for _ in range(max_new_tokens):
        h, logits, cache = _step(model, batch, cache)
        next_ids = logits.argmax(-1).to(batch["input_ids"].device)  # (the head may sit on another device)
        hidden.append(h.cpu())
        chosen.append(next_ids.cpu())
        done |= chosen[-1] == (-1 if eos is None else eos)
        if bool(done.all()):
            break
        mask = torch.cat([batch["attention_mask"], torch.ones_like(next_ids)[:, None]], dim=1)
        batch = {
            "input_ids": next_ids[:, None],
            "attention_mask": mask,
            "position_ids": batch["position_ids"][:, -1:] + 1,
        }
    return torch.stack(hidden, dim=1), torch.stack(chosen, dim=1), inputs


def generation(
    model: Model,
    prompts: str | Sequence[str],
    sets: WordSets | Sequence[WordSets] | None = None,
    *,
    max_new_tokens: int = 8,
    k: int = 5,
    batch_size: int = 8,
) -> Generation:
    """Return the lens rows of every generated token × layer × rank of greedy generations from ``prompts``.

    ``sets``: one name → token ids mapping for every prompt, or one mapping per prompt (same names).
    Generation stops after ``max_new_tokens`` or at the end-of-sequence token (kept, nothing after it).
    Up to ``batch_size`` prompts generate together (left-padded; the numbers do not depend on it).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    checks.count(max_new_tokens, "max_new_tokens", flag="--generate")
    checks.count(k, "k", flag="-k", maximum=model.unembedding.vocab_size)
    checks.count(batch_size, "batch_size")
    if not prompts:
        raise UsageError("no prompts to generate from")
    per_prompt = _per_prompt(sets, len(prompts))
    frames, all_ids, texts = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(range(start, min(len(prompts), start + batch_size)))
        hidden, chosen, inputs = _greedy(model, [prompts[i] for i in chunk], max_new_tokens)
        index, rows, row_sets = [], [], []
        for row, i in enumerate(chunk):
            ids = _until_eos(chosen[row].tolist(), model.tokenizer.eos_token_id)
            prompt_ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            index.append(_generation_index(model, i, prompt_ids, ids, model.n_layers))
            rows.append(hidden[row, : len(ids)].reshape(-1, hidden.shape[-1]))  # step-major: layer = row mod layers
            row_sets += [per_prompt[i]] * len(index[-1])
            all_ids.append(ids)
            texts.append(cast(str, model.tokenizer.decode(ids, skip_special_tokens=True)))
        # the whole chunk's rows decoded together (one wide GEMM per vocabulary slice; the numbers are per row)
        index = pd.concat(index, ignore_index=True)
        frames.append(
            _frame(
                model,
                torch.cat(rows),
                torch.tensor(index["layer"].to_numpy()),
                index.drop(columns="layer"),
                row_sets,
                k,
            )
        )
    return Generation(pd.concat(frames, ignore_index=True), all_ids, texts)


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    """Return ``ids`` through the first ``eos`` (all of them when there is none)."""
    return ids[: ids.index(eos) + 1] if eos is not None and eos in ids else ids


def _generation_index(
    model: Model, prompt_id: int, prompt_ids: list[int], generated: list[int], n_layers: int
) -> pd.DataFrame:
    """Return the leading columns of one prompt's generation rows (step-major, then layer)."""
    sequence = prompt_ids + generated
    names = {t: model.tokenizer.decode([t]) for t in set(sequence)}
    step = np.repeat(np.arange(len(generated)), n_layers)
    position = len(prompt_ids) - 1 + step
    return pd.DataFrame(
        {
            "prompt_id": prompt_id,
            "position": position,
            "input_token": [names[sequence[p]] for p in position],
            "step": step,
            "generated_token": [names[generated[s]] for s in step],
            "layer": np.tile(np.arange(n_layers), len(generated)),
        }
    )


def words_generation(
    model: Model,
    prompt: str,
    langs: Sequence[str],
    *,
    concepts: Sequence[str] | None = None,
    words_dir: str | Path | None = None,
    **kwargs: int,
) -> Generation:
    """Return :func:`generation` of one prompt with a word set per language: the words of ``concepts`` in it.

    ``concepts`` default to those whose word in any of ``langs`` occurs in the prompt
    (:func:`llmlatent.languages.scripts.concepts_in`); the sets give the ``p_<lang>``/``in_<lang>`` columns.
    ``kwargs`` go to :func:`generation` (``max_new_tokens``, ``k``).
    """
    chosen = list(concepts) if concepts is not None else concepts_in(prompt, langs, words_dir)
    return generation(model, prompt, word_sets(model.tokenizer, chosen, langs, words_dir), **kwargs)


def language_share(rows: pd.DataFrame, rank: int = 1) -> pd.DataFrame:
    """Return, per layer, the share of rank-``rank`` decodings in each word set (``in_<name>`` columns) and script."""
    top = rows[rows["rank"] == rank]
    share = top.groupby("layer")[[c for c in top.columns if c.startswith("in_")]].mean()
    share.columns = [c.removeprefix("in_") for c in share.columns]
    scripts = pd.crosstab(top["layer"], top["script"], normalize="index")
    return share.join(scripts.add_prefix("script_"))
