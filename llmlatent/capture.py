"""Capturing block outputs at chosen positions, last-position bookkeeping and length-bucketed batching.

Hooks are registered on the blocks only for the duration of a ``with`` block and always removed;
modules are never replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from llmlatent.checks import count
from llmlatent.errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from llmlatent.model import Model


def check_left_padded(inputs: Mapping[str, torch.Tensor]) -> None:
    """Return None if the last column is every row's last real token (left padding); raise UsageError otherwise."""
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise UsageError("the tokenizer must pad on the left so that the last position is the last prompt token")


def check_captured(captured: Sequence[torch.Tensor], n_layers: int) -> None:
    """Return None if one forward captured exactly ``n_layers`` block outputs; raise ModelLoadError otherwise."""
    if len(captured) != n_layers:
        raise ModelLoadError(f"captured {len(captured)} block outputs, expected {n_layers}")


def block_output(output: Any) -> torch.Tensor:
    """Return the hidden-state tensor of a block's forward output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the index of the last real token of each row (left or right padding)."""
    t = attention_mask.shape[1]
    return t - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)


@contextlib.contextmanager
def capture_last(
    model: Model,
    last: torch.Tensor,
    blocks: Sequence[torch.nn.Module] | None = None,
) -> Iterator[list[torch.Tensor]]:
    """Yield a list that fills, during one forward, with each block's output at rows' ``last`` index.

    ``last`` is [B] (one position per row: captures are [B, hidden]) or [B, P] (P positions per row: [B, P, hidden]).
    ``blocks``: the blocks to capture, in order (default: every block of the model).
    """
    captured: list[torch.Tensor] = []
    rows = torch.arange(last.shape[0])
    if last.dim() == 2:
        rows = rows[:, None]

    def hook(_module: torch.nn.Module, _args: object, output: object) -> None:
        h = block_output(output)
        captured.append(h[rows.to(h.device), last.to(h.device)].detach())

    handles = [block.register_forward_hook(hook) for block in (model.adapter.blocks if blocks is None else blocks)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_last(model: Model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (latents [B, layers, hidden] at the last real token, the model's own last-token logits [B, V])."""
    inputs = model.encode(list(prompts))
    check_left_padded(inputs)
    last = last_positions(inputs["attention_mask"])
    with torch.inference_mode(), capture_last(model, last) as captured:
        out = model.run(inputs, logits_to_keep=1, use_cache=False)
    logits = out.logits[:, -1]
    check_captured(captured, model.n_layers)
    return torch.stack([c.to(captured[0].device) for c in captured], dim=1), logits.float()


def batched(order: list[int], batch_size: int) -> Iterator[list[int]]:
    """Return an iterator over consecutive slices of ``order`` of at most ``batch_size`` indices."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def length_order(model: Model, prompts: Sequence[str]) -> list[int]:
    """Return prompt indices sorted by token length (less padding per batch; results do not depend on it)."""
    lengths = [len(ids) for ids in model.tokenizer(list(prompts))["input_ids"]]
    return sorted(range(len(prompts)), key=lambda i: (lengths[i], i))


# a batch is closed before its padded size (rows × longest prompt) would exceed this multiple of its real
# tokens: similar lengths batch as before, but 2 short prompts are never padded to one 5,000-token prompt
MAX_PADDING_RATIO = 2.0


def length_batches(
    model: Model, prompts: Sequence[str], batch_size: int, max_padding_ratio: float = MAX_PADDING_RATIO
) -> list[list[int]]:
    """Return batches of prompt indices: by token length, ≤ ``batch_size`` each, split where padding would dominate.

    A batch also ends before the next (longer) prompt when ``rows × its length`` would exceed
    ``max_padding_ratio`` × the batch's real tokens. Results do not depend on the batching (left padding
    with an attention mask); only the time and memory do.
    """
    count(batch_size, "batch_size")
    lengths = [len(ids) for ids in model.tokenizer(list(prompts))["input_ids"]]
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(prompts)), key=lambda i: (lengths[i], i)):
        padded = (len(current) + 1) * lengths[i]  # sorted: the new prompt is the longest
        if current and (len(current) >= batch_size or padded > max_padding_ratio * (real + lengths[i])):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches
