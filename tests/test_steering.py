"""Steering: the context manager (padding, KV-cache generation, clean removal), vectors on disk, the sweep."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd
import pytest
import torch

from llmlatent import cli, steering, steering_sweep
from llmlatent.data import DataError
from llmlatent.steering import SteeringError, SteeringVector

PROMPTS = [
    'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "',
    'Русский: "гора" - 中文: "',
    "A cloud",
]
HOOK_FAMILIES = ("llama", "gemma3_text", "gpt2")


pytestmark = pytest.mark.usefixtures("one_thread")


def vector_for(model, layer: int = 1, scale: float = 8.0, seed: int = 0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(layer, torch.randn(model.hidden_size, generator=gen) * scale, {"method": "test"})


def full_logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(**inputs, use_cache=False).logits.float()


def _ours(hook) -> bool:
    owner = getattr(hook, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(hook, "__module__", "")
    return str(module).startswith("llmlatent")


def no_hooks(model) -> bool:
    """True when no llmlatent hook is left on the model (transformers installs output-recording hooks of its own)."""
    modules = [model.hf, *model.adapter.blocks]
    return not any(_ours(h) for m in modules for d in (m._forward_hooks, m._forward_pre_hooks) for h in d.values())


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_last_position_under_left_and_right_padding(tiny_models, family):
    model = tiny_models[family]
    vec = vector_for(model)
    alone = []
    for prompt in PROMPTS:
        inputs = model.encode([prompt])
        with vec.apply(model, alpha=1.0) as hook:
            alone.append(full_logits(model, inputs)[0])
        assert hook.calls == [(inputs["input_ids"].shape[1], 0, 1)]
    batch = model.encode(PROMPTS)  # left-padded
    plain = full_logits(model, batch)
    with vec.apply(model, alpha=1.0, positions="last"):
        steered = full_logits(model, batch)
    for i, ref in enumerate(alone):
        n = ref.shape[0]
        assert torch.allclose(steered[i, -1], ref[-1], atol=1e-4, rtol=1e-4)
        assert torch.allclose(steered[i, -n:-1], plain[i, -n:-1], atol=1e-5)  # earlier positions untouched
        assert not torch.allclose(steered[i, -1], plain[i, -1], atol=1e-3)
    # right padding: the last real token comes from the attention mask
    model.tokenizer.padding_side = "right"
    try:
        enc = model.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    finally:
        model.tokenizer.padding_side = "left"
    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with vec.apply(model, alpha=1.0):
        right = full_logits(model, dict(enc))
    for i, ref in enumerate(alone):
        last = int(enc["attention_mask"][i].sum()) - 1
        assert torch.allclose(right[i, last], ref[-1], atol=1e-4, rtol=1e-4)


def test_all_positions_and_alpha_zero(tiny_models):
    model = tiny_models["llama"]
    vec = vector_for(model, layer=0)
    inputs = model.encode(PROMPTS[:1])
    plain = full_logits(model, inputs)
    with vec.apply(model, alpha=2.0, positions="all") as hook:
        steered = full_logits(model, inputs)
    assert hook.calls[0][2] == inputs["input_ids"].shape[1]
    assert (steered - plain).abs().amax(-1).min() > 1e-3  # every position moved
    with vec.apply(model, alpha=0.0):
        assert torch.equal(full_logits(model, inputs), plain)


def reference_greedy(model, inputs, vec, alpha, steps, positions) -> torch.Tensor:
    """Greedy decoding without a KV cache: every step is a full forward that steers by absolute position."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    first = ids.shape[1] - 1  # left padding: the last prompt token of every row
    delta = vec.vector * alpha

    def hook(_m, _a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        if positions == "generated":
            h[:, first:] += delta
        else:
            h[:, first] += delta
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.adapter.blocks[vec.layer].register_forward_hook(hook)
    try:
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            with torch.no_grad():
                logits = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        handle.remove()
    return ids[:, inputs["input_ids"].shape[1]:]


@pytest.mark.parametrize("family", HOOK_FAMILIES)
@pytest.mark.parametrize("positions", ["generated", "last"])
def test_generate_with_kv_cache(tiny_models, family, positions):
    model = tiny_models[family]
    vec = vector_for(model, layer=1, scale=20.0)
    inputs = model.encode(PROMPTS)
    steps = 4
    kwargs = {k: v for k, v in inputs.items() if k != "position_ids"}
    with torch.no_grad():
        plain = model.hf.generate(**kwargs, max_new_tokens=steps, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    with vec.apply(model, alpha=1.0, positions=positions) as hook, torch.no_grad():
        out = model.hf.generate(**kwargs, max_new_tokens=steps, do_sample=False, use_cache=True,
                                pad_token_id=model.tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    # prefill sees the whole prompt; each decode step has sequence length 1 and a growing cache
    t = inputs["input_ids"].shape[1]
    assert [c[:2] for c in hook.calls] == [(t, 0)] + [(1, t + k) for k in range(steps - 1)]
    assert [c[2] for c in hook.calls] == [1] + [1 if positions == "generated" else 0] * (steps - 1)
    assert torch.equal(new, reference_greedy(model, inputs, vec, 1.0, steps, positions))
    assert not torch.equal(new, plain[:, t:])
    assert no_hooks(model)


def test_hooks_removed_after_exit_and_exception(tiny_models):
    model = tiny_models["gemma3_text"]
    vec = vector_for(model)
    inputs = model.encode(PROMPTS)
    before = full_logits(model, inputs)
    with vec.apply(model, alpha=3.0):
        assert not torch.equal(full_logits(model, inputs), before)
    assert no_hooks(model) and torch.equal(full_logits(model, inputs), before)
    with pytest.raises(KeyError), vec.apply(model, alpha=3.0, positions="all"):
        raise KeyError("boom")
    assert no_hooks(model) and torch.equal(full_logits(model, inputs), before)
    with pytest.raises(SteeringError, match="positions must be one of"), vec.apply(model, positions="first"):
        pass
    assert no_hooks(model)


def test_save_load_round_trip(tmp_path):
    vec = SteeringVector(3, torch.randn(64), {"source": "ru", "target": "zh", "note": "Δ 中文", "n_source": 5})
    path = vec.save(tmp_path / "delta")
    assert path.name == "delta.safetensors"
    again = steering.load(path)
    assert again.layer == 3 and torch.equal(again.vector, vec.vector) and again.meta == vec.meta
    assert not list(tmp_path.glob(".*tmp*"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:  # plain safetensors with JSON in the header, no pickle
        assert list(fh.keys()) == ["vector"] and json.loads(fh.metadata()["meta"])["target"] == "zh"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SteeringError, match="not a llmlatent steering vector"):
        steering.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        steering.load(tmp_path / "missing.safetensors")


def test_arithmetic():
    a = SteeringVector(2, torch.ones(4), {"source": "ru", "target": "zh", "n_source": 3, "n_target": 4})
    b = SteeringVector(2, torch.arange(4.0))
    assert torch.equal((a + b).vector, torch.ones(4) + torch.arange(4.0))
    assert torch.equal((a - b).vector, torch.ones(4) - torch.arange(4.0))
    assert torch.equal((2 * a).vector, 2 * torch.ones(4)) and (a * 2).meta["scale"] == 2.0
    flipped = -a
    assert flipped.meta["source"] == "zh" and flipped.meta["target"] == "ru" and flipped.meta["n_source"] == 4
    rnd = a.random_like(seed=1)
    assert math.isclose(rnd.norm, a.norm, rel_tol=1e-5) and not torch.allclose(rnd.vector, a.vector)
    assert torch.equal(rnd.vector, a.random_like(seed=1).vector)
    with pytest.raises(SteeringError, match="layer and size must match"):
        a + SteeringVector(3, torch.ones(4))


@dataclass
class FakeStore:
    """Duck-typed latent store: what mean_difference reads."""

    data: torch.Tensor  # [N, L, d]
    concepts: list
    lang: str
    fingerprint: dict = field(default_factory=lambda: {"model": "m", "n_layers": 3, "hidden_size": 4, "unembedding_sha256": "a"})
    path: str = "fake"

    @property
    def n_layers(self) -> int:
        return self.data.shape[1]

    @property
    def meta(self) -> dict:
        return {"task": "translation", "src": "fr", "tgt": self.lang}

    @property
    def prompts(self) -> pd.DataFrame:
        return pd.DataFrame({"concept": self.concepts, "tgt": self.lang})

    def latents(self, layer=None):
        return self.data if layer is None else self.data[:, layer]


def test_mean_difference_and_bad_input(tiny_models):
    gen = torch.Generator().manual_seed(0)
    zh = FakeStore(torch.randn(6, 3, 4, generator=gen), list("abcdef"), "zh")
    ru = FakeStore(torch.randn(6, 3, 4, generator=gen), list("abcdef"), "ru")
    vec = steering.mean_difference(zh, ru, 1)
    assert torch.allclose(vec.vector, zh.data[:, 1].mean(0) - ru.data[:, 1].mean(0), atol=1e-6)
    assert (vec.meta["target"], vec.meta["source"], vec.meta["n_target"]) == ("zh", "ru", 6)
    half = steering.mean_difference(zh, ru, 2, concepts=["a", "b", "c"])
    assert torch.allclose(half.vector, zh.data[:3, 2].mean(0) - ru.data[:3, 2].mean(0), atol=1e-6)
    assert half.meta["n_source"] == 3
    other = FakeStore(ru.data, ru.concepts, "ru", fingerprint={**ru.fingerprint, "unembedding_sha256": "b"})
    with pytest.raises(SteeringError, match="different models"):
        steering.mean_difference(zh, other, 1)
    with pytest.raises(SteeringError, match="layer 3 is out of range"):
        steering.mean_difference(zh, ru, 3)
    with pytest.raises(SteeringError, match="none of the 1 requested concepts"):
        steering.mean_difference(zh, ru, 0, concepts=["zzz"])

    model = tiny_models["llama"]
    with pytest.raises(SteeringError, match="layer 7 is out of range: the model has 3 blocks"):
        with SteeringVector(7, torch.ones(model.hidden_size)).apply(model):
            pass
    with pytest.raises(SteeringError, match="size 5 but the model's hidden size is 64"):
        with SteeringVector(0, torch.ones(5)).apply(model):
            pass
    with pytest.raises(SteeringError, match="non-finite"):
        SteeringVector(0, torch.tensor([1.0, float("nan")]))
    with pytest.raises(SteeringError, match="alpha must be finite"):
        with SteeringVector(0, torch.ones(model.hidden_size)).apply(model, alpha=float("inf")):
            pass
    with pytest.raises(SteeringError, match="comes from model"):
        SteeringVector(0, torch.ones(model.hidden_size), {"fingerprint": {"model": "x", "unembedding_sha256": "0"}}).check(model)
    assert no_hooks(model)
    with pytest.raises(DataError, match="unknown language 'xx'"):
        steering.sweep(model, source="xx")
    with pytest.raises(DataError, match="three different languages"):
        steering.sweep(model, source="ru", target="zh", via="ru")
    with pytest.raises(SteeringError, match="out of range"):
        steering.sweep(model, layers=[5])


def test_split_concepts_is_seeded_and_disjoint():
    concepts = [f"c{i}" for i in range(21)]
    fit, test = steering_sweep.split_concepts(concepts, seed=3, n=12)
    assert len(fit) == len(test) == 6 and not set(fit) & set(test)
    assert (fit, test) == steering_sweep.split_concepts(concepts, seed=3, n=12)
    assert (fit, test) != steering_sweep.split_concepts(concepts, seed=4, n=12)
    assert steering_sweep.default_layers(18) == [5, 7, 9, 11, 13, 15]
    assert steering_sweep.default_layers(3) == [1, 2]
    assert steering_sweep.has_script("云", "zh") and not steering_sweep.has_script("▁облако", "zh")


SMALL = dict(layers=[0, 2], alphas=[1.0, 4.0], n_concepts=12, max_new_tokens=3, n_random=2, n_generate=5, batch_size=4,
             progress=False)


def test_sweep_on_tiny_model(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["gemma3_text"]
    best = steering_sweep.run_to_dir(model, tmp_path / "out", seed=1, **SMALL)
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"rows.csv", "summary.csv", "generations.csv", "best.json", "heatmap_ru_to_zh.png", "heatmap_ru_to_zh.pdf",
            "heatmap_zh_to_ru.png"} <= names
    on_disk = json.loads((out / "best.json").read_text())
    for key in ("layer", "alpha", "cjk_top1_share", "p_target_answer", "p_source_answer", "baseline_cjk_top1_share",
                "random_control_cjk_top1_share", "seconds", "flip"):
        assert key in on_disk, key
    assert on_disk == best and best["layer"] in (0, 2) and best["alpha"] in (1.0, 4.0)
    assert best["n_fit_concepts"] == 6 and best["n_test_prompts"] == 6
    assert best["flip"]["direction"] == "zh→ru"
    vec = steering.load(next(out.glob("vector_ru_to_zh_layer*.safetensors")))
    assert vec.layer == best["layer"] and vec.meta["target"] == "zh" and vec.meta["n_target"] == 6
    rows = pd.read_csv(out / "rows.csv")
    # ru→zh: baseline + 2 layers × 2 α + 2 random draws; zh→ru (flip, at the best layer): baseline + 2 α; 6 prompts each
    assert len(rows) == 6 * (7 + 3)
    assert set(rows.loc[rows["direction"] == "zh→ru", "layer"].dropna()) == {best["layer"]}
    assert set(rows["vector"]) == {"mean_difference", "random"}
    gens = pd.read_csv(out / "generations.csv")
    assert len(gens) == 5 * (3 + 1)  # the first 5 held-out prompts: baseline, best, random; flip best
    summary = pd.read_csv(out / "summary.csv")
    assert summary["generation_target_share"].notna().sum() == 4

    # the cached-prefix evaluation equals full forwards steered at the last token, and the same seed repeats
    fresh = steering_sweep.sweep(model, seed=1, **SMALL)
    assert fresh.rows.to_csv(index=False, float_format="%.8g") == (out / "rows.csv").read_text()  # same seed, same bytes
    again = steering_sweep.sweep(model, seed=1, reuse_prefix=False, **SMALL)
    cols = ["p_target_answer", "p_source_answer", "cjk_top1_share"]
    assert (again.summary[cols] - fresh.summary[cols]).abs().max().max() < 1e-4
    assert again.generations["generation"].tolist() == fresh.generations["generation"].tolist()
    fit = set(fresh.vectors[0].meta["fit_concepts"])
    assert len(fit) == 6 and not fit & set(rows["concept"])  # no concept both fitted and held out
    assert no_hooks(model)

    # CLI: the same demo through `python -m llmlatent steer`
    monkeypatch.setattr(cli, "load_model", lambda args: model)
    code = cli.main(["steer", "--layers", "0,2", "--alphas", "1", "4", "--n", "12", "--seed", "1", "--random", "1",
                     "--max-new-tokens", "2", "--no-flip", "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / "best.json").exists()
    assert cli.main(["steer", "--layers", "9", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.embedded
def test_ru_to_zh_on_embedded_default(embedded, tmp_path):
    """Δ = μ_zh − μ_ru from 16 concepts, added after block 9 at α = 2, turns held-out Russian answers Chinese."""
    from llmlatent import tasks

    zh = tasks.build("translation", "fr", "zh", embedded.tokenizer, seed=0)
    ru = tasks.build("translation", "fr", "ru", embedded.tokenizer, seed=0)
    fit, test = steering_sweep.split_concepts(list(zh.df["concept"]), seed=0, n=24)
    fit_sets = [tasks.PromptSet(s.df[s.df["concept"].isin(fit)], meta=s.meta) for s in (zh, ru)]
    vec = steering.from_prompts(embedded, *fit_sets, tmp_path / "stores", layers=[9])[9]
    assert (vec.meta["target"], vec.meta["source"], vec.meta["n_target"]) == ("zh", "ru", 12)
    inputs = embedded.encode(ru.df[ru.df["concept"].isin(test)]["prompt"].tolist())

    def cjk_share() -> float:
        with torch.no_grad():
            top = embedded.hf(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()
        return sum(steering_sweep.has_script(embedded.tokenizer.decode([t]), "zh") for t in top) / len(top)

    baseline = cjk_share()
    with vec.apply(embedded, alpha=2.0):
        steered = cjk_share()
    print(f"\nCJK top-1 share on {len(test)} held-out ru prompts: baseline {baseline:.2f}, steered {steered:.2f}")
    assert baseline <= 0.1 and steered >= 0.8
    assert cjk_share() == baseline
