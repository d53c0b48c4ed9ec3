"""--paper-repo: the paper's Llama-2 lines (a synthetic file in their format) as dashed references."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from llmlatent.cli import main
from llmlatent.experiments import reproduce, runs
from llmlatent.experiments.figures import geometry as geoplots
from llmlatent.experiments.sweep import SweepSettings


def write_lines(repo, size, n_layers, seed=0):
    """Write a {size}_zh_lines.csv as the paper's repository holds it: entropy,energy,en,zh, one row per layer."""
    rng = np.random.default_rng(seed)
    folder = repo / "R" / "data" / "data_for_sphere_plots"
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {"entropy": rng.uniform(1, 13, n_layers), "energy": rng.uniform(0.2, 0.3, n_layers),
         "en": rng.uniform(0, 0.7, n_layers), "zh": rng.uniform(0, 0.6, n_layers)}
    )  # fmt: skip
    frame.to_csv(folder / f"{size}_zh_lines.csv", index=False)
    return frame


def test_lines_are_read_on_a_relative_depth_axis_and_drawn_dashed(tmp_path):
    seven, thirteen = write_lines(tmp_path, "7b", 32), write_lines(tmp_path, "13b", 40, seed=1)
    lines = geoplots.read_paper_lines(tmp_path)
    assert set(lines) == {"7b", "13b"}
    assert lines["7b"]["depth"].iloc[0] == 1 / 32 and lines["13b"]["depth"].iloc[-1] == 1.0
    assert np.allclose(lines["13b"]["zh"], thirteen["zh"])
    summary = pd.DataFrame(
        {"layer": range(18), "p_target_mean": np.linspace(0, 1, 18), "p_english_mean": np.linspace(1, 0, 18),
         "entropy_mean": np.full(18, 5.0), "energy_mean": np.full(18, 0.1)}
    )  # fmt: skip
    fig = geoplots.overlay_figure(summary, lines, "probabilities")
    drawn = {line.get_label(): line for line in fig.axes[0].lines}
    ours = drawn["p(target), this model"]
    # figures draw values rounded to 4 significant digits of each column's span (experiments/precision.py)
    close = lambda a, b: np.allclose(a, b, rtol=0, atol=1e-4)  # noqa: E731
    assert close(ours.get_xdata(), np.arange(1, 19) / 18) and ours.get_linestyle() == "-"
    paper = drawn["p(English), Llama-2-7b (paper, →zh)"]
    assert close(paper.get_xdata(), np.arange(1, 33) / 32) and close(paper.get_ydata(), seven["en"])
    assert paper.get_linestyle() == "--"
    fig = geoplots.overlay_figure(summary, lines, "entropy")
    assert np.allclose(fig.axes[0].lines[2].get_ydata(), thirteen["entropy"], rtol=0, atol=0.01)  # span ~11 bits
    plt.close("all")


@pytest.mark.parametrize(
    "write, expected",
    [
        (lambda repo: None, "no R/data/data_for_sphere_plots folder"),
        (lambda repo: (repo / geoplots.PAPER_LINES).mkdir(parents=True), "holds no"),
        (lambda repo: write_lines(repo, "7b", 4).drop(columns="en").to_csv(
            repo / geoplots.PAPER_LINES / "7b_zh_lines.csv", index=False), "lacks en"),
        (lambda repo: (write_lines(repo, "7b", 4), (repo / geoplots.PAPER_LINES / "7b_zh_lines.csv").write_text(
            "entropy,energy,en,zh\n1,2,x,4\n1,2,3,4\n")), "non-numeric"),
    ],
)  # fmt: skip
def test_a_folder_without_the_lines_is_one_line_before_any_work(write, expected, tmp_path, capsys):
    write(tmp_path)
    results = tmp_path / "results"
    assert main(["reproduce", "--paper-repo", str(tmp_path), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not results.exists()


def test_reproduce_draws_the_overlays_from_the_fr_zh_sweep(tiny_models, tmp_path):
    write_lines(tmp_path / "paper", "70b", 80)
    results, figures = tmp_path / "results", tmp_path / "figures"
    settings = SweepSettings(task="translation", src="fr", tgt="zh", n_prompts=3, progress=False)
    runs.run(settings, tiny_models["gpt2"], results / "translation" / "fr-zh")
    written = reproduce.paper_overlays(results, figures, tmp_path / "paper", "tiny")
    assert sorted(p.name for p in written) == sorted(
        f"paper_overlay_fr_zh_{k}.{s}" for k in ("probabilities", "entropy", "energy") for s in ("png", "pdf")
    )
    assert reproduce.paper_overlays(tmp_path / "nothing", figures, tmp_path / "paper", "tiny") == []


def _sweep(*extra):
    return main(["sweep", "--task", "translation", "--src", "fr", "--n", "3", *map(str, extra)])


def test_sweep_draws_the_overlays_and_keys_them_by_the_lines(llama2_folder, tmp_path, capsys):
    import json

    write_lines(tmp_path / "paper", "7b", 32)
    out = tmp_path / "out"
    args = ("--tgt", "zh", "--model", llama2_folder, "--out", out, "--paper-repo", tmp_path / "paper")
    assert _sweep(*args) == 0
    record = json.loads((out / "run.json").read_text())
    overlays = sorted(f for f in record["files"] if f.startswith("paper_"))
    assert overlays == sorted(
        f"paper_overlay_{k}.{s}" for k in ("energy", "entropy", "probabilities") for s in ("png", "pdf")
    )
    assert record["paper_lines"] == ["7b"] and all((out / f).stat().st_size > 0 for f in overlays)
    assert _sweep(*args) == 0
    assert json.loads((out / "run.json").read_text()) == record  # reused: same prompts, same lines
    write_lines(tmp_path / "paper", "13b", 40)  # other lines: the figures change, so the key does
    assert _sweep(*args) == 0
    again = json.loads((out / "run.json").read_text())
    assert again["paper_lines"] == ["13b", "7b"] and again["cache_key"] != record["cache_key"]
    assert _sweep("--tgt", "zh", "--model", llama2_folder, "--out", tmp_path / "plain") == 0
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert "paper_lines" not in plain and not any(f.startswith("paper_") for f in plain["files"])
    capsys.readouterr()


def test_sweep_refuses_the_lines_beside_another_target(tiny_models, llama2_folder, tmp_path, capsys):
    from llmlatent import latents, tasks
    from llmlatent.errors import DataError

    write_lines(tmp_path / "paper", "7b", 32)
    out = tmp_path / "out"
    assert _sweep("--tgt", "de", "--model", llama2_folder, "--out", out, "--paper-repo", tmp_path / "paper") == 2
    err = capsys.readouterr().err.strip()
    assert "translations into Chinese, these prompts are translation into de" in err and "\n" not in err, err
    assert not out.exists()
    m = tiny_models["llama"]
    store = latents.collect(m, tasks.build("repetition", "zh", "zh", m.tokenizer, n=2), tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="these prompts are repetition into zh"):
        SweepSettings(from_latents=str(store.path), paper_repo=str(tmp_path / "paper")).preflight()
    with pytest.raises(DataError, match="no R/data/data_for_sphere_plots folder"):
        SweepSettings(task="translation", tgt="zh", paper_repo=str(tmp_path)).preflight()
