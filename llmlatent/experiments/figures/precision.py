"""Values as a figure can show them: every float a figure builder receives is rounded at its column's scale.

A figure drawn from full-precision floats moves with their last digits, and those differ between machines
and thread counts: the same ``make reproduce`` changed up to 130 pixels of a committed figure elsewhere.
Each column is rounded to 4 significant digits *of its span* (max − min; of its largest magnitude when
constant): a probability column spanning 0.6 to 0.0001, an entropy column spanning 14 bits to 0.01. That is
finer than a figure shows (an axis, autoscaled to at least that span, resolves about 1/500 of it; a colour
map 1/256), and it is the figure's scale, not each value's, so values near zero (the lower end of a 95% band)
are not kept to meaningless digits. Noise of absolute size δ then changes a rounded value only when the
value lies within δ of a rounding boundary: a chance of 2δ/quantum per value.
:func:`llmlatent.experiments.figures.plots.styled` applies :func:`shown` to every argument of every figure builder:
the one place where tidy frames become plotted numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

DIGITS = 4


def rounded(values: Any, digits: int = DIGITS) -> np.ndarray:
    """Return float ``values`` (any array-like) rounded to ``digits`` significant digits of their span.

    The span is max − min of the finite values (their largest magnitude when all are equal); its decimal
    exponent gives the decimal places. Python's ``round`` is correctly rounded (the same bits give the same
    result on every machine); NaN and ±inf stay, -0.0 becomes 0.0 (a PDF would write the sign).
    """
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    scale = span or (float(np.abs(finite).max()) if finite.size else 0.0)
    if not scale:
        return array + 0.0
    exponent = int(f"{scale:.{digits - 1}e}".split("e")[1])
    places = digits - 1 - exponent
    out = [round(v, places) + 0.0 if math.isfinite(v) else v for v in array.ravel().tolist()]
    return np.array(out, dtype=float).reshape(array.shape)


def shown(value: Any) -> Any:
    """Return ``value`` with its floats rounded by :func:`rounded`: each float column of a DataFrame, a float
    Series or array, a float, and the values of a dict (recursively, e.g. a pair grid's summaries); anything
    else (text, integers, labels, the index) unchanged. The caller's objects are not modified."""
    if isinstance(value, pd.DataFrame):
        out = value.copy()
        for i, dtype in enumerate(out.dtypes):
            if pd.api.types.is_float_dtype(dtype):
                out.isetitem(i, rounded(out.iloc[:, i].to_numpy()))
        return out
    if isinstance(value, pd.Series) and pd.api.types.is_float_dtype(value.dtype):
        return pd.Series(rounded(value.to_numpy()), index=value.index, name=value.name)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return rounded(value)
    if isinstance(value, float | np.floating):
        return float(rounded(value))
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    return value
