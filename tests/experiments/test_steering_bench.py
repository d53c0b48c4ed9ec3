"""The steering benchmark: vector methods on planted latents, language ID, tiled scoring, held-out selection, reuse."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest
import torch

from llmlatent import cli
from llmlatent.errors import DataError, LlmlatentError, SteeringError, UsageError
from llmlatent.experiments import runs
from llmlatent.experiments.steering import core
from llmlatent.experiments.steering.bench import bench
from llmlatent.experiments.steering.bench.plan import SteerBenchSettings
from llmlatent.languages.identify import LanguageId
from llmlatent.steering import language_means as language_vectors
from llmlatent.steering.language_means import LanguageMeans
from llmlatent.steering.vector import Setting, SteeringVector

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [
    'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "',
    'Русский: "гора" - 中文: "',
    "A cloud",
]


def planted(seed: int = 0, n: int = 40, d: int = 64) -> tuple[torch.Tensor, LanguageMeans]:
    """Return (u, means): per-concept latents of en, fr, zh whose fr − en differences vary along one unit u."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    u /= u.norm()
    base = torch.randn(n, 1, d, generator=gen, dtype=torch.float64)
    amount = (2.0 + torch.rand(n, generator=gen, dtype=torch.float64))[:, None, None]
    noise = 0.02 * torch.randn(n, 1, d, generator=gen, dtype=torch.float64)
    zh = base + 3.0 * torch.randn(1, 1, d, generator=gen, dtype=torch.float64)
    z = {"en": base, "fr": base + amount * u + noise, "zh": zh}
    return u, LanguageMeans([4], [f"c{i}" for i in range(n)], z)


def test_pca_of_paired_differences_recovers_a_planted_direction():
    u, means = planted()
    got = language_vectors.direction(means, "pca", "en", "fr", 4)
    assert float(got @ u) / float(got.norm()) >= 0.99  # sign-aligned with μ_fr − μ_en, which is +u
    flipped = language_vectors.direction(means, "pca", "fr", "en", 4)
    assert float(flipped @ u) / float(flipped.norm()) <= -0.99


def test_methods_give_the_expected_directions_at_equal_norm():
    u, means = planted()
    mu = {lang: means.mean(lang)[0] for lang in ("en", "fr", "zh")}
    want = {
        "mean_diff": mu["zh"] - mu["fr"],
        "target_only": mu["zh"] - (mu["en"] + mu["fr"] + mu["zh"]) / 3,
        "english_fit": mu["zh"] - mu["en"],
    }
    norms = language_vectors.layer_norms(means, ["en", "fr", "zh"])
    for method, expected in want.items():
        got = language_vectors.direction(means, method, "fr", "zh", 4)
        assert torch.allclose(got, expected, atol=1e-12), method
        scaled = language_vectors.equal_norm(got, norms[4])
        assert abs(float(scaled.norm()) - norms[4]) <= 1e-4 * norms[4], method
        assert float(scaled.double() @ expected) / (float(scaled.norm()) * float(expected.norm())) > 0.9999
    assert language_vectors.direction(means, "english_fit", "fr", "en", 4) is None  # μ_en − μ_en: undefined
    with pytest.raises(SteeringError, match="zero steering direction"):
        language_vectors.equal_norm(torch.zeros(4), 1.0)
    pairs = [(s, t) for s in ("en", "fr", "zh") for t in ("en", "fr", "zh") if s != t]
    mean = sum(float((mu[t] - mu[s]).norm()) for s, t in pairs) / len(pairs)
    assert norms[4] == pytest.approx(mean)


def test_language_id_on_fixed_strings():
    lid = LanguageId(["en", "fr", "de", "ru", "zh"])
    cases = {
        "the house is near the river": "en",
        "la maison est près de la rivière": "fr",
        "das Haus steht am Fluss": "de",
        "дом стоит у реки": "ru",
        "房子在河边": "zh",
        "облако": "ru",  # one short word, its own script
        "云": "zh",
    }
    for text, lang in cases.items():
        assert lid.detect(text) == lang, text
    for empty in ("", "   ", "123", '"»'):
        assert lid.detect(empty) is None
    assert lid.forced("la maison est près de la rivière", "fr", False)
    assert not lid.forced("the house is near the river", "fr", False)  # the wrong language
    assert not lid.forced("", "fr", False)
    assert lid.forced("hotel", "fr", True)  # a same-script cognate: the concept's token set decides
    assert LanguageId(["en", "zh"]).detect("Haus") in ("en", None)  # restricted to the languages in play
    with pytest.raises(DataError, match="cannot identify"):
        LanguageId(["en", "xx"])


