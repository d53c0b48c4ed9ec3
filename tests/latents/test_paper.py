"""The paper's own precomputed latents: a .pt + _dataset.csv written as the paper's notebook writes them (one
prompt at a time, every decoder block's output at the last token, torch.save of the stacked float32 tensor),
imported into a latent store and swept with the head alone; the result equals a live sweep. Hostile files are
refused with one line, exit status 2, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from llmlatent import cli, tasks
from llmlatent.atomic import file_sha256
from llmlatent.latents import paper
from llmlatent.lens import last_token as lens

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "7b_fr_zh"
NUMERIC = ["p_target", "p_english", "p_source", "entropy", "energy", "top_prob"]
PADDED = 2  # rows whose stored out_token_id starts with the bare "▁" (29871), as some of the paper's lists do


def paper_latents(
    hf: torch.nn.Module, blocks: torch.nn.ModuleList, tokenizer: object, prompts: list[str]
) -> torch.Tensor:
    """Return [prompts, blocks, hidden] as the paper's llamawrapper computes it: one prompt at a time, the raw
    output of every decoder block (hooks: no embedding, no final norm) at the last token, stacked."""
    rows, captured = [], []

    def keep(module: torch.nn.Module, args: tuple, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden[0, -1].detach().float().clone())

    for prompt in prompts:
        captured.clear()
        hooks = [block.register_forward_hook(keep) for block in blocks]
        try:
            with torch.no_grad():
                hf(**tokenizer(prompt, return_tensors="pt"))
        finally:
            for hook in hooks:
                hook.remove()
        rows.append(torch.stack(captured))
    return torch.stack(rows).float()


def write_pair(folder: Path, name: str, prompts: tasks.PromptSet, latents: torch.Tensor) -> Path:
    """Return the .pt written beside its _dataset.csv in the paper's layout (id lists as Python list strings)."""
    df = prompts.df
    out_ids = [([29871] if i < PADDED else []) + list(ids) for i, ids in enumerate(df["target_ids"])]
    frame = pd.DataFrame(
        {
            "prompt": df["prompt"],
            "out_token_id": [str(ids) for ids in out_ids],
            "out_token_str": df["tgt_word"],
            "latent_token_id": [str(list(ids)) for ids in df["english_ids"]],
            "latent_token_str": df["en_word"],
            "in_token_str": df["src_word"],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{name}_dataset.csv", index=False)
    torch.save(latents, folder / f"{name}_latents.pt")
    return folder / f"{name}_latents.pt"


@pytest.fixture(scope="module")
def fixture_pair(llama2_folder, tmp_path_factory):
    """A paper-format fr→zh pair (.pt + CSV) from the tiny Llama-2-shaped model, and the loaded model."""
    from llmlatent import model

    m = model.load(str(llama2_folder), device="cpu")
    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=6, seed=0)
    folder = tmp_path_factory.mktemp("dataset") / "translation"
    pt = write_pair(folder, NAME, prompts, paper_latents(m.hf, m.hf.model.layers, m.tokenizer, prompts.prompts))
    return pt, m


def run(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def test_import_and_sweep_from_store_equal_a_live_sweep(fixture_pair, llama2_folder, tmp_path, monkeypatch):
    from llmlatent import latents, model

    pt, m = fixture_pair
    csv = pt.with_name(f"{NAME}_dataset.csv")
    assert run("sweep", "--prompts", csv, "--model", llama2_folder, "--out", tmp_path / "live") == 0

    def no_full_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the import and the sweep from a store must read the head only")

    monkeypatch.setattr(model, "load", no_full_model)
    assert run("import-latents", pt.parent.parent, "--model", llama2_folder, "--out", tmp_path / "stores") == 0
    store = latents.load(tmp_path / "stores" / NAME)
    meta = store.meta
    assert (meta["task"], meta["src"], meta["tgt"], meta["size"], meta["pair"]) == (
        "translation",
        "fr",
        "zh",
        "7b",
        "fr_zh",
    )
    assert meta["source_file"] == pt.name and meta["source_sha256"] == file_sha256(pt)
    assert meta["note"] == paper.NOTE and store.dtype == "float32"
    n = len(store)
    assert n == 6 and meta["paper_token_sets"]["target_ids"]["equal_to_stored"] == n - PADDED
    assert meta["paper_token_sets"]["english_ids"]["equal_to_stored"] == n
    assert run("sweep", "--from-latents", store.path, "--model", llama2_folder, "--out", tmp_path / "cached") == 0

    read = {k: pd.read_csv(tmp_path / k / "rows.csv") for k in ("live", "cached")}
    assert read["live"][["prompt_id", "layer", "concept"]].equals(read["cached"][["prompt_id", "layer", "concept"]])
    diff = (read["live"][NUMERIC] - read["cached"][NUMERIC]).abs().max().max()
    assert diff <= 1e-5, diff
    assert (read["live"]["top_token"] == read["cached"]["top_token"]).all()
    summaries = [pd.read_csv(tmp_path / k / "summary.csv") for k in ("live", "cached")]
    assert (summaries[0].select_dtypes("number") - summaries[1].select_dtypes("number")).abs().max().max() <= 1e-5
    prompts = [pd.read_csv(tmp_path / k / "prompts.csv", dtype=str) for k in ("live", "cached")]
    assert prompts[0]["target_ids"].tolist() == prompts[1]["target_ids"].tolist()
    records = [json.loads((tmp_path / k / "run.json").read_text()) for k in ("live", "cached")]
    assert set(records[0]["files"]) == set(records[1]["files"])  # rows, summary, prompts, figures, run.json
    assert records[1]["source_sha256"] == meta["source_sha256"] and records[1]["note"] == paper.NOTE
    assert records[0]["model"] == records[1]["model"]  # the head's fingerprint is the full model's
    assert run("sweep", "--from-latents", store.path, "--model", llama2_folder, "--out", tmp_path / "cached") == 0
    assert json.loads((tmp_path / "cached" / "run.json").read_text()) == records[1]  # reused: same store, same key


def test_api_parity_with_the_hooks_of_the_paper(fixture_pair, llama2_folder, tmp_path):
    """The stored latents are the paper's hooks' tensor, bit for bit; decoding them equals the live sweep."""
    from llmlatent import model

    pt, m = fixture_pair
    head = model.load_unembedding(str(llama2_folder))
    store = paper.import_paper(pt, head, tmp_path / "store", progress=False)
    assert torch.equal(store.latents(), torch.load(pt, weights_only=True))
    cached = lens.from_latents(store, head, progress=False)
    live = lens.sweep(m, store.prompt_set(), progress=False)
    assert (live[NUMERIC] - cached[NUMERIC]).abs().max().max() <= 1e-5
    again = paper.import_paper(pt, head, tmp_path / "store", progress=False)  # resumes: nothing left to write
    assert torch.equal(again.latents(), store.latents())


def test_sweep_from_latents_refuses_prompt_options(fixture_pair, tmp_path, capsys):
    assert run("sweep", "--from-latents", tmp_path / "nothing", "--out", tmp_path / "o") == 2
    assert "is not a latent store" in capsys.readouterr().err
    tmp_path.joinpath("store").mkdir()
    assert run("sweep", "--from-latents", tmp_path, "--task", "cloze", "--out", tmp_path / "o") == 2
    assert "already holds its prompts; drop --task" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class Payload:
    """A pickle that creates a file when it is loaded (what weights_only must refuse)."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self) -> tuple:
        return open, (str(self.victim), "w")


def _rewrite_csv(pt: Path, change) -> None:
    csv = pt.with_name(f"{NAME}_dataset.csv")
    change(pd.read_csv(csv, dtype=str, keep_default_na=False)).to_csv(csv, index=False)


def _another_pairs_csv(pt: Path) -> None:
    csv = pt.with_name(f"{NAME}_dataset.csv")
    csv.rename(pt.with_name("7b_de_zh_dataset.csv"))


def _other_pair_content(pt: Path) -> None:
    _rewrite_csv(pt, lambda f: f.assign(prompt=f["prompt"].str.replace("Français", "Deutsch")))


def _malformed_ids(pt: Path) -> None:
    _rewrite_csv(pt, lambda f: f.assign(out_token_id=["[1, 2"] + f["out_token_id"].tolist()[1:]))


HOSTILE = {  # case → (how to spoil the copied pair, a part of the one-line message)
    "dict": (lambda pt, t: torch.save({"latents": t}, pt), "holds a dict, not one float32 tensor"),
    "list": (lambda pt, t: torch.save([t], pt), "holds a list, not one float32 tensor"),
    "pickle payload": (
        lambda pt, t: torch.save(Payload(pt.parent / "victim"), pt),
        "will not load it (it asks to call io.open); nothing was run or written",
    ),
    "rank 2": (lambda pt, t: torch.save(t[:, 0], pt), "tensor of rank 2"),
    "width": (lambda pt, t: torch.save(t[..., :32].clone(), pt), "width 32 do not fit"),
    "layers": (lambda pt, t: torch.save(t[:, :1].clone(), pt), "latents of 1 blocks"),
    "integers": (lambda pt, t: torch.save(t.long(), pt), "holds a tensor of dtype int64"),
    "NaN": (lambda pt, t: torch.save(t.index_put((torch.tensor([1]),), torch.tensor(float("nan"))), pt), "NaN"),
    "fewer CSV rows": (lambda pt, t: _rewrite_csv(pt, lambda f: f.iloc[:-1]), "6 prompts in the tensor but 5"),
    "malformed ids": (lambda pt, t: _malformed_ids(pt), "is not a list of token ids"),
    "truncated": (
        lambda pt, t: pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2]),
        "zip archive: failed finding central directory); download it again",
    ),
    "another pair's CSV": (lambda pt, t: _another_pairs_csv(pt), "7b_de_zh_dataset.csv, another pair's"),
    "another pair's prompts": (lambda pt, t: _other_pair_content(pt), "it is another pair's CSV"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_refused_with_one_line(case, fixture_pair, llama2_folder, tmp_path, capsys):
    good, _ = fixture_pair
    folder = tmp_path / "translation"
    shutil.copytree(good.parent, folder)
    pt = folder / good.name
    spoil, message = HOSTILE[case]
    spoil(pt, torch.load(good, weights_only=True))
    out = tmp_path / "stores"
    assert run("import-latents", pt, "--model", llama2_folder, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert message in err, err
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    if case == "pickle payload":
        assert not (folder / "victim").exists()  # weights_only refused it before it ran
        assert _calls_io_open(pt)  # the payload is real: its pickle would call io.open (read, never run)


def _calls_io_open(pt: Path) -> bool:
    """Return whether the torch.save zip's pickle asks to call ``io.open`` (its opcodes, read without unpickling)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(pt) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    return any(a == "io" and b == "open" for a, b in zip(strings, strings[1:])) or "io open" in strings


def test_file_names_outside_the_dataset_layout(tmp_path, capsys):
    odd = tmp_path / "latents.pt"
    torch.save(torch.zeros(1, 2, 3), odd)
    assert run("import-latents", odd, "--out", tmp_path / "o") == 2
    assert "not named like a file of the paper's dataset" in capsys.readouterr().err
    assert run("import-latents", tmp_path / "missing_dir_or_file.pt", "--out", tmp_path / "o") == 2
    assert "no such file" in capsys.readouterr().err


def test_write_latents_checks_before_writing(tmp_path):
    from llmlatent.adapter import Fingerprint
    from llmlatent.latents import LatentStoreError
    from llmlatent.latents.store import write_latents
    from llmlatent.tasks import PromptSet

    fp = Fingerprint(model="given", n_layers=2, hidden_size=3, unembedding_sha256="0" * 64)
    frame = pd.DataFrame({"prompt": ["a", "b"], "prompt_id": [0, 1]})
    big = torch.full((2, 2, 3), 1e6)
    with pytest.raises(LatentStoreError, match="beyond float16's range"):
        write_latents(fp, PromptSet(frame), big, tmp_path / "half", dtype="float16", progress=False)
    with pytest.raises(LatentStoreError, match=r"do not fit \(2, 2, 3\)"):
        write_latents(fp, PromptSet(frame), big[:, :1], tmp_path / "shape", progress=False)
    assert not (tmp_path / "half").exists() and not (tmp_path / "shape").exists()
    store = write_latents(fp, PromptSet(frame), big, tmp_path / "full", shard_size=1, progress=False)
    assert torch.equal(store.latents(), big) and store.config["n_shards"] == 2 and store.fingerprint == fp


def test_embedded_default_fixture_parity(embedded, tmp_path):
    """The same path on the embedded default (Gemma 3, 18 blocks): hooks' tensor → import → lens = live sweep."""
    from llmlatent import model

    prompts = tasks.build("translation", "fr", "zh", embedded.tokenizer, n=4, seed=0)
    latents = paper_latents(embedded.hf, embedded.adapter.blocks, embedded.tokenizer, prompts.prompts)
    pt = write_pair(tmp_path / "translation", NAME, prompts, latents)
    head = model.load_unembedding()  # None = the embedded default's head, read from its safetensors
    store = paper.import_paper(pt, head, tmp_path / "store", progress=False)
    assert store.n_layers == embedded.n_layers and store.meta["paper_token_sets"]["english_ids"]["equal_to_stored"] == 4
    cached = lens.from_latents(store, head, progress=False)
    one_at_a_time = lens.sweep(embedded, store.prompt_set(), batch_size=1, progress=False)  # as the paper ran them
    diff = (one_at_a_time[NUMERIC] - cached[NUMERIC]).abs().max()
    # the probabilities agree exactly; energy's float32 Gram product may move its last bit with the BLAS thread count
    assert diff.drop("energy").max() == 0.0 and diff["energy"] <= 1e-6, diff
    # batched with left padding, Gemma's float32 forward moves the last digits (the live sweep's own noise)
    batched = (lens.sweep(embedded, store.prompt_set(), batch_size=16, progress=False)[NUMERIC] - cached[NUMERIC]).abs()
    assert batched.drop(columns="entropy").max().max() <= 1e-5 and batched["entropy"].max() <= 1e-4


def test_sweep_from_a_cached_store_and_from_another_models_head(fixture_pair, llama2_folder, tmp_path, capsys):
    """A store from the `cache` command sweeps the same way; a head of other weights is refused (one line)."""
    from transformers import LlamaForCausalLM

    pt, m = fixture_pair
    csv = pt.with_name(f"{NAME}_dataset.csv")
    common = ("--prompts", csv, "--model", llama2_folder)
    assert run("cache", *common, "--dtype-store", "float32", "--out", tmp_path / "store") == 0
    assert run("sweep", *common, "--out", tmp_path / "live") == 0
    from_store = ("sweep", "--from-latents", tmp_path / "store", "--batch-size", "4", "--seed", "3")
    assert run(*from_store, "--model", llama2_folder, "--out", tmp_path / "c") == 0
    live, cached = (pd.read_csv(tmp_path / k / "rows.csv") for k in ("live", "c"))
    assert (live[NUMERIC] - cached[NUMERIC]).abs().max().max() <= 1e-5
    torch.manual_seed(1)
    other = LlamaForCausalLM(m.hf.config).eval()  # same shape, other weights
    other.save_pretrained(tmp_path / "other")
    m.tokenizer.save_pretrained(tmp_path / "other")
    capsys.readouterr()
    assert (
        run("sweep", "--from-latents", tmp_path / "store", "--model", tmp_path / "other", "--out", tmp_path / "x") == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fingerprint mismatch") and "\n" not in err, err
    assert not (tmp_path / "x").exists()
