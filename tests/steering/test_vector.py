"""Steering: the context manager (padding, KV-cache generation, clean removal), prefix caches, vectors on disk, the
sweep."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import save_model

from llmlatent import cli
from llmlatent.errors import DataError, OutputFolderError, UsageError
from llmlatent.experiments.steering import core as steering_core
from llmlatent.experiments.steering import demo as steering_sweep
from llmlatent.experiments.steering import fit as steering_fit
from llmlatent.languages.scripts import in_script
from llmlatent.steering import vector as steering
from llmlatent.steering.vector import Setting, SteeringError, SteeringVector

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
    return ids[:, inputs["input_ids"].shape[1] :]


@pytest.mark.parametrize("family", HOOK_FAMILIES)
@pytest.mark.parametrize("positions", ["generated", "last"])
def test_generate_with_kv_cache(tiny_models, family, positions):
    model = tiny_models[family]
    vec = vector_for(model, layer=1, scale=20.0)
    inputs = model.encode(PROMPTS)
    steps = 4
    kwargs = {k: v for k, v in inputs.items() if k != "position_ids"}
    with torch.no_grad():
        plain = model.hf.generate(
            **kwargs, max_new_tokens=steps, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
        )
    with vec.apply(model, alpha=1.0, positions=positions) as hook, torch.no_grad():
        out = model.hf.generate(
            **kwargs, max_new_tokens=steps, do_sample=False, use_cache=True, pad_token_id=model.tokenizer.pad_token_id
        )
    new = out[:, inputs["input_ids"].shape[1] :]
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
    fingerprint = {"model": "m", "unembedding_sha256": "a", "n_layers": 4, "hidden_size": 64}  # load requires one
    meta = {"source": "ru", "target": "zh", "note": "Δ 中文", "n_source": 5, "fingerprint": fingerprint}
    vec = SteeringVector(3, torch.randn(64), meta)
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
    with pytest.raises(SteeringError, match="no steering vector at"):
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
    fingerprint: dict = field(
        default_factory=lambda: {"model": "m", "n_layers": 3, "hidden_size": 4, "unembedding_sha256": "a"}
    )
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


def test_setting_is_one_frozen_type_with_no_layer_as_none():
    """Setting(vector, α): the layer is the vector's or None (never pd.NA); pairs convert; bad input is one error."""
    import dataclasses

    vec = SteeringVector(3, torch.ones(4), {})
    setting = Setting(vec, 2)
    assert (setting.layer, setting.alpha, setting.steers) == (3, 2.0, True) and isinstance(setting.alpha, float)
    assert Setting().layer is None and not Setting().steers and not Setting(vec, 0.0).steers
    assert Setting.of((vec, 1.5)).alpha == 1.5 and Setting.of(setting) is setting
    with pytest.raises(dataclasses.FrozenInstanceError):
        setting.alpha = 1.0
    with pytest.raises(SteeringError, match="alpha must be finite"):
        Setting(vec, float("nan"))
    with pytest.raises(SteeringError, match="needs a SteeringVector or None"):
        Setting(torch.ones(4), 1.0)
    with pytest.raises(SteeringError, match=r"Setting\(vector, alpha\) or \(vector, alpha\)"):
        Setting.of(vec)
    item = steering_core.Item.baseline()
    assert item.layer is None and item.columns()["layer"] is None


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
    other_model = {**model.fingerprint(), "model": "x", "unembedding_sha256": "0"}
    with pytest.raises(SteeringError, match="comes from model x"):
        SteeringVector(0, torch.ones(model.hidden_size), {"fingerprint": other_model}).check(model)
    with pytest.raises(SteeringError, match="incomplete model fingerprint"):
        SteeringVector(
            0, torch.ones(model.hidden_size), {"fingerprint": {"model": "x", "unembedding_sha256": "0"}}
        ).check(model)
    renamed = {**model.fingerprint(), "model": "/some/local/path"}  # the name is display only
    SteeringVector(0, torch.ones(model.hidden_size), {"fingerprint": renamed}).check(model)
    assert no_hooks(model)
    with pytest.raises(DataError, match="unknown language 'xx'"):
        steering_sweep.sweep(model, source="xx")
    with pytest.raises(DataError, match="three different languages"):
        steering_sweep.sweep(model, source="ru", target="zh", via="ru")
    with pytest.raises(SteeringError, match="out of range"):
        steering_sweep.sweep(model, layers=[5])


