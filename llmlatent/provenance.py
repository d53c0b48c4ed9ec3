"""What exactly a result was computed from: a digest of the prompts and their token sets, and the sets as a table.

A sweep's cache key holds :func:`prompts_digest`; its prompts.csv is :func:`sets_table` (every set as ids and as
vocabulary strings), so a reader sees which tokens each probability summed.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from llmlatent.tokens import set_columns

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from llmlatent.tasks import PromptSet


def sets_table(prompts: PromptSet, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """Return the prompt table with each token set as JSON lists of ids and of vocabulary strings.

    Columns ``target_ids``/``target_tokens``, ``english_ids``/``english_tokens`` and
    ``source_ids``/``source_tokens`` (empty where p_source is undefined) record exactly which tokens
    each probability summed, e.g. ``["<0xE4>", "云"]`` for 云 on Llama-2.
    """
    frame = prompts.df.copy()
    for column in set_columns(frame.columns).values():
        ids = [list(map(int, s)) if s is not None and len(s) else None for s in frame[column]]
        frame[column] = [json.dumps(s) if s is not None else "" for s in ids]
        frame[column.replace("_ids", "_tokens")] = [
            json.dumps(tokenizer.convert_ids_to_tokens(s), ensure_ascii=False) if s is not None else "" for s in ids
        ]
    return frame


def prompts_digest(prompts: PromptSet) -> str:
    """Return a sha256 over every prompt text and its token-id sets, in order (the sweep's whole input).

    The word lists (bundled or ``--words``), a ``--prompts`` file, ``n``, the seed of the few-shot
    examples, ``strict``, ``cognate_filter`` and ``n_shots`` all reach the sweep only through these
    prompts and sets, so this digest changes whenever any of them changes what is computed.
    """
    columns = ["prompt", *set_columns(prompts.df.columns).values()]
    blob = json.dumps(
        prompts.df[columns].to_numpy().tolist(),
        ensure_ascii=False,
        default=lambda v: v.tolist() if hasattr(v, "tolist") else list(v),
    )
    return hashlib.sha256(blob.encode()).hexdigest()
