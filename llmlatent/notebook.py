"""Notebook helpers (a face: it may import the experiments): the numbered notebooks' setup cell and sweep in one call.

:func:`load` is the setup cell (inline figures, log lines, pandas options, the model); :func:`sweep_run`
runs (or reuses) one lens sweep and reads its CSVs back as a :class:`SweepView`, the one code path of
notebooks 02, 03 and 04.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .experiments.sweep import SweepSettings
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
    log.info("model %s", m.fingerprint().describe())
    return m


@dataclass(frozen=True)
class SweepView:
    """One lens sweep as the notebooks show it: its record and the CSVs it wrote, read back.

    ``record`` is run.json (settings, model, headline numbers, timings); ``prompts`` is prompts.csv (one
    row per prompt with its words and token sets), ``rows`` rows.csv (one row per prompt × layer),
    ``summary`` summary.csv (per-layer means with 95% intervals); ``title`` names the task, pair and
    model and ``headline`` holds the English-pivot numbers (:func:`llmlatent.experiments.sweep.headline`).
    """

    out: Path
    record: dict
    prompts: pd.DataFrame
    rows: pd.DataFrame
    summary: pd.DataFrame
    title: str
    headline: dict

    @property
    def meta(self) -> dict:
        """Return the prompt set's meta (task, src, tgt, seed, strict, cognate_filter) from the record."""
        return {k: self.record.get(k) for k in ("task", "src", "tgt", "seed", "strict", "cognate_filter")}

    def report(self) -> str:
        """Return a one-line summary of the prompts: kept count and drops per reason (as ``PromptSet.report``)."""
        drops = ", ".join(f"{k}={v}" for k, v in (self.record.get("dropped") or {}).items() if v) or "none"
        meta = self.meta
        return f"{self.record['n_prompts']} prompts kept ({meta['task']} {meta['src']}→{meta['tgt']}); dropped: {drops}"


def sweep_run(
    m: Model, settings: SweepSettings | Mapping[str, Any], out: str | Path, *, force: bool = False
) -> SweepView:
    """Return the :class:`SweepView` of ``settings`` (a ``SweepSettings`` or its keyword arguments) swept into ``out``.

    The sweep goes through :func:`llmlatent.experiments.runs.run`: a folder already holding the same
    model and settings is reused, ``force=True`` recomputes. The view is read back from the folder, so a
    cached run and a fresh one look the same.
    """
    import pandas as pd

    from llmlatent.experiments import runs, sweep

    if not isinstance(settings, sweep.SweepSettings):
        settings = sweep.SweepSettings(**settings)
    out = Path(out)
    record = runs.run(settings, m, out, force=force)
    summary = pd.read_csv(out / "summary.csv")
    return SweepView(
        out=out,
        record=record,
        prompts=pd.read_csv(out / "prompts.csv"),
        rows=pd.read_csv(out / "rows.csv"),
        summary=summary,
        title=sweep.title_of(record, m.name),
        headline=sweep.headline(summary),
    )
