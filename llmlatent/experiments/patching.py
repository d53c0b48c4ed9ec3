"""The two patching experiments of Dumas et al. (ACL 2025) on translation prompts, into a result folder.

Pairs: a receiver translation prompt (concept C_r, ``src_r → L_r``) and a donor concept C_d ≠ C_r.

- **Language before concept** (condition ``donor``): the donor prompt translates C_d ``src_d → L_d``
  (L_d ≠ L_r); its last-token latents are patched into the receiver at each layer. Columns per patched
  layer: ``p_cd_lr`` (C_d in L_r), ``p_cd_ld`` (C_d in L_d), ``p_cr_lr`` (C_r in L_r), ``p_cr_ld`` (C_r in
  L_d), each the probability mass of the word's token set (:mod:`llmlatent.tokens`).
- **Mean over languages** (conditions ``single`` and ``mean``): the donor prompts translate C_d into the
  *receiver's* language L_r from each input language of ``mean_over`` (languages equal to L_r are
  skipped); ``mean`` patches the mean of their latents, ``single`` the latents of the ``src_d → L_r``
  prompt alone. p_cd_lr is then the probability of the correct answer (C_d) in the receiver's language,
  ``top1_cd_lr`` whether the top-1 token is in its set.
- ``unpatched``: the receiver alone (one row per pair, layer empty), the reference line of both figures.

Pairs are drawn from the concepts that every needed prompt set keeps (the paper's filters), seeded;
each receiver's donor is the next concept in the seeded order whose four token sets are pairwise
disjoint from the receiver's (so no token counts for two columns).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from llmlatent import checks, latents, patching, tasks
from llmlatent.errors import UsageError
from llmlatent.experiments.base import Clock, Experiment
from llmlatent.experiments.settings import Settings, option
from llmlatent.languages.registry import check_lang
from llmlatent.lens import decode
from llmlatent.lens.base import of as lens_of
from llmlatent.patching import SETS, headline, summarize

if TYPE_CHECKING:
    from llmlatent.model import Model

log = logging.getLogger(__name__)


def parse_spec(text: str, name: str = "--donor") -> tuple[str, str]:
    """Return (source, target) of a ``src:tgt`` translation spec such as ``de:fr``; UsageError if malformed."""
    parts = str(text).split(":")
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"{name} must look like SRC:TGT (e.g. de:fr), got {text!r}")
    src, tgt = (p.strip() for p in parts)  # availability is checked with the words folder (check_settings)
    if src == tgt:
        raise UsageError(f"{name} {text!r}: the prompts translate, so source and target must differ")
    return src, tgt


def check_settings(
    donor: tuple[str, str],
    receiver: tuple[str, str],
    mean_over: Sequence[str] | None,
    n_pairs: int | None,
    words_dir: str | Path | None = None,
) -> list[str]:
    """Return the mean-over languages that are used (those ≠ the receiver's language) after checking every setting
    (languages: available in ``words_dir`` or the bundled folder)."""
    for lang in (*donor, *receiver):
        check_lang(lang, words_dir)
    if donor[1] == receiver[1]:
        raise UsageError(
            f"donor and receiver must answer in different languages (both answer in {donor[1]}); "
            "e.g. --donor de:fr --receiver ru:zh"
        )
    if n_pairs is not None and n_pairs < 2:
        raise UsageError(f"--n-pairs must be at least 2 pairs (95% intervals need two), got {n_pairs}")
    if not mean_over:
        return []
    langs = [check_lang(x, words_dir) for x in mean_over]
    if len(set(langs)) < len(langs):
        raise UsageError(f"--mean-over lists a language twice ({', '.join(langs)}); give each language once")
    used = [x for x in dict.fromkeys(langs) if x != receiver[1]]
    if len(used) < 2:
        raise UsageError(
            f"--mean-over needs at least two input languages other than the receiver's {receiver[1]}, got {mean_over}"
        )
    if donor[0] == receiver[1]:
        raise UsageError(
            f"the single-language donor translates {donor[0]}→{receiver[1]}: "
            f"pick a donor source other than {receiver[1]}"
        )
    return used


def _prompt_sets(
    model: Model, specs: Sequence[tuple[str, str]], seed: int, words_dir: str | Path | None
) -> dict[tuple[str, str], pd.DataFrame]:
    return {
        spec: tasks.build("translation", *spec, model.tokenizer, seed=seed, words_dir=words_dir).df.set_index("concept")
        for spec in dict.fromkeys(specs)
    }


def _latents(
    model: Model,
    frame: pd.DataFrame,
    concepts: list[str],
    spec: tuple[str, str],
    latents_dir: str | Path | None,
    batch_size: int,
) -> torch.Tensor:
    """Return the donor latents of ``concepts`` under one prompt set: live, or from (resumable) latent stores."""
    if latents_dir is None:
        return patching.donor_latents(model, frame.loc[concepts, "prompt"].tolist(), batch_size=batch_size)
    prompts = tasks.PromptSet(frame.reset_index(), meta={"task": "translation", "src": spec[0], "tgt": spec[1]})
    # named by pair and by a digest of the prompts, so another --seed or word list gets its own store
    digest = hashlib.sha256("\x00".join(prompts.prompts).encode()).hexdigest()[:12]
    folder = Path(latents_dir) / f"translation-{spec[0]}-{spec[1]}-{digest}"
    store = latents.collect(model, prompts, folder, batch_size=batch_size, progress=False)
    return patching.from_store(store, concepts, model)


@dataclass(frozen=True)
class PatchSettings(Settings):
    """Both patching experiments: donor latents into receiver prompts at each layer; the mean over input languages."""

    donor: tuple[str, str] = option(
        ("de", "fr"),
        "donor translation SRC:TGT (default de:fr)",
        parse=lambda s: parse_spec(s, "--donor"),
        metavar="SRC:TGT",
    )
    receiver: tuple[str, str] = option(
        ("ru", "zh"),
        "receiver translation SRC:TGT, another output language (default ru:zh)",
        parse=lambda s: parse_spec(s, "--receiver"),
        metavar="SRC:TGT",
    )
    mean_over: tuple[str, ...] = option(
        ("de", "fr", "ru", "en"),
        "input languages whose C_d latents (answering in "
        "the receiver's language) are averaged; 'none' skips that experiment",
        parse=lambda s: parse_langs(s, "--mean-over"),
    )
    n_pairs: int | None = option(
        None, "donor/receiver pairs (default: every concept that passes the filters)", aliases=("--n",)
    )
    seed: int = option(0, "seed of the pair draw and of the few-shot examples")
    layers: tuple[int, ...] | None = option(None, "patched layers (after block i, 0-based; default all)")
    window: int = option(1, "blocks overwritten from the layer on (default 1: that block only)")
    ci: str = option("normal", "95% intervals", choices=("normal", "bootstrap"))
    words_dir: str | None = option(
        None, "folder of word CSVs (bundled or seed layout)", digest=True, aliases=("--words",), key_name="words"
    )
    latents_dir: str | None = option(
        None,
        "take donor latents from latent stores in this folder (collected if missing; float16)",
        key=False,
        aliases=("--latents", "--store-dir"),
    )
    batch_size: int = option(32, "receiver prompts per forward (does not change the numbers)", key=False)

    def __post_init__(self) -> None:
        self._set("donor", tuple(self.donor))
        self._set("receiver", tuple(self.receiver))
        self._set("mean_over", tuple(self.mean_over or ()))
        self._set("layers", None if self.layers is None else tuple(self.layers))
        check_settings(self.donor, self.receiver, self.mean_over, self.n_pairs, self.words_dir)
        checks.count(self.window, "window")
        checks.count(self.batch_size, "batch_size")
        for layer in self.layers or ():
            checks.count(layer, "layers", minimum=0)

    def key_inputs(self, model: Model) -> dict:
        """Return whether donor latents come from (float16) stores or live forwards: it changes the numbers."""
        return {"donor_latents": "store" if self.latents_dir else "live"}


@dataclass(frozen=True)
class PatchResult:
    """Computed patching: tidy rows (pair × condition × layer), their summary, the run's metadata and title."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    meta: dict
    title: str
    pairs: pd.DataFrame  # pair_id, donor and receiver concepts with their prompts


def parse_langs(text: str, name: str) -> tuple[str, ...]:
    """Return the languages of a comma-separated list (``none`` or empty: no languages)."""
    if str(text).strip().lower() in ("", "none"):
        return ()
    return tuple(x.strip() for x in str(text).split(",") if x.strip())  # checked in check_settings


def compute(model: Model, settings: PatchSettings) -> PatchResult:
    """Return both experiments' rows (one per pair, condition and layer), summary and metadata; see the module
    docstring."""
    s, clock = settings, Clock()
    used = check_settings(s.donor, s.receiver, s.mean_over, s.n_pairs, s.words_dir)
    mean_specs, single = [(x, s.receiver[1]) for x in used], (s.donor[0], s.receiver[1])
    with clock("donor_latents"):
        specs = [s.receiver, s.donor] + ([single] + mean_specs if used else [])
        frames = _prompt_sets(model, specs, s.seed, s.words_dir)
        pool = sorted(set.intersection(*(set(f.index) for f in frames.values())))
        ld, lr = (frames[x]["target_ids"].map(list).to_dict() for x in (s.donor, s.receiver))
        pairs, skipped = patching.make_pairs(pool, ld, lr, s.n_pairs, s.seed)
        if len(pairs) < 2:
            s.fail(
                f"only {len(pairs)} donor/receiver pair(s) pass the filters for {s.donor}→{s.receiver}; "
                "try other languages"
            )
        donors_c = [d for d, _ in pairs]
        log.info("patching %d pairs (%s→%s into %s→%s; mean over %s)", len(pairs), *s.donor, *s.receiver, used or "-")
        latents = {
            spec: _latents(model, frames[spec], donors_c, spec, s.latents_dir, s.batch_size)
            for spec in dict.fromkeys([s.donor] + ([single] + mean_specs if used else []))
        }
        donors = {"donor": latents[s.donor]}
        if used:
            donors["single"], donors["mean"] = latents[single], patching.mean_latents([latents[x] for x in mean_specs])
    with clock("patched_forwards"):
        receivers = frames[s.receiver].loc[[r for _, r in pairs], "prompt"].tolist()
        result = patching.sweep_many(
            model, receivers, donors, layers=s.layers, window=s.window, batch_size=s.batch_size
        )
    with clock("decode"):
        rows = decode_rows(model, result, pairs, ld, lr)
    through_end = warn_if_flat(s, len(pairs), min(result.layers), model.n_layers)
    meta = {
        "donor": list(s.donor),
        "receiver": list(s.receiver),
        "mean_over": used,
        "single_spec": list(single) if used else None,
        "n_requested": s.n_pairs,
        "n_pairs": len(pairs),
        "n_pool": len(pool),
        "receivers_without_disjoint_donor": skipped,
        "seed": s.seed,
        "window": s.window,
        "layers": result.layers,
        "batch_size": s.batch_size,
        "timings": clock.rounded(),
        "window_reaches_last_block": through_end,
    }
    title = f"patching {s.donor[0]}→{s.donor[1]} into {s.receiver[0]}→{s.receiver[1]} · {model.name}"
    table = pair_table(pairs, frames[s.donor], receivers)
    return PatchResult(rows, summarize(rows, ci=s.ci, seed=s.seed), {**meta, "ci": s.ci}, title, table)


def warn_if_flat(s: PatchSettings, n_pairs: int, first_layer: int, n_layers: int) -> bool:
    """Return whether every patch overwrites through the last block (flat curves), warning about it and about
    fewer pairs than asked for."""
    if s.n_pairs is not None and n_pairs < s.n_pairs:
        log.warning("only %d donor/receiver pairs pass the filters (%d asked for)", n_pairs, s.n_pairs)
    through_end = first_layer + s.window >= n_layers
    if through_end:
        log.warning(
            "--window %d from layer %d overwrites every block through the last one (%d blocks): the curves "
            "are flat, so no 'moves at' layer is reported",
            s.window,
            first_layer,
            n_layers,
        )
    return through_end


def pair_table(pairs: list[tuple[str, str]], donor_frame: pd.DataFrame, receiver_prompts: list[str]) -> pd.DataFrame:
    """Return pairs.csv: which donor concept was patched into which receiver, with both prompts."""
    donors = [d for d, _ in pairs]
    return pd.DataFrame(
        {
            "pair_id": range(len(pairs)),
            "donor_concept": donors,
            "receiver_concept": [r for _, r in pairs],
            "donor_prompt": donor_frame.loc[donors, "prompt"].tolist(),
            "receiver_prompt": receiver_prompts,
        }
    )


def decode_rows(
    model: Model, result: patching.SweepLatents, pairs: list[tuple[str, str]], ld: dict, lr: dict
) -> pd.DataFrame:
    """Return the tidy rows of a patching sweep: every final latent decoded once (streamed), with the four token
    sets."""
    n, layers = len(pairs), result.layers
    blocks = [("unpatched", [pd.NA], result.unpatched[:, None])]
    blocks += [(name, layers, latents) for name, latents in result.patched.items()]
    frames, latents, sets = [], [], {s: [] for s in SETS}
    for condition, ells, lat in blocks:
        k = len(ells)
        frames.append(
            pd.DataFrame(
                {
                    "pair_id": np.repeat(np.arange(n), k),
                    "donor_concept": np.repeat([d for d, _ in pairs], k),
                    "receiver_concept": np.repeat([r for _, r in pairs], k),
                    "condition": condition,
                    "layer": pd.array(np.tile(np.array(ells, dtype=object), n), dtype="Int64"),
                }
            )
        )
        latents.append(lat.reshape(n * k, -1))
        for d, r in pairs:
            for name, s in (("cd_lr", lr[d]), ("cd_ld", ld[d]), ("cr_lr", lr[r]), ("cr_ld", ld[r])):
                sets[name].extend([s] * k)
    rows_latents = torch.cat(latents)  # the last block's outputs: decoded by the model's lens at its last layer
    last = torch.full((rows_latents.shape[0],), model.n_layers - 1)
    stats = decode.decode(lens_of(model), rows_latents, sets, k=1, energy=False, layers=last)
    rows = pd.concat(frames, ignore_index=True)
    top = stats["top_ids"][:, 0].tolist()
    for name in SETS:
        rows[f"p_{name}"] = stats[f"p_{name}"].double().numpy()
        rows[f"top1_{name}"] = [int(t in set(s)) for t, s in zip(top, sets[name])]
    rows["entropy"] = stats["entropy"].double().numpy()
    names = {t: model.tokenizer.decode([t]) for t in set(top)}
    rows["top_token"] = [names[t] for t in top]
    return rows


def write(result: PatchResult, folder: Path) -> dict:
    """Return run.json's own fields after writing rows.csv, summary.csv and the figures (PNG+PDF) to ``folder``."""
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import patching as patchplots
    from llmlatent.experiments.figures import plots

    result.rows.to_csv(folder / "rows.csv", index=False, float_format="%.8g")
    result.summary.to_csv(folder / "summary.csv", index=False, float_format="%.8g")
    result.pairs.to_csv(folder / "pairs.csv", index=False)
    figures = [("language_concept", patchplots.patching_figure(result.summary, result.meta, result.title))]
    if result.meta["mean_over"]:
        figures.append(
            ("mean_over_languages", patchplots.patching_mean_figure(result.summary, result.meta, result.title))
        )
    for name, fig in figures:
        plots.save(fig, folder / name)
        plt.close(fig)
    record = {**result.meta, **headline(result.summary)}
    if result.meta["window_reaches_last_block"]:  # flat curves: a "moves at" layer would be no finding
        record.update(language_moves_at=None, concept_moves_at=None, language_before_concept=None)
    return record


# the record keys the command line prints
HEADLINE = ("n_pairs", "seconds", "unpatched", "language_moves_at", "concept_moves_at", "single", "mean")


def describe(s: PatchSettings) -> str:
    """Return the settings in a log line."""
    return f"{s.donor[0]}→{s.donor[1]} into {s.receiver[0]}→{s.receiver[1]}"


EXPERIMENT = Experiment(
    "patching",
    PatchSettings,
    compute,
    write,
    command="patch",
    help="activation patching: donor latents into receiver prompts at each layer (Dumas et al.)",
    format_version=3,
    headline=HEADLINE,
    describe=describe,
)
