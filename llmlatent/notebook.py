"""Notebook helpers (pipeline layer): the one-call setup cell of the numbered notebooks."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .model import Model

log = logging.getLogger("llmlatent")


def setup(level: int = logging.INFO) -> None:
    """Return None after preparing a notebook: inline figures, llmlatent's log lines shown, wide pandas tables.

    Also silences matplotlib's "Glyph … missing" warnings for rare scripts in token names. Outside IPython
    only the logging and pandas options are set.
    """
    import pandas as pd

    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # plain Python
        shell = None
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(level)
    pd.set_option("display.max_colwidth", 60)
    pd.set_option("display.width", 160)


def load(
    model: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | None = None,
    level: int = logging.INFO,
) -> Model:
    """Return the loaded model after :func:`setup`, logging its fingerprint (the notebooks' setup cell in one call)."""
    from .model import load as load_model

    setup(level)
    m = load_model(model, dtype=dtype, device=device, device_map=device_map)
    from .adapter import Fingerprint

    log.info("model %s", Fingerprint.of(m.fingerprint()).describe())
    return m
