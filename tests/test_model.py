"""Model loading, the family adapter, bad input, and the set-up files agreeing with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_model

from llmlatent import model
from llmlatent.adapter import adapter_for
from llmlatent.errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent


def _names(specs):
    return {re.split(r"[<>=!~ \[;]", s.strip(), maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_environment_yml_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"]) | _names(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        (pip.extend(dep["pip"]) if isinstance(dep, dict) else conda.append(dep))
    declared = (_names(conda) | _names(pip)) - {"python", "pip"}
    assert declared == wanted, f"only in environment.yml: {declared - wanted}; only in pyproject: {wanted - declared}"
    assert any(d.startswith("python=3.11") for d in conda)


def test_unknown_model_path_gives_one_clear_error(tmp_path):
    with pytest.raises(model.ModelLoadError, match="neither a local model folder nor reachable"):
        model.load(str(tmp_path / "no-such-model"))


def test_non_causal_model_is_rejected(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    with pytest.raises(model.ModelLoadError, match="not a causal"):
        model.load(str(tmp_path))


def test_unknown_architecture_names_missing_attributes():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    with pytest.raises(ModelLoadError, match=r"could not find blocks .*final norm.*Pass the attribute paths"):
        adapter_for(Odd())


def test_explicit_adapter_paths(tiny_models):
    hf = tiny_models["llama"].hf
    adapter = adapter_for(hf, blocks="model.layers", final_norm="model.norm")
    assert adapter.n_layers == 3
    with pytest.raises(ModelLoadError, match="tried model.nope"):
        adapter_for(hf, blocks="model.nope")


def test_load_local_folder_roundtrip(tmp_path, tiny_models):
    tiny = tiny_models["qwen2"]
    save_model(tiny, tmp_path)
    loaded = model.load(str(tmp_path), device="cpu")
    assert loaded.n_layers == 3 and loaded.hf.dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.unembedding.fingerprint() == tiny.unembedding.fingerprint()


def test_float16_gemma_is_refused():
    with pytest.raises(model.ModelLoadError, match="float16"):
        model.load("google/gemma-2-2b", dtype="float16")


def test_default_dtype():
    assert model.default_dtype("cpu") == torch.float32
    assert model.default_dtype("cuda") == torch.bfloat16