def test_split_concepts_is_seeded_and_disjoint():
    concepts = [f"c{i}" for i in range(21)]
    fit, select, test = steering_core.split_concepts(concepts, seed=3, n=12)
    assert len(fit) == len(select) == len(test) == 4
    assert not set(fit) & set(select) and not set(fit) & set(test) and not set(select) & set(test)
    assert (fit, select, test) == steering_core.split_concepts(concepts, seed=3, n=12)
    assert (fit, select, test) != steering_core.split_concepts(concepts, seed=4, n=12)
    assert [len(x) for x in steering_core.split_concepts(concepts, seed=0)] == [7, 7, 7]
    splits = steering_core.make_splits(concepts, seed=3, n=12, n_flip=2)
    assert set(splits.flip_select) <= set(select) and set(splits.flip_test) <= set(test) and len(splits.flip_test) == 2
    with pytest.raises(DataError, match="at least 3 concepts"):
        steering_core.split_concepts(["a", "b"], seed=0)
    assert steering_core.default_layers(18) == [5, 7, 9, 11, 13, 15]
    assert steering_core.default_layers(3) == [1, 2]
    assert in_script("云", "zh") and not in_script("▁облако", "zh")


SMALL = dict(
    layers=[0, 2],
    alphas=[1.0, 4.0],
    n_concepts=12,
    max_new_tokens=3,
    n_random=2,
    n_generate=3,
    n_flip=3,
    batch_size=2,
    progress=False,
)


def _full_steered(model, prompts, vector, alpha):
    """Reference: one full forward per setting, steered at the last prompt token; (last block output, own logits)."""
    from llmlatent.capture import forward_last

    context = vector.apply(model, alpha, "last") if vector is not None else contextlib.nullcontext()
    with context:
        latents, logits = forward_last(model, prompts)
    return latents[:, -1].float(), logits


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_many_settings_on_one_prefix_equal_full_forwards(tiny_models, family):
    """Settings tiled over one prefix cache (any rows per forward) equal one full steered forward each; the cache is
    kept."""
    from llmlatent.lens import decode
    from llmlatent.prefix import Prefix
    from llmlatent.steering import batched as steered

    model = tiny_models[family]
    vec, other = vector_for(model, layer=1, scale=20.0), vector_for(model, layer=2, scale=12.0, seed=1)
    settings = [Setting(None, 0.0), Setting(vec, 1.0), Setting(vec, 3.0), Setting(vec, 0.0), Setting(other, -2.0)]
    settings.append(Setting(vec, 1.0))
    reference = [_full_steered(model, PROMPTS, x.vector, x.alpha) for x in settings]
    prefix = Prefix.of(model, PROMPTS)
    length = prefix.width - 1
    assert prefix.cache is not None and prefix.cache.get_seq_length() == length
    for max_rows in (1, 2 * len(PROMPTS), 256):  # one setting per forward (cropped), two, all six tiled at once
        finals = steered.steered_final(model, prefix, settings, max_rows=max_rows)
        assert finals.shape == (len(settings), len(PROMPTS), model.hidden_size)
        assert prefix.cache.get_seq_length() == length
        for final, (want, _) in zip(finals, reference):
            assert torch.allclose(final, want, atol=1e-4, rtol=1e-4)
    # decoding the steered residual gives the model's own next-token distribution
    stats = decode.decode(model.unembedding, finals.reshape(-1, model.hidden_size), k=1, energy=False)
    own = torch.cat([logits for _, logits in reference])
    assert torch.equal(stats["top_ids"][:, 0], own.argmax(-1))
    no_cache = Prefix.of(model, PROMPTS, reuse=False)  # the fallback: whole prompts, tiled
    assert torch.allclose(steered.steered_final(model, no_cache, settings), finals, atol=1e-4, rtol=1e-4)
    assert no_hooks(model)


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_generations_of_many_settings_equal_one_at_a_time(tiny_models, family):
    """generate_many on a tiled prefix gives, per setting, what a plain generate (no cache) gives; the prefix is
    reusable."""
    from llmlatent.prefix import Prefix
    from llmlatent.steering import batched as steered

    model = tiny_models[family]
    vec = vector_for(model, layer=1, scale=20.0)
    settings = [Setting(None, 1.0), Setting(vec, 1.0), Setting(vec, 3.0)]
    plain = [steered.generate(model, PROMPTS, x.vector, x.alpha, max_new_tokens=4) for x in settings]
    inputs = model.encode(PROMPTS)
    assert steered.generate(model, inputs, vec, 1.0, max_new_tokens=4) == plain[1]  # texts or encoded inputs
    prefix = Prefix(model, inputs)
    for max_rows in (1, 256):
        assert steered.generate_many(model, prefix, settings, max_new_tokens=4, max_rows=max_rows) == plain
        assert prefix.cache.get_seq_length() == prefix.width - 1
    assert steered.generate(model, prefix, vec, 3.0, max_new_tokens=4) == plain[2]
    with pytest.raises(SteeringError, match="positions=.last. steers the prompt forward"):
        steered.generate(model, prefix, vec, 1.0, positions="last")
    with pytest.raises(UsageError, match=r"max_new_tokens \(--max-new-tokens\) must be at least 1"):
        steered.generate(model, PROMPTS, max_new_tokens=0)
    assert no_hooks(model)