def full_next_token(model, prompts, vector, alpha) -> torch.Tensor:
    """Reference: one full forward per setting steered at the last prompt token; its next-token softmax."""
    context = vector.apply(model, alpha, "last") if vector is not None else contextlib.nullcontext()
    inputs = model.encode(prompts)
    with context, torch.no_grad():
        logits = model.hf(**inputs, use_cache=False).logits[:, -1].float()
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("family", ("gemma3_text", "llama"))
def test_tiled_scoring_equals_one_full_steered_forward_per_setting(tiny_models, family):
    from llmlatent.prefix import Prefix
    from llmlatent.steering.batched import generate_many, generate_scored

    model = tiny_models[family]
    gen = torch.Generator().manual_seed(0)
    vec = SteeringVector(1, torch.randn(model.hidden_size, generator=gen) * 20, {})
    other = SteeringVector(0, torch.randn(model.hidden_size, generator=gen) * 12, {})
    settings = [Setting(None, 0.0), Setting(vec, 1.0), Setting(vec, 3.0), Setting(other, 2.0)]
    sets = {"a": [[5, 9, 17], [3], [100, 101]], "b": [[1], [2, 4], []]}
    prefix = Prefix.of(model, PROMPTS)
    for max_rows in (len(PROMPTS), 256):  # one setting per generate call, all tiled
        got = generate_scored(model, prefix, settings, sets, max_new_tokens=3, max_rows=max_rows)
        for j, setting in enumerate(settings):
            probs = full_next_token(model, PROMPTS, setting.vector, setting.alpha)
            for name, rows in sets.items():
                want = torch.stack([probs[i, ids].sum() for i, ids in enumerate(rows)])
                assert torch.allclose(got.p[name][j], want, atol=1e-4), (name, j)
            assert torch.equal(got.top1[j], probs.argmax(-1))
        assert got.texts == generate_many(model, prefix, settings, max_new_tokens=3, max_rows=max_rows)


SMALL = dict(
    langs=("en", "fr", "zh"),
    layers=(1,),
    alphas=(2.0, 8.0),
    n_concepts=9,
    n_vias=2,
    max_new_tokens=2,
    batch_size=4,
    progress=False,
)


