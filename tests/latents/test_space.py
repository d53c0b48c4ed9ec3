"""Disk space of a latent store: a store that cannot fit is refused up front; a full disk is one line, resumable."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pandas as pd
import pytest
import torch

from llmlatent import latents, tasks
from llmlatent.adapter import Fingerprint
from llmlatent.cli import main
from llmlatent.latents import space
from llmlatent.latents.shards import disk_size
from llmlatent.latents.store import write_latents

Usage = namedtuple("Usage", "total used free")


def no_room(monkeypatch, free: int) -> None:
    """Make every disk look like it has ``free`` bytes left (the store's own check reads shutil.disk_usage)."""
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))


def test_a_store_that_cannot_fit_is_refused_before_anything_is_written(tiny_models, tmp_path, monkeypatch):
    m = tiny_models["llama"]
    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=4)
    no_room(monkeypatch, 1000)
    path = tmp_path / "new" / "store"
    with pytest.raises(latents.LatentStoreError) as info:
        latents.collect(m, prompts, path, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"not enough free space for the latent store {path}: 4 prompts × {m.n_layers} layers × " in message
    assert "MB, but " in message and "has 0.0 MB free; free some space (df -h" in message
    assert not (tmp_path / "new").exists()  # nothing created


def test_resuming_needs_room_for_the_missing_shards_only(tiny_models, tmp_path, monkeypatch):
    m = tiny_models["llama"]
    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=5)
    path = tmp_path / "s"
    full = latents.collect(m, prompts, path, shard_size=2, progress=False).latents()
    config = latents.load(path).config
    assert space.rows_to_write(path, config) == 0
    no_room(monkeypatch, 0)
    assert torch.equal(latents.collect(m, prompts, path, progress=False).latents(), full)  # nothing to write
    shutil.rmtree(path / "shards" / "00001")
    assert space.rows_to_write(path, config) == 2
    with pytest.raises(latents.LatentStoreError, match=r"not enough free space .*: 2 prompts ×"):
        latents.collect(m, prompts, path, progress=False)
    monkeypatch.undo()
    assert torch.equal(latents.collect(m, prompts, path, progress=False).latents(), full)


def test_the_estimate_covers_a_real_store(tmp_path):
    """The estimate (raw latents + 5% + 1 MiB) is at least the store's real size, at the embedded model's width."""
    fingerprint = Fingerprint(model="m", n_layers=18, hidden_size=640, unembedding_sha256="ab" * 32)
    frame = pd.DataFrame({"prompt": [f'Français: "mot {i}" - 中文: "' for i in range(130)]})
    values = torch.randn(130, 18, 640, generator=torch.Generator().manual_seed(0))
    store = write_latents(fingerprint, tasks.PromptSet(frame), values, tmp_path / "s", dtype="float16", progress=False)
    raw = space.latent_bytes(store.config, 130)
    assert raw == 130 * 18 * 640 * 2
    assert raw < disk_size(tmp_path / "s") <= raw * space.OVERHEAD + space.SLACK_BYTES


def test_a_full_disk_while_writing_is_one_line_and_resumes(tiny_models, tmp_path, monkeypatch):
    import datasets

    m = tiny_models["llama"]
    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=5)
    fresh = latents.collect(m, prompts, tmp_path / "fresh", shard_size=2, progress=False).latents()
    real, calls = datasets.Dataset.save_to_disk, []

    def fills_up(self, folder, **kwargs):
        calls.append(folder)
        real(self, folder, **kwargs)  # the disk fills up while the second shard is written
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", fills_up)
    path = tmp_path / "s"
    with pytest.raises(latents.LatentStoreError) as info:
        latents.collect(m, prompts, path, shard_size=2, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no space left on the device of the latent store {path} after writing ")
    assert "finished shards are kept" in message and "rerun the same command to resume" in message
    assert sorted(p.name for p in (path / "shards").iterdir() if not p.name.endswith(".lock")) == ["00000"]
    monkeypatch.undo()
    assert torch.equal(latents.collect(m, prompts, path, progress=False).latents(), fresh)


def test_cache_command_says_it_in_one_line(tiny_models, tmp_path, monkeypatch, capsys):
    from conftest import save_model

    folder = tmp_path / "model"
    save_model(tiny_models["llama"], folder)
    capsys.readouterr()
    no_room(monkeypatch, 0)
    out = tmp_path / "store"
    args = ["cache", "--model", str(folder), "--task", "translation", "--src", "fr", "--tgt", "zh", "--n", "3"]
    assert main([*args, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not enough free space for the latent store") and "\n" not in err
    assert not out.exists()
