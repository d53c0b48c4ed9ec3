"""The latent store's fast shard writer against plain references: the zero-copy table equals
``Dataset.from_dict``; the pipelined finisher keeps finished shards and leaves nothing half-written after an
error in either thread; the paper file's finiteness check and memory-mapped load equal the plain ones."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
import torch

from llmlatent.adapter import Fingerprint
from llmlatent.latents import LatentStoreError, load, paper, shards
from llmlatent.latents.format import features
from llmlatent.latents.store import write_latents
from llmlatent.tasks import PromptSet

FP = Fingerprint(model="given", n_layers=3, hidden_size=5, unembedding_sha256="0" * 64)


def _frame(n: int) -> pd.DataFrame:
    """Return prompts with every column kind a store keeps, missing values included."""
    return pd.DataFrame(
        {
            "prompt_id": range(n),
            "prompt": [f"p{i}" for i in range(n)],
            "target_ids": [[i, i + 1] if i % 3 else None for i in range(n)],
            "word": [None if i == 1 else f"w{i}" for i in range(n)],
            "flag": [i % 2 == 0 for i in range(n)],
            "score": [i / 7 for i in range(n)],
        }
    )


def _latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, FP.n_layers, FP.hidden_size, generator=torch.Generator().manual_seed(seed)) * 10


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_shard_dataset_equals_dataset_from_dict(dtype, tmp_path):
    from datasets import Dataset

    from llmlatent.latents.format import records

    store = write_latents(
        FP, PromptSet(_frame(7)), _latents(7), tmp_path / "s", dtype=dtype, shard_size=4, progress=False
    )
    config = store.config
    frame = _frame(7).iloc[4:7]
    data = records(frame, config["columns"])
    data["latents"] = shards.to_storage(_latents(7)[4:7], dtype)
    fast = shards.shard_dataset(data, features(config), "0123456789abcdef")
    plain = Dataset.from_dict(data, features=features(config))
    assert fast.features == plain.features and fast.data.table.equals(plain.data.table)
    assert len(store) == 7 and torch.equal(store.latents(), load(tmp_path / "s").latents())


def _leftovers(path) -> list[str]:
    return sorted(p.name for p in (path / "shards").iterdir() if not re.fullmatch(r"\d{5}|\.claim-\d{5}\.lock", p.name))


def test_an_error_while_finishing_keeps_earlier_shards_and_resumes(tmp_path, monkeypatch):
    real = shards.write_json

    def fail_on_shard_2(path, content):
        if path.name == "shard.json" and content.get("shard") == 2:
            raise OSError("disk on fire")
        return real(path, content)

    monkeypatch.setattr(shards, "write_json", fail_on_shard_2)
    path = tmp_path / "s"
    with pytest.raises(OSError, match="disk on fire"):
        write_latents(FP, PromptSet(_frame(9)), _latents(9), path, shard_size=2, progress=False)
    done = sorted(p.name for p in (path / "shards").iterdir() if p.name.isdigit())
    # shard 3 may have been staged while shard 2 was finishing: it is removed, never renamed into place
    assert done == ["00000", "00001"] and _leftovers(path) == []
    monkeypatch.undo()
    store = write_latents(FP, PromptSet(_frame(9)), _latents(9), path, shard_size=2, progress=False)
    assert torch.equal(store.latents(), _latents(9)) and _leftovers(path) == []


def test_an_error_while_staging_waits_for_the_shard_being_finished(tmp_path, monkeypatch):
    real = shards.stage_shard

    def fail_on_shard_3(path, config, k, frame, latents):
        if k == 3:
            raise RuntimeError("out of memory")
        return real(path, config, k, frame, latents)

    monkeypatch.setattr(shards, "stage_shard", fail_on_shard_3)
    path = tmp_path / "s"
    with pytest.raises(RuntimeError, match="out of memory"):
        write_latents(FP, PromptSet(_frame(9)), _latents(9), path, shard_size=2, progress=False)
    done = sorted(p.name for p in (path / "shards").iterdir() if p.name.isdigit())
    assert done == ["00000", "00001", "00002"] and _leftovers(path) == []  # shard 2 finished before the error left
    for k in range(3):
        assert shards.shard_problem(path, load_config(path), k) is None


def load_config(path):
    from llmlatent.latents.format import read_config

    return read_config(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_finiteness_check_equals_isfinite(bad, tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, 67, generator=g)  # 67: positions in the vectorised body and in the tail
    assert paper.check_tensor(x.clone(), tmp_path / "f.pt").equal(x)
    for flat, second in itertools.product([0, 1, 66, 67, 500, x.numel() - 2, x.numel() - 1], [False, True]):
        y = x.clone().reshape(-1)
        y[flat] = bad
        if second:  # a second bad value, of the other sign
            y[(flat * 7 + 3) % y.numel()] = -bad if bad == bad else bad
        y = y.reshape(x.shape)
        first = tuple(int(i) for i in (~torch.isfinite(y)).nonzero()[0][:2])
        with pytest.raises(LatentStoreError, match=rf"first: prompt {first[0]}, block {first[1]}\)"):
            paper.check_tensor(y, tmp_path / "f.pt")


def test_legacy_and_zip_files_read_the_same(tmp_path):
    x = _latents(4)
    torch.save(x, tmp_path / "zip.pt")
    torch.save(x, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(paper.read_paper_file(tmp_path / "zip.pt"), x)
    assert torch.equal(paper.read_paper_file(tmp_path / "legacy.pt"), x)
    assert np.array_equal(shards.to_storage(paper.read_paper_file(tmp_path / "zip.pt"), "float32"), x.numpy())


def test_a_shard_beyond_arrow_list_offsets_is_one_line():
    from llmlatent.latents import LatentStoreError

    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(2**12, 2**10, 2**9), strides=(0, 0, 0))
    config = {"columns": {}, "n_layers": 2**10, "hidden_size": 2**9, "dtype": "float32"}
    with pytest.raises(
        LatentStoreError,
        match=r"shard size 4096 is too large .* beyond the 2\^31 an Arrow list can index; at most 4095 prompts",
    ):
        shards.shard_dataset({"latents": huge}, features(config), "0" * 16)


def test_a_shard_size_beyond_arrow_list_offsets_is_refused_before_anything_is_written(tmp_path):
    from llmlatent.latents import LatentStoreError

    wide = Fingerprint(model="given", n_layers=80, hidden_size=8192, unembedding_sha256="0" * 64)  # Llama-2-70B
    frame = _frame(2)
    latents = torch.zeros(2, 80, 8192)
    with pytest.raises(LatentStoreError, match=r"shard size 4000 is too large .* at most 3276 prompts"):
        write_latents(wide, PromptSet(frame), latents, tmp_path / "s", shard_size=4000, progress=False)
    assert not (tmp_path / "s").exists()
