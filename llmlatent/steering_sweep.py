"""The language-steering demo: fit Δ = μ_target − μ_source on half the concepts, sweep layers × α on the other half.

Prompts differ only in the output language (``Français: "nuage" - Русский: "`` vs ``… - 中文: "``).
Every steered evaluation is one batched forward of the last prompt token on a KV cache of the rest of
the prompt (computed once per batch; steering only the last token leaves the earlier positions
unchanged, so this equals a full forward steered at ``positions="last"``), with last-position logits
only. Greedy generations (≤ 5 tokens, a subset of the prompts) continue the same cache, at the
baseline, the best setting, the random control and the flip direction only.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import tasks
from .data import DataError, check_lang
from .steering import SteeringHook, SteeringVector, check_alpha, check_layer, collect_pair, mean_difference

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
SCRIPTS = {"zh": CJK, "ru": re.compile("[\u0400-\u04ff]"), "en": re.compile("[A-Za-z]"),
           "fr": re.compile("[A-Za-zÀ-ÿ]"), "de": re.compile("[A-Za-zÄÖÜäöüß]")}
GROUP = ["direction", "vector", "draw", "layer", "alpha"]


def has_script(text: str, lang: str) -> bool:
    """Return True when ``text`` contains a character of ``lang``'s script (zh: a CJK Unified Ideograph)."""
    return bool(SCRIPTS[lang].search(text))


def default_layers(n_layers: int, k: int = 6) -> list[int]:
    """Return up to ``k`` layers spread over the middle and late blocks (30 % … 90 % of the depth)."""
    return sorted({int(round(x)) for x in np.linspace(0.3 * (n_layers - 1), 0.9 * (n_layers - 1), k)})


