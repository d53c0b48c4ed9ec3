"""Steered runs: last-token forwards and greedy generations under many steering settings at once.

A setting is :class:`llmlatent.steering.vector.Setting` ``(vector, α)``; no vector or α = 0: unsteered (a plain
``(vector, α)`` pair is taken as one). Each adds
``α · vector`` after block ``vector.layer`` at the last prompt token (generations: also at every decoded
token). All settings share one :class:`~llmlatent.prefix.Prefix`, the KV cache of the prompts without
their last token, and up to ``max_rows`` rows (settings × prompts) run as one forward: the rows of
setting j are copy j of the prompts (:func:`llmlatent.steering.vector.apply_rows`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import torch

from llmlatent.errors import SteeringError
from llmlatent.prefix import Prefix, cache_kwarg
from llmlatent.steering.vector import Setting, SteeringVector, apply_rows, check_count

if TYPE_CHECKING:
    from llmlatent.model import Model


def _intervention(
    model: Model, settings: Sequence[Setting], rows: int
) -> Callable[[dict], contextlib.AbstractContextManager]:
    """Return the hooks for one forward of ``settings`` × ``rows``: the fed last token, or the prompts' last one."""

    def hooks(batch: dict) -> contextlib.AbstractContextManager:
        only_last = batch["input_ids"].shape[1] == 1 or not (
            batch.get("cache") is None and batch.get("past_key_values") is None
        )
        return apply_rows(model, settings, rows, "all" if only_last else "last")

    return hooks


def steered_final(model: Model, prefix: Prefix, settings: Sequence[Setting], *, max_rows: int = 256) -> torch.Tensor:
    """Return the last block's output at the last prompt token per setting [len(settings), rows, hidden] (float32).

    Each setting adds ``α · vector`` at the last prompt token only, so one :class:`~llmlatent.prefix.Prefix`
    serves them all; up to ``max_rows`` rows (settings × prompts) run as one forward of the last token.
    Decode with :func:`llmlatent.lens.decode.decode`: the distribution the model's own head gives
    (tests/test_steering.py checks it against full steered forwards).
    """
    settings = [Setting.of(x) for x in settings]
    parts = []
    step = prefix.copies_per_forward(len(settings), max_rows)
    for start in range(0, len(settings), step):
        part = settings[start : start + step]
        final = prefix.final(len(part), _intervention(model, part, prefix.rows))
        parts.append(final.reshape(len(part), prefix.rows, -1).cpu())
    return torch.cat(parts)


def generate_many(
    model: Model,
    prompts: Sequence[str] | Mapping[str, torch.Tensor] | Prefix,
    settings: Sequence[Setting],
    *,
    max_new_tokens: int = 8,
    positions: str = "generated",
    max_rows: int = 256,
) -> list[list[str]]:
    """Return, per setting, the greedy continuations (decoded, special tokens skipped) of every prompt.

    ``prompts``: texts, inputs made by ``model.encode``, or a :class:`~llmlatent.prefix.Prefix` whose
    cache is continued (and left as it was). Up to ``max_rows`` rows (settings × prompts) are decoded
    together in one ``generate`` call; each row is steered by its own setting. ``positions`` as in
    :meth:`SteeringVector.apply`: ``"generated"`` steers the last prompt token and every decoded
    token, ``"last"`` only the last prompt token (use it without a prefix cache).
    """
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens", minimum=1)
    if isinstance(prompts, Prefix):
        prefix = prompts
    else:
        inputs = dict(prompts) if isinstance(prompts, Mapping) else model.encode(list(prompts))
        prefix = Prefix(model, inputs, reuse=False)
    if positions == "last" and prefix.cache is not None:
        raise SteeringError('positions="last" steers the prompt forward, which a prefix cache skips; use "generated"')
    settings, tok, out = [Setting.of(x) for x in settings], model.tokenizer, []
    step = prefix.copies_per_forward(len(settings), max_rows)
    for start in range(0, len(settings), step):
        part = settings[start : start + step]
        ids = _generate_part(model, prefix, part, max_new_tokens, positions)
        texts = [cast(str, tok.decode(row, skip_special_tokens=True)) for row in ids[:, prefix.width :]]
        out += [texts[j * prefix.rows : (j + 1) * prefix.rows] for j in range(len(part))]
    return out