def test_tiled_cache_leaves_the_original_untouched(tiny_models):
    """tile_cache builds new tensors: the prefix's own cache keeps its rows, length and values."""
    from llmlatent.prefix import Prefix, tile_cache

    model = tiny_models["gemma3_text"]  # sliding-window layers with past recording
    prefix = Prefix.of(model, PROMPTS)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.cache.layers]
    tiled = tile_cache(prefix.cache, prefix.rows, 3)
    assert tiled.layers[0].keys.shape[0] == 3 * prefix.rows
    assert torch.equal(tiled.layers[0].keys[2 * prefix.rows :], before[0][0])  # copy-major: copy 2 = the rows again
    tiled.crop(-1)
    for layer, (keys, values) in zip(prefix.cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_per_row_deltas_must_match_the_batch(tiny_models):
    """A per-row delta for another batch size is one clear SteeringError, and the hooks are gone afterwards."""
    from llmlatent.steering import vector as steering

    model = tiny_models["llama"]
    vec = vector_for(model, layer=1)
    with pytest.raises(SteeringError, match="per-row steering deltas for 6 rows, but the batch has 3 rows"):
        with steering.apply_rows(model, [(vec, 1.0), (vec, 2.0)], rows=3):  # (vector, α) pairs are Settings too
            model.run(model.encode(PROMPTS))
    assert no_hooks(model)


def test_same_model_by_id_and_by_path_combine(tiny_models, tmp_path):
    """A model loaded by hub id and the same weights loaded from a folder are one model (name ignored)."""
    from llmlatent import latents, tasks
    from llmlatent import model as model_mod

    by_id = tiny_models["llama"]  # named like a hub id
    by_path = model_mod.load(str(save_model(by_id, tmp_path / "tiny-llama")), dtype="float32", device="cpu")
    assert (
        by_path.name != by_id.name
        and by_path.fingerprint()["unembedding_sha256"] == by_id.fingerprint()["unembedding_sha256"]
    )
    zh = tasks.build("translation", "fr", "zh", by_id.tokenizer, n=3, seed=0)
    ru = tasks.build("translation", "fr", "ru", by_id.tokenizer, n=3, seed=0)
    store_zh = latents.collect(by_id, zh, tmp_path / "zh", progress=False)
    store_ru = latents.collect(by_path, ru, tmp_path / "ru", progress=False)
    vec = steering.mean_difference(store_zh, store_ru, 1)  # stores of the two loads combine
    vec.check(by_path)
    vec.check(by_id)
    other = SteeringVector(1, torch.ones(by_id.hidden_size), {"fingerprint": by_path.fingerprint()})
    assert torch.allclose((vec + other).vector, vec.vector + 1)
    stranger = {**by_id.fingerprint(), "unembedding_sha256": "0" * 16}
    with pytest.raises(SteeringError, match="different models"):
        vec + SteeringVector(1, torch.ones(by_id.hidden_size), {"fingerprint": stranger})


def run_steering(model, out, *, force=False, experiment=None, **settings):
    """Return best.json's content after ``runs.run`` of ``SteeringSettings(**settings)``."""
    from llmlatent.experiments import runs
    from llmlatent.experiments.steering.plan import SteeringSettings

    return runs.run(SteeringSettings(**settings), model, out, force=force, experiment=experiment)


@pytest.fixture(scope="module")
def tiny_result(tiny_models):
    """One real sweep result on the tiny Gemma 3 (seed 1, SMALL), returned by counting stand-ins of ``sweep``."""
    return steering_sweep.sweep(tiny_models["gemma3_text"], seed=1, **SMALL)


def test_sweep_on_tiny_model(tiny_models, tiny_result, tmp_path, monkeypatch):
    model = tiny_models["gemma3_text"]
    out = tmp_path / "out"
    best = run_steering(model, out, seed=1, **SMALL)
    names = {p.name for p in out.iterdir()}
    assert {
        "rows.csv",
        "summary.csv",
        "generations.csv",
        "best.json",
        "heatmap_ru_to_zh.png",
        "heatmap_ru_to_zh.pdf",
        "heatmap_zh_to_ru.png",
    } <= names
    on_disk = json.loads((out / "best.json").read_text())
    for key in (
        "layer",
        "alpha",
        "target_script_top1_share",
        "correct_target_top1_share",
        "p_target_answer",
        "p_source_answer",
        "baseline_target_script_top1_share",
        "random_control_target_script_top1_share",
        "wrong_pair_target_script_top1_share",
        "select_target_script_top1_share",
        "target_script_top1_share_ci95",
        "target_script_shared_with",
        "seconds",
        "flip",
        "splits",
        "cache_key",
    ):
        assert key in on_disk, key
    assert on_disk == best and best["layer"] in (0, 2) and best["alpha"] in (1.0, 4.0)
    splits = best["splits"]
    assert [len(splits[k]) for k in ("fit", "select", "test")] == [4, 4, 4]
    assert (
        not set(splits["fit"]) & set(splits["select"])
        | set(splits["fit"]) & set(splits["test"])
        | set(splits["select"]) & set(splits["test"])
    )
    assert best["n"] == 4 and best["wrong_pair"]["towards"] == "en" and best["wrong_pair"]["away_from"] == "ru"
    flip = best["flip"]
    assert flip["direction"] == "zh→ru" and flip["layer"] == best["layer"] and flip["random_control_draws"] == 2
    assert flip["n"] == 3 and "random_control_target_script_top1_share" in flip
    assert not any(key.startswith("cjk") or "_cjk_" in key for key in on_disk)  # the record names no script
    vec = steering.load(next(out.glob("vector_ru_to_zh_layer*.safetensors")))
    assert vec.layer == best["layer"] and vec.meta["target"] == "zh" and vec.meta["n_target"] == 4
    assert vec.meta["fit_concepts"] == splits["fit"]
    rows = pd.read_csv(out / "rows.csv")
    main, rev = rows[rows["direction"] == "ru→zh"], rows[rows["direction"] == "zh→ru"]
    # select: baseline + 2 layers × 2 α on the select concepts, and nothing else there
    sel = main[main["split"] == "select"]
    assert (
        set(sel["concept"]) == set(splits["select"]) and len(sel) == 4 * 5 and set(sel["vector"]) == {"mean_difference"}
    )
    # test: baseline, the chosen setting, 2 random draws and the wrong pair, all at the chosen layer and α
    test = main[main["split"] == "test"]
    assert set(test["concept"]) == set(splits["test"]) and len(test) == 4 * 5
    assert set(test["vector"]) == {"mean_difference", "random", "wrong_pair"}
    assert set(test["layer"].dropna()) == {best["layer"]} and set(test["alpha"]) == {0.0, best["alpha"]}
    # flip: baseline + 2 α at the chosen layer on its select subset; baseline, its choice, 2 random draws on test
    assert set(rev["concept"]) <= set(splits["select"]) | set(splits["test"]) and len(rev) == 3 * 3 + 3 * 4
    assert set(rev.loc[rev["split"] == "test", "concept"]) == set(splits["flip_test"])
    assert not set(rows["concept"]) & set(splits["fit"])  # no concept both fitted and evaluated
    for column in ("top1_correct_target", "top1_correct_source", "top1_cjk"):
        assert rows[column].dtype == bool
    gens = pd.read_csv(out / "generations.csv")
    assert len(gens) == 3 * (4 + 1)  # the first 3 test prompts: baseline, chosen, random, wrong pair; flip's choice
    assert set(gens["concept"]) <= set(splits["test"])
    summary = pd.read_csv(out / "summary.csv")
    assert summary["generation_target_share"].notna().sum() == 5

    # the cropped-prefix evaluation equals full forwards steered at the last token, and the same seed repeats
    fresh = tiny_result  # computed separately with the same seed
    assert (
        fresh.rows.to_csv(index=False, float_format="%.8g") == (out / "rows.csv").read_text()
    )  # same seed, same bytes
    again = steering_sweep.sweep(model, seed=1, reuse_prefix=False, **SMALL)
    cols = ["p_target_answer", "p_source_answer", "cjk_top1_share"]
    assert (again.summary[cols] - fresh.summary[cols]).abs().max().max() < 1e-4
    assert again.generations["generation"].tolist() == fresh.generations["generation"].tolist()
    assert no_hooks(model)

    # CLI: the same demo through `python -m llmlatent steer`, flags named after the API parameters
    monkeypatch.setattr(cli, "load_model", lambda args: model)
    code = cli.main(
        [
            "steer",
            "--layers",
            "0,2",
            "--alphas",
            "1",
            "4",
            "--n-concepts",
            "9",
            "--seed",
            "1",
            "--n-random",
            "1",
            "--max-new-tokens",
            "2",
            "--n-generate",
            "2",
            "--no-flip",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    assert code == 0 and "flip" not in json.loads((tmp_path / "cli" / "best.json").read_text())
    assert cli.main(["steer", "--layers", "9", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_fit_latents_come_from_a_store_that_holds_them(tiny_models, tmp_path):
    """A latent store holding the same fit prompts (e.g. reproduce's fr→zh cache) is used without new forwards."""
    from llmlatent import latents, tasks

    model = tiny_models["gemma3_text"]
    zh = tasks.build("translation", "fr", "zh", model.tokenizer, seed=1)
    store = latents.collect(model, zh, tmp_path / "fr-zh", dtype="float32", progress=False)
    calls = []
    real = latents.collect
    try:
        latents.collect = lambda *a, **k: calls.append(a[1].meta["tgt"]) or real(*a, **k)
        result = steering_sweep.sweep(model, seed=1, reuse_stores=[store], latents_dir=tmp_path / "fit", **SMALL)
    finally:
        latents.collect = real
    assert sorted(calls) == ["en", "ru"]  # zh came from the store
    assert result.best["fit_latents"]["zh"] == {"reused": True, "store": "fr-zh", "dtype": "float32"}
    assert result.best["fit_latents"]["ru"]["resumed"] is False
    plain = steering_sweep.sweep(model, seed=1, **SMALL)
    assert torch.allclose(result.vectors[2].vector, plain.vectors[2].vector, atol=1e-5)
    assert sorted(p.name[:5] for p in (tmp_path / "fit").iterdir()) == ["fr-en", "fr-ru"]  # kept for reruns
    other = tasks.build("translation", "fr", "zh", model.tokenizer, seed=2)  # other shots: other prompts, not reused
    wrong = latents.collect(model, other, tmp_path / "fr-zh-2", dtype="float32", progress=False)
    assert steering_fit.store_with([wrong], model, zh.df.set_index("concept", drop=False).iloc[:4]) is None


def test_reproduce_steering_step_passes_settings_and_reuses_by_key(tiny_models, tiny_result, tmp_path, monkeypatch):
    import dataclasses

    from llmlatent import experiments
    from llmlatent.experiments import reproduce, runs

    model = tiny_models["gemma3_text"]
    calls = []
    counting = dataclasses.replace(steering_sweep.EXPERIMENT, compute=lambda m, s: calls.append(vars(s)) or tiny_result)
    listed = tuple(counting if e is steering_sweep.EXPERIMENT else e for e in experiments.EXPERIMENTS)
    monkeypatch.setattr(experiments, "EXPERIMENTS", listed)  # reproduce's steps find it in the list
    out = tmp_path / "results"
    reproduce.latent_step(model, out / reproduce.LATENTS, n=4, seed=0, batch_size=4, force=False)  # steps run after it

    def step(**settings):
        (found,) = [
            s
            for s in reproduce.plan(reproduce.ReproduceSettings(results=str(out), **settings))
            if s.folder == reproduce.STEERING
        ]
        return runs.run(found.settings, model, out / found.folder, force=settings.pop("force", False))

    first = step(n_concepts=12, seed=1)
    assert len(calls) == 1 and calls[0]["n_concepts"] == 12 and calls[0]["seed"] == 1
    reproduce.copy_figures(out, tmp_path)
    assert (tmp_path / "steering_ru_to_zh.png").exists()
    assert step(n_concepts=12, seed=1) == first and len(calls) == 1
    step(n_concepts=12, seed=2)  # --seed 1 after --seed 0: recomputed
    assert len(calls) == 2 and calls[1]["seed"] == 2
    step(n_concepts=9, seed=2)  # --n-concepts reaches the steering step
    assert len(calls) == 3 and calls[2]["n_concepts"] == 9


def test_cached_run_recomputes_when_any_setting_changes(tiny_models, tiny_result, tmp_path, monkeypatch):
    model = tiny_models["gemma3_text"]
    out = tmp_path / "out"
    base = dict(SMALL, seed=1)
    result = tiny_result
    calls = []

    def fake_compute(m, s):
        calls.append(vars(s))
        return result

    import dataclasses

    counting = dataclasses.replace(steering_sweep.EXPERIMENT, compute=fake_compute)
    from llmlatent.experiments.figures import plots

    monkeypatch.setattr(plots, "save", lambda fig, stem: [])  # figures are not what this test is about
    first = run_steering(model, out, **base, experiment=counting)
    assert len(calls) == 1 and calls[0]["seed"] == 1 and calls[0]["n_concepts"] == 12
    calls.clear()
    assert run_steering(model, out, **base, experiment=counting) == first and calls == []  # same settings: cached
    words = tmp_path / "words"
    words.mkdir()
    from llmlatent.languages.registry import PAPER as LANGS

    for lang in LANGS:  # the bundled word files, one row fewer: another words digest
        src = Path(steering.__file__).parents[2] / "data" / "langs" / f"{lang}.csv"
        lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
        (words / f"{lang}.csv").write_text("".join(lines[:-1]), encoding="utf-8")
    changes = [
        {"seed": 2},
        {"n_concepts": 9},
        {"layers": [1]},
        {"alphas": [2.0]},
        {"max_new_tokens": 2},
        {"n_generate": 2},
        {"n_random": 1},
        {"flip": False},
        {"n_flip": 2},
        {"wrong_pair": ["de", "ru"]},
        {"batch_size": 3},
        {"reuse_prefix": False},
        {"source": "de"},
        {"via": "en"},
        {"words_dir": words},
    ]
    for change in changes:
        calls.clear()
        run_steering(model, out, **{**base, **change}, experiment=counting)
        assert len(calls) == 1, change
        calls.clear()
        run_steering(model, out, **{**base, **change}, experiment=counting)
        assert calls == [], change  # and the new result is cached in turn
    run_steering(model, out, **{**base, **changes[-1]}, force=True, experiment=counting)
    assert len(calls) == 1


def test_settings_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def no_model(args):
        raise AssertionError("the model must not be loaded for bad settings")

    monkeypatch.setattr(cli, "load_model", no_model)
    cases = [
        (["--alphas", "1e9"], "alphas must be between 0 and 100"),
        (["--alphas", "nan"], "alpha must be finite"),
        (["--alphas", "inf"], "alpha must be finite"),
        (["--alphas", "-1"], "alphas must be between 0 and 100"),
        (["--alphas", "0"], "at least one non-zero value"),
        (["--n-concepts", "-3"], "n_concepts (--n-concepts) must be at least 3"),
        (["--n-random", "-1"], "n_random (--n-random) must be at least 0"),
        (["--n-generate", "-2"], "n_generate (--n-generate) must be at least 0"),
        (["--n-flip", "0"], "n_flip (--n-flip) must be at least 1"),
        (["--max-new-tokens", "0"], "max_new_tokens (--max-new-tokens) must be at least 1"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be at least 1"),
        (["--layers", "-1"], "layers must be at least 0"),
        (["--wrong-pair", "fr", "de"], "must not use the prompts' source language 'fr'"),
        (["--wrong-pair", "zh", "ru"], "is Δ itself"),
        (["--source", "xx"], "unknown language 'xx'"),
    ]
    for extra, message in cases:
        assert cli.main(["steer", *extra, "--out", str(tmp_path / "o")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (extra, err)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert cli.main(["steer", "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "full" / "notes.txt").exists()
    with pytest.raises(OutputFolderError):
        run_steering(None, tmp_path / "full")
    assert not (tmp_path / "o").exists()


def test_core_steering_imports_no_pipeline_module():
    """steering.py is core: no import (top-level, lazy or TYPE_CHECKING) of a pipeline module; no cycle via
    steering_sweep."""
    import ast

    tree = ast.parse(Path(steering.__file__).read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    pipeline = {"steering_sweep", "plots", "runs", "reproduce", "cli", "experiment", "notebook", "matplotlib"}
    assert not {name.rsplit(".", 1)[-1] for name in imported} & pipeline, imported
    assert not hasattr(steering, "sweep")


@pytest.mark.embedded
def test_ru_to_zh_on_embedded_default(embedded, tmp_path):
    """Δ = μ_zh − μ_ru from 16 concepts, added after block 9 at α = 2, turns held-out Russian answers Chinese."""
    from llmlatent import tasks

    zh = tasks.build("translation", "fr", "zh", embedded.tokenizer, seed=0)
    ru = tasks.build("translation", "fr", "ru", embedded.tokenizer, seed=0)
    fit, _, test = steering_core.split_concepts(list(zh.df["concept"]), seed=0, n=36)
    fit_sets = [tasks.PromptSet(s.df[s.df["concept"].isin(fit)], meta=s.meta) for s in (zh, ru)]
    vec = steering.from_prompts(embedded, *fit_sets, tmp_path / "stores", layers=[9])[9]
    assert (vec.meta["target"], vec.meta["source"], vec.meta["n_target"]) == ("zh", "ru", 12)
    inputs = embedded.encode(ru.df[ru.df["concept"].isin(test)]["prompt"].tolist())

    def cjk_share() -> float:
        with torch.no_grad():
            top = embedded.hf(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()
        return sum(in_script(embedded.tokenizer.decode([t]), "zh") for t in top) / len(top)

    baseline = cjk_share()
    with vec.apply(embedded, alpha=2.0):
        steered = cjk_share()
    print(f"\nCJK top-1 share on {len(test)} held-out ru prompts: baseline {baseline:.2f}, steered {steered:.2f}")
    assert baseline <= 0.1 and steered >= 0.8
    assert cjk_share() == baseline