@dataclass
class SweepResult:
    """What :func:`sweep` measured: tidy per-prompt ``rows``, their ``summary``, ``generations``, ``best``, ``vectors``."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    generations: pd.DataFrame
    best: dict
    vectors: dict[int, SteeringVector]


def split_concepts(concepts: list[str], seed: int, n: int | None = None) -> tuple[list[str], list[str]]:
    """Return (fit, test) concept lists: a seeded shuffle of (up to ``n`` of) ``concepts`` cut in halves."""
    pool = sorted(set(concepts))
    if len(pool) < 2:
        raise DataError(f"steering needs at least 2 concepts to split into fit and test halves, got {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[: min(n or len(pool), len(pool))]]
    half = len(chosen) // 2
    return sorted(chosen[:half]), sorted(chosen[half:])


def choose_flip_concepts(test: list[str], seed: int, n_flip: int | None) -> list[str]:
    """Return the held-out concepts whose target-answering prompts the flip direction steers (seeded subset)."""
    return sorted(np.random.default_rng(seed + 1).permutation(test)[: n_flip or len(test)].tolist())


def _cache_name(model: object) -> str:
    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Batch:
    """Held-out prompts of one language, encoded once, with the KV cache of all but their last token."""

    def __init__(self, model: object, frame: pd.DataFrame, towards: pd.Series, reuse_prefix: bool) -> None:
        self.model, self.frame = model, frame.reset_index(drop=True)
        self.inputs = model.encode(self.frame["prompt"].tolist())
        if not bool(self.inputs["attention_mask"][:, -1].all()):
            raise RuntimeError("the tokenizer must pad on the left so that the last position is the last prompt token")
        self.target_sets = [list(towards[c]) for c in self.frame["concept"]]
        self.source_sets = [list(s) for s in self.frame["target_ids"]]
        self.prefix, self.cache_name = None, _cache_name(model)
        if reuse_prefix and self.inputs["input_ids"].shape[1] > 1:
            head = {k: v[:, :-1] for k, v in self.inputs.items()}
            with torch.inference_mode():  # no logits are needed here: keep none (an empty position index)
                out = model.run(head, use_cache=True, logits_to_keep=torch.zeros(0, dtype=torch.long))
            self.prefix = getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    def _tail(self) -> dict:
        if self.prefix is None:
            return dict(self.inputs, use_cache=False)
        return {"input_ids": self.inputs["input_ids"][:, -1:], "attention_mask": self.inputs["attention_mask"],
                "position_ids": self.inputs["position_ids"][:, -1:], self.cache_name: copy.deepcopy(self.prefix),
                "use_cache": True}

    def logits(self, vector: SteeringVector | None = None, alpha: float = 0.0) -> torch.Tensor:
        """Return float32 next-token logits [B, V] with ``alpha · vector`` added at the last prompt token."""
        hook = None
        if vector is not None and alpha != 0:
            hook = SteeringHook(self.model, vector.layer, vector.vector * alpha, "all" if self.prefix is not None else "last")
        try:
            with torch.inference_mode():
                return self.model.run(self._tail(), logits_to_keep=1).logits[:, -1].float()
        finally:
            if hook is not None:
                hook.remove()

    def generate(self, vector: SteeringVector | None, alpha: float, max_new_tokens: int, rows: int | None = None) -> list[str]:
        """Return greedy continuations of the first ``rows`` prompts, steered at the last prompt token and every new token."""
        n = len(self.frame) if rows is None else min(rows, len(self.frame))
        kwargs = {k: v[:n] for k, v in self.inputs.items() if k != "position_ids"}
        if self.prefix is not None:
            cache = copy.deepcopy(self.prefix)
            if n < len(self.frame):
                cache.batch_select_indices(torch.arange(n))
            kwargs[self.cache_name] = cache
        tok = self.model.tokenizer
        hook = None
        if vector is not None and alpha != 0:
            hook = SteeringHook(self.model, vector.layer, vector.vector * alpha, "generated")
        try:
            with torch.inference_mode():
                out = self.model.hf.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=tok.pad_token_id)
        finally:
            if hook is not None:
                hook.remove()
        return [tok.decode(row, skip_special_tokens=True) for row in out[:, kwargs["input_ids"].shape[1]:]]


def _metrics(batch: _Batch, logits: torch.Tensor, towards: str, source: str) -> pd.DataFrame:
    logp = torch.log_softmax(logits, dim=-1)
    def mass(sets: list[list[int]]) -> np.ndarray:
        return np.array([float(logp[i, s].exp().sum()) if s else math.nan for i, s in enumerate(sets)])
    top = logits.argmax(-1).tolist()
    names = [batch.model.tokenizer.decode([t]) for t in top]
    return pd.DataFrame({
        "prompt_id": batch.frame["prompt_id"].to_numpy(), "concept": batch.frame["concept"].to_numpy(),
        "p_target_answer": mass(batch.target_sets), "p_source_answer": mass(batch.source_sets),
        "top1_token": names, "top1_cjk": [has_script(t, "zh") for t in names],
        "top1_target_script": [has_script(t, towards) for t in names],
        "top1_source_script": [has_script(t, source) for t in names],
    })


def _answer(text: str) -> str:
    return re.split(r'["\n”»]', text, maxsplit=1)[0].strip()


def _pick(summary: pd.DataFrame, direction: str) -> pd.Series:
    part = summary[(summary["direction"] == direction) & (summary["vector"] == "mean_difference") & (summary["alpha"] != 0)]
    return part.sort_values(["target_script_top1_share", "p_target_answer", "layer"], ascending=[False, False, True],
                            kind="stable").iloc[0]


def sweep(
    model: object, *, source: str = "ru", target: str = "zh", via: str = "fr", layers: list[int] | None = None,
    alphas: list[float] | None = None, n_concepts: int | None = 120, seed: int = 0, max_new_tokens: int = 5,
    n_generate: int = 16, n_random: int = 3, flip: bool = True, n_flip: int | None = 30, store_dir: str | Path | None = None,
    words_dir: str | Path | None = None, batch_size: int = 64, reuse_prefix: bool = True, progress: bool = True,
) -> SweepResult:
    """Return the layer × α steering sweep: Δ = μ_target − μ_source fitted on half the concepts, tested on the rest.

    Held-out ``source``-answering prompts (``via`` is the prompts' source language) are steered with
    α·Δ at each layer; α = 0 is the baseline. Per (layer, α): p(correct ``target`` answer),
    p(correct ``source`` answer), the share of top-1 tokens in the target script (and CJK). Controls:
    ``n_random`` random directions of Δ's norm at the best layer and α; the flip direction −Δ on
    the first ``n_flip`` held-out ``target``-answering prompts at the best layer, every α. Greedy generations
    (``max_new_tokens`` ≤ 5) of the first ``n_generate`` held-out prompts at the baseline, the best
    setting, the first random control and the flip's best: share whose answer is in the target script.
    ``store_dir`` keeps the fit latent stores (else a temporary folder). Same seed, same numbers.
    """
    for lang in (source, target, via):
        check_lang(lang)
    if len({source, target, via}) < 3:
        raise DataError(f"source, target and via must be three different languages (got {source}, {target}, {via})")
    layers = default_layers(model.n_layers) if layers is None else [check_layer(x, model.n_layers) for x in layers]
    alphas = sorted({check_alpha(a) for a in (DEFAULT_ALPHAS if alphas is None else alphas)} - {0.0})
    if not layers or not alphas:
        raise ValueError("steering needs at least one layer and one non-zero alpha")
    if not 1 <= max_new_tokens <= 5:
        raise ValueError(f"max_new_tokens must be between 1 and 5 (short generations), got {max_new_tokens}")
    torch.manual_seed(seed)
    clock, cpu, timings = time.perf_counter(), time.process_time(), {}
    sets = {lang: tasks.build("translation", via, lang, model.tokenizer, seed=seed, words_dir=words_dir)
            for lang in (source, target)}
    frames = {lang: s.df.set_index("concept", drop=False) for lang, s in sets.items()}
    fit, test = split_concepts(list(set(frames[source].index) & set(frames[target].index)), seed, n_concepts)
    log.info("steering %s→%s via %s: %d fit concepts, %d held out; layers %s; α %s", source, target, via,
             len(fit), len(test), layers, alphas)
    with tempfile.TemporaryDirectory(prefix="llmlatent-steer-") as tmp:
        fit_sets = [tasks.PromptSet(frames[lang].loc[fit].reset_index(drop=True), meta=dict(sets[lang].meta))
                    for lang in (target, source)]
        stores = collect_pair(model, *fit_sets, Path(store_dir or tmp), batch_size=batch_size, progress=progress)
        vectors = {ell: mean_difference(*stores, ell) for ell in layers}
    for vec in vectors.values():
        vec.meta.update(fit_concepts=fit, seed=seed)
    flip_concepts = choose_flip_concepts(test, seed, n_flip)
    timings["fit"] = time.perf_counter() - clock
    directions = [(source, target, 1)] + ([(target, source, -1)] if flip else [])
    parts, batches, best_layer = [], {}, None
    bar = tqdm(total=1 + len(layers) * len(alphas) + n_random + (1 + len(alphas) if flip else 0), desc="steering",
               unit="forward", disable=not progress)
    for prompt_lang, towards, sign in directions:
        name = f"{prompt_lang}→{towards}"
        clock = time.perf_counter()
        held = frames[prompt_lang].loc[test if sign > 0 else flip_concepts].reset_index(drop=True)
        batches[name] = [_Batch(model, held.iloc[i:i + batch_size], frames[towards]["target_ids"], reuse_prefix)
                         for i in range(0, len(held), batch_size)]
        timings[f"prefix {name}"] = time.perf_counter() - clock
        clock = time.perf_counter()

        def evaluate(settings: list, name: str = name, towards: str = towards, prompt_lang: str = prompt_lang) -> None:
            for kind, draw, ell, alpha, vec in settings:
                frame = pd.concat([_metrics(b, b.logits(vec, alpha), towards, prompt_lang) for b in batches[name]])
                parts.append(frame.assign(direction=name, vector=kind, draw=draw, layer=ell, alpha=alpha))
                bar.update(1)

        grid = [(ell, a) for ell in layers for a in alphas] if sign > 0 else [(best_layer, a) for a in alphas]
        evaluate([("mean_difference", 0, None, 0.0, None)]
                 + [("mean_difference", 0, ell, a, vectors[ell] if sign > 0 else -vectors[ell]) for ell, a in grid])
        if sign > 0:  # random directions of Δ's norm at the best layer and α
            best = _pick(summarize(pd.concat(parts, ignore_index=True)), name)
            best_layer = int(best["layer"])
            evaluate([("random", k, best_layer, float(best["alpha"]), vectors[best_layer].random_like(seed * 1000 + k))
                      for k in range(n_random)])
        timings[f"steered forwards {name}"] = time.perf_counter() - clock
    bar.close()
    rows = pd.concat(parts, ignore_index=True)
    rows["layer"] = rows["layer"].astype("Int64")
    rows = rows[GROUP + [c for c in rows.columns if c not in GROUP]]
    summary = summarize(rows)
    clock = time.perf_counter()
    generations = _generations(model, summary, batches, vectors, directions, max_new_tokens, n_generate, seed)
    timings["generations"] = time.perf_counter() - clock
    summary = summary.merge(
        generations.groupby(GROUP, dropna=False)["answer_target_script"].mean().rename("generation_target_share").reset_index(),
        on=GROUP, how="left")
    best = best_json(summary, source, target, via, model, len(fit), len(test), layers, alphas)
    best["timings"] = {k: round(v, 3) for k, v in timings.items()}
    best["cpu_seconds"] = round(time.process_time() - cpu, 3)
    best["torch_threads"] = torch.get_num_threads()
    return SweepResult(rows, summary, generations, best, vectors)


def _generations(model: object, summary: pd.DataFrame, batches: dict, vectors: dict, directions: list,
                 max_new_tokens: int, n_generate: int, seed: int) -> pd.DataFrame:
    """Return greedy generations (tidy) of the first ``n_generate`` held-out prompts at each direction's baseline
    and best setting, and for the first random control."""
    out = []
    for prompt_lang, towards, sign in directions:
        name = f"{prompt_lang}→{towards}"
        best = _pick(summary, name)
        ell, alpha = int(best["layer"]), float(best["alpha"])
        todo = [("mean_difference", 0, ell, alpha, vectors[ell] if sign > 0 else -vectors[ell])]
        if sign > 0:  # the flip direction's baseline generations would just be target-language answers
            todo.insert(0, ("mean_difference", 0, pd.NA, 0.0, None))
        rnd = summary[(summary["direction"] == name) & (summary["vector"] == "random")]
        if len(rnd):
            r_layer, r_alpha = int(rnd["layer"].iloc[0]), float(rnd["alpha"].iloc[0])
            todo.append(("random", 0, r_layer, r_alpha, vectors[r_layer].random_like(seed * 1000)))
        for kind, draw, layer, a, vec in todo:
            left = n_generate
            for b in batches[name]:
                if left <= 0:
                    break
                texts = b.generate(vec, a, max_new_tokens, rows=left)
                left -= len(texts)
                answers = [_answer(t) for t in texts]
                out.append(pd.DataFrame({
                    "direction": name, "vector": kind, "draw": draw, "layer": layer, "alpha": a,
                    "prompt_id": b.frame["prompt_id"].to_numpy()[:len(texts)],
                    "concept": b.frame["concept"].to_numpy()[:len(texts)], "generation": texts, "answer": answers,
                    "answer_target_script": [has_script(x, towards) for x in answers],
                    "answer_source_script": [has_script(x, prompt_lang) for x in answers],
                }))
    frame = pd.concat(out, ignore_index=True)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (direction, vector, draw, layer, alpha): prompt count and mean of every metric."""
    rows = rows.assign(layer=rows["layer"].astype("Int64"))
    agg = rows.groupby(GROUP, dropna=False, sort=False).agg(
        n=("prompt_id", "size"), p_target_answer=("p_target_answer", "mean"), p_source_answer=("p_source_answer", "mean"),
        cjk_top1_share=("top1_cjk", "mean"), target_script_top1_share=("top1_target_script", "mean"),
        source_script_top1_share=("top1_source_script", "mean"))
    return agg.reset_index()


def _numbers(row: pd.Series | pd.DataFrame, prefix: str = "") -> dict:
    if isinstance(row, pd.DataFrame):  # several random draws: their mean
        row = row.mean(numeric_only=True)
    keys = ("cjk_top1_share", "target_script_top1_share", "source_script_top1_share", "p_target_answer",
            "p_source_answer", "generation_target_share")
    return {prefix + k: (None if pd.isna(row.get(k)) else round(float(row[k]), 6)) for k in keys}


def best_json(summary: pd.DataFrame, source: str, target: str, via: str, model: object, n_fit: int, n_test: int,
              layers: list[int], alphas: list[float]) -> dict:
    """Return best.json's content: the best setting, the α = 0 baseline, the random control and the flip direction."""
    name, flip = f"{source}→{target}", f"{target}→{source}"
    main = summary[summary["direction"] == name]
    best = _pick(summary, name)
    base = main[(main["vector"] == "mean_difference") & (main["alpha"] == 0)].iloc[0]
    rnd = main[main["vector"] == "random"]
    result = {
        "direction": name, "source": source, "target": target, "via": via, "model": model.fingerprint().to_dict(),
        "n_fit_concepts": n_fit, "n_test_prompts": int(best["n"]), "n_test_concepts": n_test, "layers": layers,
        "alphas": alphas, "layer": int(best["layer"]), "alpha": float(best["alpha"]), **_numbers(best),
        **_numbers(base, "baseline_"), "random_control_draws": len(rnd), **_numbers(rnd, "random_control_"),
    }
    part = summary[summary["direction"] == flip]
    if len(part):
        own = _pick(summary, flip)
        same = part[(part["layer"] == result["layer"]) & (part["alpha"] == result["alpha"])]
        result["flip"] = {
            "direction": flip, "n_test_prompts": int(own["n"]), "layer": int(own["layer"]), "alpha": float(own["alpha"]),
            **_numbers(own),
            **_numbers(part[part["alpha"] == 0].iloc[0], "baseline_"),
            "at_main_best": _numbers(same.iloc[0]) if len(same) else None,
        }
    return result


def run_to_dir(model: object, out: str | Path, **kwargs: object) -> dict:
    """Return best.json's content after writing the sweep to ``out`` atomically.

    Files: rows.csv (tidy, one row per direction × vector × layer × α × prompt), summary.csv (its
    means), generations.csv, ``heatmap_<src>_to_<tgt>.png|pdf`` per direction, the best Δ as
    ``vector_<src>_to_<tgt>_layer<ℓ>.safetensors`` and best.json; ``seconds`` excludes model loading.
    """
    import matplotlib.pyplot as plt

    from . import plots
    from .atomic import atomic_dir, check_output_dir

    check_output_dir(out, "best.json")  # before the sweep: a bad folder fails at once, unrelated files are never replaced
    started = time.perf_counter()
    result = sweep(model, **kwargs)
    best = result.best
    with atomic_dir(out, marker="best.json") as tmp:
        result.rows.to_csv(tmp / "rows.csv", index=False, float_format="%.8g")
        result.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.8g")
        result.generations.to_csv(tmp / "generations.csv", index=False)
        for direction in result.summary["direction"].unique():
            fig = heatmap_figure(result.summary, direction, model.name)
            plots.save(fig, tmp / f"heatmap_{direction.replace('→', '_to_')}")
            plt.close(fig)
        vector = result.vectors[best["layer"]]
        vector.save(tmp / f"vector_{best['source']}_to_{best['target']}_layer{best['layer']}.safetensors")
        best["seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "best.json").write_text(json.dumps(best, indent=1, ensure_ascii=False))
    log.info("wrote %s in %.1f s", out, best["seconds"])
    return best


def heatmap_figure(summary: pd.DataFrame, direction: str, model_name: str = "") -> object:
    """Return the layer × α heatmap of one direction: colour = target-script top-1 share, text = share / p(answer)."""
    from . import plots

    part = summary[(summary["direction"] == direction) & (summary["vector"] == "mean_difference")]
    base = part[part["alpha"] == 0].iloc[0]
    steered = part[part["alpha"] != 0]
    layers = sorted(int(x) for x in steered["layer"].unique())
    alphas = [0.0] + sorted(steered["alpha"].unique())
    share = pd.DataFrame(index=layers, columns=[f"{a:g}" for a in alphas], dtype=float)
    text = pd.DataFrame(index=layers, columns=share.columns, dtype=object)
    for ell in layers:
        for a in alphas:
            row = base if a == 0 else steered[(steered["layer"] == ell) & (steered["alpha"] == a)].iloc[0]
            share.loc[ell, f"{a:g}"] = row["target_script_top1_share"]
            text.loc[ell, f"{a:g}"] = f"{row['target_script_top1_share']:.2f}\np={row['p_target_answer']:.2f}"
    towards = direction.split("→")[1]
    title = f"steering {direction}: top-1 in {towards} script (p = correct answer) · {model_name}"
    return plots.heatmap(share.iloc[::-1], text=text.iloc[::-1], title=title, xlabel="α (multiple of Δ; 0 = baseline)",
                         ylabel=plots.LAYER_LABEL, vmin=0, vmax=1)
