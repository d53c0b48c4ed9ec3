"""The paper's geometric analyses of a latent store (``R/embed_unembed.r``), with no forward pass.

* **MDS of latent paths**: ``n_paths`` prompts (seeded), their RMS-normalised latents at every layer and a
  block of ``n_tokens`` vocabulary ids holding the paths' target and English tokens; similarity = each
  latent's softmax probability of a token (zero latent–latent and token–token), distance = −log(similarity
  + the smallest probability), classical MDS to two dimensions (:mod:`llmlatent.geometry`).
* **Procrustes ranks**: the orthogonal R mapping input embeddings onto the norm-scaled unembedding; for
  each prompt's target word, the ranks of its own token and of its English translation's token among
  U·R·E[word] (the paper's ``R/data/logit_ranks/ranks_{size}.tsv``).
* **Latent norm per layer** beside the token energy.

::

    python -m llmlatent geometry --from-latents STORE --out DIR     # --model names the head (default: embedded)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from llmlatent import checks, geometry, latents, metrics
from llmlatent.adapter import text_config
from llmlatent.errors import DataError
from llmlatent.experiments.base import Clock, Experiment
from llmlatent.experiments.settings import Settings, option
from llmlatent.latents.format import read_config
from llmlatent.latents.shards import store_digest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmlatent.adapter import LoadedHead
    from llmlatent.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometrySettings(Settings):
    """MDS of latent paths among token embeddings, Procrustes ranks of input embeddings, latent norms."""

    from_latents: str | None = option(
        None, "latent store to analyse (required; --model names its head: final norm + unembedding only)", key=False
    )  # its content enters the key (key_inputs), not its path
    n_paths: int = option(50, "prompts whose latent paths the MDS draws (seeded sample)")
    n_tokens: int = option(4000, "token sample of the MDS: ids n_tokens−1 … 0 holding the paths' tokens")
    seed: int = option(0, "seed of the prompt sample")
    progress: bool = option(True, "progress bar", key=False, cli=False)

    def __post_init__(self) -> None:
        if self.from_latents is None:
            self.fail(
                "geometry needs a latent store: pass --from-latents STORE (python -m llmlatent cache … --out STORE)"
            )
        checks.count(self.n_paths, "n_paths", flag="--n-paths")
        checks.count(self.n_tokens, "n_tokens", flag="--n-tokens")
        read_config(Path(self.from_latents))  # not a store: one line now, before the head is loaded

    def key_inputs(self, model: Model | LoadedHead) -> dict:
        """Return the store's content digest (the key's model-dependent input)."""
        return {"latent_store_sha256": store_digest(self.from_latents)}


@dataclass(frozen=True)
class GeometryResult:
    """The three analyses as tidy frames, and what they were computed on."""

    mds: pd.DataFrame  # one row per point: kind (token/latent), prompt_id, layer, token_id, token, role, x, y
    paths: pd.DataFrame  # one row per sampled path: nearest layer to its English and its target token (MDS plane)
    ranks: pd.DataFrame  # one row per prompt: its target and English tokens and their Procrustes ranks
    rank_summary: pd.DataFrame  # R's summary() of the ranks and of the relative ranks
    norms: pd.DataFrame  # one row per layer: latent norm and token energy, means with 95% intervals
    meta: dict
    seconds: dict


def word_token(tokenizer: PreTrainedTokenizerBase, ids: list[int] | None) -> int | None:
    """Return the member of a token-id set that spells most of the word (longest decoded text, byte tokens last)."""
    if not ids:
        return None
    texts = {i: tokenizer.decode([i]).strip() for i in ids}
    return max(ids, key=lambda i: ("\ufffd" not in texts[i], len(texts[i]), -i))


def prompt_tokens(prompts: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """Return prompt_id, concept, words and the representative target and English token of every prompt."""
    frame = pd.DataFrame({"prompt_id": prompts["prompt_id"], "concept": prompts.get("concept")})
    for role, word in (("target", "tgt_word"), ("english", "en_word")):
        frame[f"{role}_word"] = prompts.get(word)
        ids = [word_token(tokenizer, s) for s in prompts[f"{role}_ids"]]
        frame[f"{role}_token_id"] = pd.array(ids, dtype="Int64")
        frame[f"{role}_token"] = [None if i is None else tokenizer.convert_ids_to_tokens(int(i)) for i in ids]
    missing = frame["target_token_id"].isna() | frame["english_token_id"].isna()
    if missing.all():
        raise DataError("no prompt of the store has both a target and an English token set; nothing to analyse")
    return frame[~missing].reset_index(drop=True)


def mds_of_paths(
    latents: torch.Tensor, u: torch.Tensor, words: pd.DataFrame, s: GeometrySettings, softcap: float | None, eps: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (the MDS points, one row per path with its layers nearest to its English and its target token)."""
    n, n_layers, _ = latents.shape
    path_ids = [*words["target_token_id"].astype(int), *words["english_token_id"].astype(int)]
    sample = geometry.token_sample(max(s.n_tokens, len(path_ids)), path_ids, u.shape[0])
    flat = geometry.rms_normalise(latents.reshape(n * n_layers, -1), eps)
    probabilities = geometry.token_probabilities(flat, u, sample, softcap=softcap)
    coords = geometry.classical_mds(geometry.mds_distances(probabilities))
    roles = ["target"] * n + ["english"] * n + ["sample"] * (len(sample) - 2 * n)
    owners = [*words["prompt_id"], *words["prompt_id"]] + [None] * (len(sample) - 2 * n)
    tokens = pd.DataFrame({"kind": "token", "prompt_id": owners, "layer": None, "token_id": sample, "role": roles})
    lat = pd.DataFrame(
        {
            "kind": "latent",
            "prompt_id": np.repeat(words["prompt_id"].to_numpy(), n_layers),
            "layer": np.tile(np.arange(n_layers), n),
            "token_id": None,
            "role": "latent",
        }
    )
    points = pd.concat([tokens, lat], ignore_index=True)
    points[["x", "y"]] = coords
    paths = []
    xy_lat = coords[len(sample) :].reshape(n, n_layers, 2)
    for i, row in words.iterrows():  # the layer whose latent lies closest (MDS plane) to each of its two words
        near = {
            role: np.linalg.norm(xy_lat[i] - coords[k * n + i], axis=1) for k, role in enumerate(("target", "english"))
        }
        paths.append(
            {
                "prompt_id": row["prompt_id"],
                "nearest_layer_english": int(near["english"].argmin()),
                "nearest_layer_target": int(near["target"].argmin()),
                "p_english_peak_layer": int(probabilities[i * n_layers : (i + 1) * n_layers, n + i].argmax()),
                "p_target_peak_layer": int(probabilities[i * n_layers : (i + 1) * n_layers, i].argmax()),
            }
        )
    return points, pd.DataFrame(paths)


