"""Notebook helpers (a face: it may import the experiments): the numbered notebooks' setup cell and sweep in one call.

:func:`check` validates the parameters cell in one call before any model loads; :func:`load` is the setup
cell (inline figures, log lines, pandas options, the model); :func:`sweep_run` runs (or reuses) one lens
sweep and reads its CSVs back as a :class:`SweepView`, the one code path of notebooks 02, 03 and 04.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlatent.checks import count
from llmlatent.errors import LlmlatentError, UsageError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from llmlatent.experiments.settings import Settings
    from llmlatent.experiments.sweep import SweepSettings
    from llmlatent.model import Model

log = logging.getLogger("llmlatent")


def check(
    experiment: type[Settings] | None = None,
    /,
    *,
    counts: Mapping[str, Any] | None = None,
    model: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | None = None,
    **fields: Any,
) -> Settings | None:
    """Return ``experiment(**fields)`` (None without an experiment) after checking every notebook parameter.

    Nothing is loaded: the model options are checked as :func:`llmlatent.model.load` checks them (a model
    other than the default must have a readable config.json), ``counts`` (parameter → value) must be whole
    numbers ≥ 1, and the experiment's own settings validate ``fields`` (a string for a field with a
    command-line parser, such as ``"de:fr"``, is parsed first; a value outside a field's declared choices
    is refused), then the files they name (:meth:`~llmlatent.experiments.settings.Settings.preflight`).
    Notebook parameters are named as the fields they set, so a message names the parameter.
    A failure raises :class:`UsageError`, whose one line names the parameter, its value and the fix.
    """
    options = {"model": model, "dtype": dtype, "device": device, "device_map": device_map}
    _blame(_check_model, options, dict.fromkeys(options))
    for name, value in (counts or {}).items():
        _blame(functools.partial(_count_of, name=name), {name: value}, {})
    if experiment is None:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(experiment) if f.default is not dataclasses.MISSING}
    return _blame(lambda v: _build(experiment, v), fields, defaults)


def _count(value: Any, name: str) -> int:
    """Return ``value`` after checking it is a whole number ≥ 1 (:func:`llmlatent.checks.count`)."""
    return count(value, name, flag=name)


def _count_of(values: dict, name: str) -> int:
    """Return ``values[name]`` after checking it is a whole number ≥ 1."""
    return _count(values[name], name)


def _check_model(options: dict) -> None:
    from llmlatent import model

    model.check_options(
        options["model"], dtype=options["dtype"], device=options["device"], device_map=options["device_map"]
    )
    if options["model"] is not None:
        model.read_config(options["model"])


def _build(experiment: type[Settings], fields: dict) -> Settings:
    """Return ``experiment(**fields)`` after parsing strings of fields with a parser, checking declared choices and
    the files the settings name (``preflight``)."""
    values = dict(fields)
    for f in dataclasses.fields(experiment):
        value, meta = values.get(f.name), f.metadata
        if isinstance(value, str) and meta.get("parse") is not None:
            values[f.name] = value = meta["parse"](value)
        if value is not None and meta.get("choices") and value not in meta["choices"]:
            raise UsageError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    settings = experiment(**values)
    settings.preflight()
    return settings


def _blame(validate: Callable[[dict], Any], values: dict, defaults: dict) -> Any:
    """Return ``validate(values)``; on a LlmlatentError raise UsageError naming the culprit parameters.

    A parameter is a culprit when resetting it to its default makes the error go away or change; when none
    is (a conflict of several), every parameter that differs from its default is named.
    """
    try:
        return validate(values)
    except LlmlatentError as exc:
        message = str(exc)
        changed = [k for k in values if k not in defaults or values[k] != defaults[k]]

        def culprit(name: str) -> bool:
            if name not in defaults:
                return False
            try:
                validate({**values, name: defaults[name]})
            except LlmlatentError as other:
                return str(other) != message
            return True

        named = [k for k in changed if culprit(k)] or changed or list(values)
        which = ", ".join(f"{k} = {values[k]!r}" for k in named)
        raise UsageError(
            f"notebook parameter {which}: {message}; fix it in the parameters cell (papermill: -p {named[0]} VALUE)"
        ) from None


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
    from llmlatent.model import load as load_model

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