def test_benchmark_on_tiny_model_reuses_means_and_holds_out_test(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["gemma3_text"]
    s = SteerBenchSettings(**SMALL, latents_dir=str(tmp_path / "latents"))
    first = runs.run(s, model, tmp_path / "a")
    splits = first["splits"]
    assert not set(splits["fit"]) & set(splits["select"]) and not set(splits["select"]) & set(splits["test"])
    assert not set(splits["fit"]) & set(splits["test"]) and all(len(v) == 3 for v in splits.values())
    assert first["fit_latents"]["fit_forwards"] > 0 and first["pairs"] == 6
    assert sum(first["wins"].values()) + first["ties"] == 6
    files = set(first["files"])
    assert {"table.csv", "best.csv", "rows.csv", "heatmaps.png", "heatmaps.pdf", "summary.json"} <= files
    table = pd.read_csv(tmp_path / "a" / "table.csv")
    assert {"source", "target", "method", "setting", "split", "metric", "value", "low", "high"} <= set(table)
    test = table[(table["split"] == "test") & (table["metric"] == "score")]
    assert set(test["setting"]) == {"steered", "baseline", "random", "wrong_pair"}
    assert (test["low"] <= test["value"] + 1e-12).all() and (test["value"] <= test["high"] + 1e-12).all()
    # english_fit towards English is undefined: no row, never a zero vector
    assert not len(test[(test["method"] == "english_fit") & (test["target"] == "en")])

    second = runs.run(s, model, tmp_path / "b")  # a new folder: computed again, the means from the stores
    assert second["fit_latents"]["fit_forwards"] == 0
    assert all(v["resumed"] for v in second["fit_latents"]["stores"].values())
    assert second["best"] == first["best"]

    def poisoned(prompt_batches, items, split, scorer):  # the test split's rows turned upside down
        rows = real(prompt_batches, items, split, scorer)
        if split == "test":
            rows = rows.assign(
                forced=~rows["forced"], concept_kept=~rows["concept_kept"], p_target=1 - rows["p_target"]
            )
        return rows

    real = core.evaluate
    monkeypatch.setattr(bench, "evaluate", poisoned)
    result = bench.compute(model, s)
    clean = pd.read_csv(tmp_path / "a" / "chosen.csv")
    keys = ["source", "target", "method", "layer", "alpha"]
    assert result.chosen[keys].values.tolist() == clean[keys].values.tolist()
    forcing = result.table[(result.table["split"] == "test") & (result.table["metric"] == "forcing")]
    clean_forcing = first_table(tmp_path)
    clean_forcing = clean_forcing[clean_forcing["metric"] == "forcing"]
    assert forcing["value"].to_numpy() == pytest.approx(1 - clean_forcing["value"].to_numpy())  # the poison landed
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["chosen_on"] == "select"


def first_table(tmp_path) -> pd.DataFrame:
    table = pd.read_csv(tmp_path / "a" / "table.csv")
    return table[table["split"] == "test"]


def test_bad_input_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def no_model(args):
        raise AssertionError("the model must not be loaded for bad settings")

    monkeypatch.setattr(cli, "load_model", no_model)
    cases = [
        (["--langs", "en"], "needs at least 2 language"),
        (["--langs", "en,xx"], "unknown language 'xx'"),
        (["--langs", "en,fr,en"], "more than once"),
        (["--alphas", "200"], "alphas must be between 0 and 100"),
        (["--alphas", "-1"], "alphas must be between 0 and 100"),
        (["--methods", "mean_dif"], "unknown method 'mean_dif'"),
        (["--n-concepts", "2"], "must be at least 3"),
    ]
    for extra, message in cases:
        assert cli.main(["steer-bench", *extra, "--out", str(tmp_path / "o")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (extra, err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match="more than once"):
        SteerBenchSettings(langs=("de", "de"))


def test_reproduce_plans_the_small_benchmark_and_copies_its_figure(tmp_path):
    from llmlatent.experiments import reproduce

    results = tmp_path / "results"
    (step,) = [
        s
        for s in reproduce.plan(reproduce.ReproduceSettings(results=str(results), bench_concepts=12, seed=3))
        if s.folder == reproduce.STEERBENCH
    ]
    assert step.settings.langs == ("en", "fr", "de", "ru", "zh") and step.settings.n_concepts == 12
    assert step.settings.seed == 3 and step.settings.latents_dir == str(results / "latents" / "steerbench")
    (results / reproduce.STEERBENCH).mkdir(parents=True)
    (results / reproduce.STEERBENCH / "heatmaps.png").write_bytes(b"png")
    (tmp_path / "figures").mkdir()
    reproduce.copy_figures(results, tmp_path / "figures")
    assert (tmp_path / "figures" / "steerbench_heatmaps.png").read_bytes() == b"png"
    with pytest.raises(LlmlatentError, match="at least 3"):
        reproduce.plan(reproduce.ReproduceSettings(results=str(results), bench_concepts=2))


def test_bench_script_baseline_equals_a_bare_forward(tiny_models, tmp_path):
    """benchmarks/bench_steerbench.py on a tiny model: the α = 0 rows equal a bare forward (timings never asserted)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_steerbench.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    s = SteerBenchSettings(**{**SMALL, "langs": ("en", "zh"), "methods": ("mean_diff",)})
    out = module.benchmark(tiny_models["gemma3_text"], s, repeats=1, log=lambda _msg: None)
    assert out["baseline_parity_max_abs_diff"] <= 1e-4
    assert out["pairs"] == 2 and out["settings_evaluated"] == 2 * (1 + 2) + 2 * (1 + 1 + 1)
    assert {"bench_seconds", "settings_x_bare_seconds", "bench_over_settings_x_bare"} <= set(out)


def test_figures_import_nothing_of_the_benchmark():
    """figures/steerbench.py draws the benchmark's table without importing bench/ (no bench ↔ figures cycle)."""
    import ast
    from pathlib import Path

    from llmlatent.experiments.figures import steerbench as figures

    tree = ast.parse(Path(figures.__file__).read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name.startswith("llmlatent.experiments.steering") for name in imported), imported