@overload
def _generate_part(
    model: Model, prefix: Prefix, part: Sequence[Setting], max_new_tokens: int, positions: str
) -> torch.Tensor: ...
@overload
def _generate_part(
    model: Model, prefix: Prefix, part: Sequence[Setting], max_new_tokens: int, positions: str, logits: Literal[True]
) -> tuple[torch.Tensor, torch.Tensor]: ...
def _generate_part(
    model: Model, prefix: Prefix, part: Sequence[Setting], max_new_tokens: int, positions: str, logits: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Return the greedy ids of ``part``'s copies of the prompts (with ``logits``: also the first step's logits)."""
    with prefix.cached(len(part)) as cache, torch.inference_mode():
        kwargs: dict[str, Any] = {k: v.repeat(len(part), 1) for k, v in prefix.inputs.items() if k != "position_ids"}
        if cache is not None:
            kwargs[cache_kwarg(model)] = cache
        with apply_rows(model, part, prefix.rows, positions):
            generate = cast("Callable[..., Any]", model.hf.generate)  # torch types Module attributes Tensor | Module
            out = generate(
                **kwargs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=model.tokenizer.pad_token_id,
                output_logits=logits,
                return_dict_in_generate=logits,
            )
    return (out.sequences, out.logits[0]) if logits else out


@dataclass
class Scored:
    """Greedy generations of many settings and their first step: ``texts[j][i]``, ``p[name]`` and ``top1`` [S, rows]."""

    texts: list[list[str]]
    p: dict[str, torch.Tensor]
    top1: torch.Tensor


def generate_scored(
    model: Model,
    prefix: Prefix,
    settings: Sequence[Setting],
    sets: Mapping[str, Sequence[Sequence[int]]],
    *,
    max_new_tokens: int = 4,
    max_rows: int = 256,
) -> Scored:
    """Return the greedy generations of every setting and, from their first step, p(token set) per row and the top-1.

    Steered as :func:`generate_many` with ``positions="generated"`` (one tiled prefix cache, up to
    ``max_rows`` rows per ``generate`` call). ``sets[name][i]`` is a token-id set of prompt row i; its
    probability is summed from the float32 softmax of the first step's logits (the model's own head), which
    is the next-token distribution of the steered prompt (tests/test_steerbench.py checks it against full
    steered forwards). The top-1 is the first greedy token.
    """
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens", minimum=1)
    settings, tok = [Setting.of(x) for x in settings], model.tokenizer
    texts: list[list[str]] = []
    p: dict[str, list[torch.Tensor]] = {name: [] for name in sets}
    top1: list[torch.Tensor] = []
    step = prefix.copies_per_forward(len(settings), max_rows)
    for start in range(0, len(settings), step):
        part = settings[start : start + step]
        ids, logits = _generate_part(model, prefix, part, max_new_tokens, "generated", logits=True)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        for name, per_row in sets.items():
            mass = [probs[r, list(per_row[r % prefix.rows])].sum() for r in range(probs.shape[0])]
            p[name].append(torch.stack(mass).reshape(len(part), prefix.rows))
        top1.append(ids[:, prefix.width].cpu().reshape(len(part), prefix.rows))
        decoded = [cast(str, tok.decode(row, skip_special_tokens=True)) for row in ids[:, prefix.width :]]
        texts += [decoded[j * prefix.rows : (j + 1) * prefix.rows] for j in range(len(part))]
    return Scored(texts, {k: torch.cat(v) for k, v in p.items()}, torch.cat(top1))


def generate(
    model: Model,
    prompts: Sequence[str] | Mapping[str, torch.Tensor] | Prefix,
    vector: SteeringVector | None = None,
    alpha: float = 1.0,
    *,
    max_new_tokens: int = 8,
    positions: str = "generated",
) -> list[str]:
    """Return the greedy continuations (decoded, special tokens skipped) of ``prompts``, steered by ``alpha · vector``.

    ``prompts``: texts, inputs already made by ``model.encode``, or a :class:`~llmlatent.prefix.Prefix`
    (its cache is continued and cropped back, so it can be reused). ``positions`` as in
    :meth:`SteeringVector.apply`: ``"generated"`` steers the last prompt token and every decoded
    token, ``"last"`` only the last prompt token. No vector (or α = 0) gives the unsteered greedy answer.
    """
    setting = Setting(vector, alpha)
    return generate_many(model, prompts, [setting], max_new_tokens=max_new_tokens, positions=positions)[0]