def input_embeddings(source: Model | LoadedHead) -> torch.Tensor:
    """Return the model's input embeddings [vocab, hidden]: the loaded model's, the tied head's, or read alone."""
    hf = getattr(source, "hf", None)
    if hf is not None:
        return hf.get_input_embeddings().weight.detach().float()
    from llmlatent.model import load_input_embeddings

    if getattr(text_config(source.config), "tie_word_embeddings", False):
        return source.unembedding.weight.detach().float()  # tied: the head's matrix is the input embedding
    return load_input_embeddings(getattr(source.config, "name_or_path", None) or source.name)


def procrustes_ranks(u: torch.Tensor, e: torch.Tensor, words: pd.DataFrame, tgt: str) -> tuple[pd.DataFrame, dict]:
    """Return (one row per prompt with its Procrustes ranks and relative ranks, the rotation's statistics)."""
    rotation = geometry.procrustes(e, u)
    target, english = words["target_token_id"].astype(int).tolist(), words["english_token_id"].astype(int).tolist()
    own, translation = geometry.procrustes_ranks(u, e, rotation, target, english)
    # control: the English token of the next prompt (another concept), so "English ranks high" can be told apart
    # from "this word's translation ranks high"
    _, control = geometry.procrustes_ranks(u, e, rotation, target, english[1:] + english[:1])
    ranks = words.copy()
    ranks[f"rank_{tgt}"], ranks["rank_en"], ranks["rank_en_other_concept"] = own, translation, control
    for column in (f"rank_{tgt}", "rank_en", "rank_en_other_concept"):
        ranks[column.replace("rank", "relrank")] = (ranks[column] - 1) / (u.shape[0] - 1)
    d = rotation.shape[0]
    stats = {
        "rotation_distance_from_identity": float(
            torch.linalg.matrix_norm(rotation - torch.eye(d, dtype=rotation.dtype)) / d**0.5
        ),
        "rotation_trace_over_d": float(torch.trace(rotation) / d),
    }
    return ranks, stats


def norms_per_layer(latents: torch.Tensor, unembedding: object) -> pd.DataFrame:
    """Return one row per layer: mean latent norm and token energy with their 95% normal intervals."""
    n, n_layers, d = latents.shape
    norm = geometry.latent_norms(latents).numpy()
    energy = metrics.token_energy(unembedding, latents.reshape(n * n_layers, d)).reshape(n, n_layers).cpu().numpy()
    rows = []
    for layer in range(n_layers):
        record = {"layer": layer}
        for name, values in (("norm", norm[:, layer]), ("energy", energy[:, layer])):
            record[f"{name}_mean"], record[f"{name}_lo"], record[f"{name}_hi"] = metrics.interval(values)
        rows.append(record)
    return pd.DataFrame(rows)


