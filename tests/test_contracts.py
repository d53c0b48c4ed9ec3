"""One home per check: each shared validator raises its one error class, and library errors are LlmlatentErrors."""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from llmlatent import capture, checks
from llmlatent.atomic import file_sha256, staged_dir
from llmlatent.errors import LlmlatentError, ModelLoadError, UsageError

PACKAGE = Path(__file__).resolve().parent.parent / "llmlatent"
FACES = ("cli.py", "notebook.py", "__main__.py")


def library_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "experiments" not in p.parts and p.name not in FACES]


def test_library_raises_no_bare_value_or_runtime_errors():
    bare = []
    for path in library_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                if node.exc.func.id in ("ValueError", "RuntimeError", "Exception"):
                    bare.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} raises {node.exc.func.id}")
    assert not bare, "\n".join(bare)


def test_set_columns_have_one_owner():
    owners = []
    for path in library_files():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SET_COLUMNS" for t in node.targets):
                owners.append(path.name)
    assert owners == ["tokens.py"]


def test_captured_block_count_has_one_check():
    capture.check_captured([torch.zeros(1)] * 3, 3)
    with pytest.raises(ModelLoadError, match="captured 2 block outputs, expected 3") as info:
        capture.check_captured([torch.zeros(1)] * 2, 3)
    assert isinstance(info.value, LlmlatentError) and isinstance(info.value, ValueError)


def test_left_padding_has_one_check(tiny_models):
    model = tiny_models["llama"]
    prompts = ["A cloud", 'English: "book" - Deutsch: "']
    inputs = model.encode(prompts)
    capture.check_left_padded(inputs)
    with pytest.raises(UsageError, match="pad on the left") as info:
        capture.check_left_padded({k: v.flip(1) for k, v in inputs.items()})
    assert isinstance(info.value, LlmlatentError) and isinstance(info.value, ValueError)
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.padding_side = "right"
    with pytest.raises(UsageError, match="pad on the left"):  # the capture path raises the same class
        capture.forward_last(dataclasses.replace(model, tokenizer=tokenizer), prompts)


def test_dtype_names_have_one_parser():
    assert checks.torch_dtype("bfloat16") is torch.bfloat16
    assert checks.torch_dtype("torch.float32") is torch.float32
    assert checks.torch_dtype(torch.float16) is torch.float16 and checks.torch_dtype(None) is None
    for bad in ("float33", "Tensor", "nn"):
        with pytest.raises(UsageError, match="must be a torch dtype"):
            checks.torch_dtype(bad)


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    file = tmp_path / "f.bin"
    file.write_bytes(b"llmlatent" * 1000)
    assert file_sha256(file) == hashlib.sha256(file.read_bytes()).hexdigest()


def test_staged_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), staged_dir(final, ".out-") as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (final / "old").exists()
    with staged_dir(final, ".out-") as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in final.iterdir()] == ["new"]


def test_model_dtypes_are_floating_point_only():
    from llmlatent import checks

    assert checks.torch_dtype("bfloat16") is torch.bfloat16 and checks.torch_dtype(torch.float32) is torch.float32
    assert checks.torch_dtype(None) is None
    for bad in ("int8", torch.int8, "bool", "floaty"):
        with pytest.raises(UsageError, match="must be a torch dtype of floating point"):
            checks.torch_dtype(bad)
