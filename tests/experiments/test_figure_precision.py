"""Figures are drawn from values rounded at their column's span: float noise across machines moves no pixel."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from llmlatent.experiments.figures import patching as patchplots
from llmlatent.experiments.figures import plots, precision
from llmlatent.experiments.figures.precision import rounded  # noqa: E402

NOISE = 1e-6  # relative, on every input: above the float noise between thread counts measured here (median 4e-7)


def reference(values: list[float], digits: int = 4) -> list[float]:
    """Return the plain reference: exact decimals, quantized half-even at 4 significant digits of the span."""
    finite = [v for v in values if np.isfinite(v)]
    top = Decimal(max(finite) - min(finite) or max(abs(v) for v in finite))
    places = Decimal(1).scaleb(top.adjusted() - digits + 1)
    if top.quantize(places, ROUND_HALF_EVEN).adjusted() > top.adjusted():  # 9.9996 rounds up to 10.00
        places = places.scaleb(1)
    return [float(Decimal(v).quantize(places, ROUND_HALF_EVEN)) + 0.0 if np.isfinite(v) else v for v in values]


def test_rounded_against_a_decimal_reference():
    assert rounded([0.6, 0.123456, -1e-9, 0.00049, np.nan]).tolist()[:4] == [0.6, 0.1235, 0.0, 0.0005]
    assert rounded([14.2, 3.14159, 0.0]).tolist() == [14.2, 3.14, 0.0]
    assert rounded([0.048338, 0.0482391, 0.0456443]).tolist() == [0.048338, 0.048239, 0.045644]  # span 0.0027
    assert rounded([2.0 / 3, 2.0 / 3]).tolist() == [0.6667, 0.6667]  # constant: its magnitude
    assert np.isnan(rounded([0.5, np.nan])[1]) and rounded([np.inf, 1.23456])[0] == np.inf
    assert rounded([0.0, 0.0]).tolist() == [0.0, 0.0] and str(rounded([-1e-9, 0.5])[0]) == "0.0"  # no -0.0
    rng = np.random.default_rng(0)
    for scale in (1e-6, 0.01, 1.0, 17.0, 3e4):
        x = (rng.normal(size=300) * scale).tolist()
        once = rounded(x)
        assert once.tolist() == reference(x)
        assert np.array_equal(rounded(once), once)  # idempotent: rounding twice changes nothing
    assert rounded(np.ones((2, 3))).shape == (2, 3)


def test_shown_rounds_floats_only():
    frame = pd.DataFrame({"layer": [0, 1], "p": [0.123456, 0.5], "token": ["a", "b"]})
    out = precision.shown({"x": frame, "title": "t", "k": 3, "f": 0.333333})
    assert out["x"]["p"].tolist() == [0.1235, 0.5] and out["x"]["layer"].dtype == frame["layer"].dtype
    assert out["x"]["token"].tolist() == ["a", "b"] and (out["title"], out["k"], out["f"]) == ("t", 3, 0.3333)
    assert frame["p"].iloc[0] == 0.123456  # the caller's frame is not changed


def typical(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every float moved halfway towards its rounded value: off the rounding boundaries.

    A value within the noise of a boundary may round either way on two machines (a chance of 2·noise/quantum
    per value, about 1% here at 1e-6): the guarantee is for the others, and this keeps the test to them.
    """
    out = frame.copy()
    for column in out.columns[[pd.api.types.is_float_dtype(t) for t in out.dtypes]]:
        x = out[column].to_numpy()
        out[column] = rounded(x) + (x - rounded(x)) / 2
    return out


def summary(rng: np.random.Generator, n_layers: int = 18) -> pd.DataFrame:
    frame = {"layer": np.arange(n_layers), "n": 50}
    for name in ("p_target", "p_english", "p_source", "entropy", "energy"):
        mean = rng.uniform(0.05, 0.9, n_layers) * (16 if name == "entropy" else 1)
        width = rng.uniform(0.01, 0.05, n_layers)
        frame.update({f"{name}_mean": mean, f"{name}_lo": mean - width, f"{name}_hi": mean + width})
    return typical(pd.DataFrame(frame))


def patch_summary(rng: np.random.Generator, n_layers: int = 18) -> pd.DataFrame:
    frame = {"condition": ["donor"] * n_layers + ["unpatched"], "layer": [*range(n_layers), np.nan]}
    for name in ("cd_lr", "cd_ld", "cr_lr", "cr_ld"):
        mean = rng.uniform(0.0, 0.6, n_layers + 1)
        frame.update({f"p_{name}_mean": mean, f"p_{name}_lo": mean * 0.8, f"p_{name}_hi": mean * 1.2})
    return typical(pd.DataFrame(frame))


def perturbed(value, rng: np.random.Generator):
    """Return ``value`` with every float multiplied by 1 ± NOISE (random signs): another CPU's last digits."""
    if isinstance(value, dict):
        return {k: perturbed(v, rng) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        out = value.copy()
        for column in out.columns[[pd.api.types.is_float_dtype(t) for t in out.dtypes]]:
            out[column] = out[column] * (1 + NOISE * rng.choice([-1.0, 1.0], len(out)))
        return out
    return value


def cases() -> dict:
    rng = np.random.default_rng(0)
    grid = {(s, t): summary(rng) for s in ("en", "zh") for t in ("en", "zh")}
    share = typical(pd.DataFrame(rng.uniform(0, 1, (6, 5)), columns=[f"{a:g}" for a in (0, 0.5, 1, 2, 4)]))
    return {
        "probability_figure": (plots.probability_figure, [summary(rng), {"src": "fr", "tgt": "zh"}, "fr→zh"]),
        "energy_figure": (plots.energy_figure, [summary(rng), "energy"]),
        "pair_grid": (plots.pair_grid, [grid, ["en", "zh"], "grid"]),
        "heatmap": (plots.heatmap, [share]),
        "patching_figure": (patchplots.patching_figure, [patch_summary(rng), {"receiver": ["ru", "zh"]}, "patch"]),
    }


def render(builder, args, folder) -> list[bytes]:
    fig = builder(*args)
    paths = plots.save(fig, folder / "figure")
    plt.close(fig)
    return [p.read_bytes() for p in paths]


@pytest.mark.parametrize("name", list(cases()))
def test_float_noise_leaves_png_and_pdf_bytes_identical(name, tmp_path, monkeypatch):
    builder, args = cases()[name]
    noisy = [perturbed(a, np.random.default_rng(1)) for a in args]
    assert render(builder, args, tmp_path / "a") == render(builder, noisy, tmp_path / "b")
    monkeypatch.setattr(precision, "shown", lambda value: value)  # without the rounding the noise shows in the bytes
    assert render(builder, args, tmp_path / "c") != render(builder, noisy, tmp_path / "d")