def compute(model: Model | LoadedHead, settings: GeometrySettings) -> GeometryResult:
    """Return the three analyses of the store ``settings`` names, decoded with ``model``'s head (no forward pass)."""
    clock = Clock()
    store = latents.load(settings.from_latents)
    store.check(model.fingerprint())
    unembedding = model.unembedding
    words = prompt_tokens(store.prompts, model.tokenizer)
    rows = store.prompts.reset_index(drop=True).reset_index().set_index("prompt_id").loc[words["prompt_id"], "index"]
    all_latents = store.latents()[torch.from_numpy(np.array(rows, dtype=np.int64))]
    u = geometry.scaled_unembedding(unembedding).cpu()  # the analyses run on CPU whatever the head's device
    rng = np.random.default_rng(settings.seed)
    picked = np.sort(rng.choice(len(words), size=min(settings.n_paths, len(words)), replace=False))
    eps = float(getattr(unembedding.final_norm, "eps", getattr(unembedding.final_norm, "variance_epsilon", 1e-6)))
    with clock("mds"):
        mds, paths = mds_of_paths(
            all_latents[picked], u, words.iloc[picked].reset_index(drop=True), settings, unembedding.softcap, eps
        )
    with clock("procrustes"):
        tgt = str(store.meta.get("tgt", "target"))
        ranks, rotation = procrustes_ranks(u, input_embeddings(model).cpu(), words, tgt)
    with clock("norms"):
        norms = norms_per_layer(all_latents, unembedding)
    tokenizer = model.tokenizer
    mds["token"] = [None if pd.isna(i) else tokenizer.convert_ids_to_tokens(int(i)) for i in mds["token_id"]]
    columns = [f"rank_{tgt}", "rank_en", "rank_en_other_concept", f"relrank_{tgt}", "relrank_en"]
    meta = {**store.meta, "model_name": model.name, "n_prompts": len(words), "n_paths": len(picked)}
    meta.update(vocab_size=int(u.shape[0]), **rotation)
    return GeometryResult(mds, paths, ranks, geometry.rank_summary(ranks[columns]), norms, meta, clock.rounded())


def reading(paths: pd.DataFrame) -> dict:
    """Return the paths' headline: how often a path passes its English word before its target word (MDS plane)."""
    before = paths["nearest_layer_english"] < paths["nearest_layer_target"]
    peaks_before = paths["p_english_peak_layer"] < paths["p_target_peak_layer"]
    return {
        "paths_english_before_target": float(before.mean()),
        "paths_p_english_peaks_before_target": float(peaks_before.mean()),
        "mean_p_english_peak_layer": float(paths["p_english_peak_layer"].mean()),
        "mean_p_target_peak_layer": float(paths["p_target_peak_layer"].mean()),
        "mean_nearest_layer_english": float(paths["nearest_layer_english"].mean()),
        "mean_nearest_layer_target": float(paths["nearest_layer_target"].mean()),
    }


def write(result: GeometryResult, folder: Path) -> dict:
    """Return run.json's own fields after writing the tables (CSV, the paper's TSV) and the figures (PNG + PDF)."""
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import geometry as geoplots
    from llmlatent.experiments.figures import plots

    result.mds.to_csv(folder / "mds.csv", index=False, float_format="%.8g")
    result.paths.to_csv(folder / "paths.csv", index=False)
    result.ranks.to_csv(folder / "ranks.csv", index=False, float_format="%.8g")
    result.norms.to_csv(folder / "norms.csv", index=False, float_format="%.8g")
    result.rank_summary.to_csv(folder / "ranks_summary.tsv", sep="\t", index=False, float_format="%.6g")
    meta = result.meta
    title = f"{meta.get('task', '')} {meta.get('src', '')}→{meta.get('tgt', '')} · {meta.get('model_name', '')}"
    for name, fig in (
        ("mds", geoplots.mds_figure(result.mds, result.meta, title)),
        ("norms", geoplots.norm_figure(result.norms, title)),
    ):
        plots.save(fig, folder / name)
        plt.close(fig)
    tgt = str(result.meta.get("tgt", "target"))
    medians = result.rank_summary.set_index("statistic").loc["Median"]
    return {
        **{k: v for k, v in result.meta.items() if k not in ("notes", "dropped")},
        **reading(result.paths),
        f"median_rank_{tgt}": float(medians[f"rank_{tgt}"]),
        "median_rank_en": float(medians["rank_en"]),
        "median_rank_en_other_concept": float(medians["rank_en_other_concept"]),
        "timings": result.seconds,
    }


def describe(settings: GeometrySettings) -> str:
    """Return the settings in a log line."""
    return f"geometry of latent store {settings.from_latents}"


HEADLINE = ("n_paths", "paths_english_before_target", "median_rank_en", "seconds")
EXPERIMENT = Experiment(
    "geometry",
    GeometrySettings,
    compute,
    write,
    command="geometry",
    help="MDS of latent paths, Procrustes ranks, latent norms of a latent store (no forward pass)",
    format_version=1,
    headline=HEADLINE,
    describe=describe,
)
