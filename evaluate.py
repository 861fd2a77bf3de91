"""Evaluate a checkpoint honestly: loss, perplexity and bits per byte over every token of a split or
a text file, plus simple quality figures of stories it generates at a fixed seed. Prints one JSON
object.

    python evaluate.py --checkpoint out/best_model_params.pt        # DATA/validation.bin
    python evaluate.py --checkpoint out/best_model_params.pt \\
        --text-file TinyStoriesV2-GPT4-valid.txt

Scoring is deterministic: the token stream ([EOT] story [EOT] story ...) is cut into windows of
the model's context length (block_size) that start every --stride tokens (default block_size:
windows do not overlap). Each token after the first is predicted exactly once, by the first
window that contains it as a target; with a stride below block_size every scored token after the
first window sees at least block_size - stride tokens of context, which lowers the loss at the
cost of more compute.

  loss           mean cross-entropy in nats over every scored token, end-of-text tokens included
  perplexity     exp(loss)
  bits_per_byte  nats over the story tokens (end-of-text excluded) / ln 2 / UTF-8 bytes of the
                 story text (tokenizer-independent, comparable across vocabularies)

Generated stories start from the end-of-text token (an empty prompt) and use model_usage.py's
sampling defaults (slm/sampling.py). Their figures are over GPT-2 tokens: mean length; fraction
that end with end-of-text (rather than running out of --max-new-tokens); distinct-n = distinct
n-grams / all n-grams, pooled over the stories; repeated-4-gram rate = the share of a story's
4-grams that already occurred earlier in the same story, pooled over the stories.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from config import EOT_ID, Paths
from slm.checkpoint import check_vocab, describe_source, load_checkpoint
from slm.cli import CLIError, run_cli
from slm.encoding import get_encoding
from slm.hardware import autocast, pick_device, pick_dtype
from slm.progress import progress_bar
from slm.sampling import add_sampling_flags

# positions per forward pass: bounds the (B, T, vocab) logits to ~200 MB
EVAL_TOKENS_PER_BATCH = 1024


# ----------------------------------------------------------------------------- token streams


def text_file_tokens(path: Path) -> tuple[np.ndarray, int]:
    """([EOT] story [EOT] story ... of a raw .txt file, laid out as tokenization.py lays out a
    split, story count).
    """
    from slm.encoding import encode_stories
    from slm.storyfiles import (
        iter_raw_file,  # Step 1's own reader: a file scores like the same stories loaded there
    )

    if not path.is_file():
        raise CLIError(f"--text-file {path} does not exist or is not a file")
    stories = list(iter_raw_file(path))
    if not stories:
        raise CLIError(f"--text-file {path} holds no stories")
    return encode_stories(stories), len(stories)


def split_tokens(data_dir: str | Path, split: str) -> tuple[np.ndarray, dict]:
    """The tokens of DATA/<split>.bin (memory-mapped) and meta.json's record of that split, both
    checked.
    """
    from slm.datafiles import bin_path, read_meta

    meta = read_meta(data_dir)
    return np.memmap(bin_path(data_dir, split, meta), dtype=np.uint16, mode="r"), meta["splits"][
        split
    ]


def token_byte_lengths(enc) -> np.ndarray:
    """UTF-8 bytes each token stands for; 0 for end-of-text, which is a separator, not text."""
    lengths = np.array(
        [len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)], dtype=np.int64
    )
    lengths[EOT_ID] = 0
    return lengths


# ----------------------------------------------------------------------------- scoring


def window_starts(num_tokens: int, length: int, stride: int) -> list[int]:
    """Starts of the windows of `length` inputs (and `length` targets one ahead) covering every
    target.

    Windows start every `stride` tokens; one last window ends exactly at the final token."""
    last = num_tokens - 1 - length  # start of the window whose last target is the final token
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def score_tokens(
    model,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    stride: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = False,
) -> dict:
    """Sum the cross-entropy of every token after the first, each predicted once,
    deterministically."""
    import torch

    n = len(tokens)
    if n < 2:
        raise CLIError("nothing to score: the text has fewer than 2 tokens")
    length = min(model.config.block_size, n - 1)
    stride = length if stride is None else min(stride, length)
    if stride < 1:
        raise CLIError("--stride must be at least 1")
    starts = window_starts(n, length, stride)
    # First target of each window not scored by an earlier window (windows are in increasing order).
    first_new = [0] + [prev + length - s for prev, s in zip(starts, starts[1:])]
    batch_size = batch_size or max(1, EVAL_TOKENS_PER_BATCH // length)
    byte_lengths_t = torch.as_tensor(byte_lengths)
    offsets = torch.arange(length)

    nats = story_nats = 0.0
    scored = story_bytes = 0
    model.eval()
    bar = progress_bar(
        total=len(starts), desc="scoring windows", unit="win", disable=not progress, file=sys.stderr
    )
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        rows = np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in chunk])
        ce, y = window_losses(model, torch.from_numpy(rows), device, dtype)  # (B, T) each
        mask = offsets[None, :] >= torch.tensor(first_new[b : b + batch_size])[:, None]  # (B, T)
        is_story = y != EOT_ID
        nats += ce[mask].sum().item()
        story_nats += ce[mask & is_story].sum().item()
        scored += int(mask.sum())
        story_bytes += int(byte_lengths_t[y][mask].sum())
        bar.update(len(chunk))
    bar.close()
    assert scored == n - 1, (scored, n)
    loss = nats / scored
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": story_nats / math.log(2) / story_bytes if story_bytes else None,
        "tokens": n,
        "tokens_scored": scored,
        "bytes": story_bytes,
        "windows": len(starts),
        "window": length,
        "stride": stride,
        "windowing": windowing(length, stride, scored),
    }


def window_losses(model, rows, device: str, dtype: str):
    """(the cross-entropy of each target, the targets), both (B, T), for windows rows (B, T+1)."""
    import torch
    import torch.nn.functional as F

    x, y = rows[:, :-1], rows[:, 1:]  # (B, T) each
    with torch.no_grad(), autocast(device, dtype):
        logits, _ = model(x.to(device))  # (B, T, V)
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none")
    return ce.view_as(y).cpu().double(), y


def windowing(length: int, stride: int, scored: int) -> str:
    """How the windows cover the text, said in one sentence for the report."""
    overlap = (
        "non-overlapping"
        if stride == length
        else f"overlapping: after the first window every scored token sees >= {length - stride} "
        "tokens of context"
    )
    return (
        f"windows of {length} tokens every {stride} tokens ({overlap}), the last one ending at "
        f"the final token; each of the {scored} tokens after the first scored once"
    )


# ----------------------------------------------------------------------------- generated stories


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(stories: list[list[int]], n: int) -> float | None:
    """Distinct n-grams / all n-grams, pooled over the stories (None when there is no n-gram at
    all).
    """
    grams = [g for s in stories for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_rate(stories: list[list[int]], n: int = 4) -> float | None:
    """Share of n-grams that repeat an n-gram seen earlier in the same story, pooled over the
    stories.
    """
    total = repeats = 0
    for s in stories:
        grams = ngrams(s, n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else None


def sample_stories(
    model,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = False,
) -> tuple[list[list[int]], list[bool]]:
    """num_samples stories from an empty prompt with one generator seeded once: (tokens, ended with
    EOT).
    """
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([[EOT_ID]], dtype=torch.long, device=device)
    stories, ended = [], []
    for _ in progress_bar(
        range(num_samples), desc="generating stories", disable=not progress, file=sys.stderr
    ):
        story, saw_eot = [], False
        with torch.no_grad(), autocast(device, dtype):
            for tok in model.generate_stream(
                idx,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                eos_id=EOT_ID,
                generator=generator,
            ):
                if int(tok) == EOT_ID:
                    saw_eot = True
                    break
                story.append(int(tok))
        stories.append(story)
        # Generation only stops early at end-of-text, whether or not the stream yields that token.
        ended.append(saw_eot or len(story) < max_new_tokens)
    return stories, ended


def story_metrics(stories: list[list[int]], ended: list[bool]) -> dict:
    return {
        "mean_length_tokens": float(np.mean([len(s) for s in stories])),
        "frac_ended_with_eot": sum(ended) / len(ended),
        "distinct_2": distinct_n(stories, 2),
        "distinct_3": distinct_n(stories, 3),
        "repeated_4gram_rate": repeated_ngram_rate(stories, 4),
    }


# ----------------------------------------------------------------------------- the script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Score a checkpoint over every token of a split or a raw TinyStories .txt "
        "file, and measure stories it generates. Prints one JSON object on stdout (progress "
        "goes to stderr).",
    )
    p.add_argument(
        "--checkpoint",
        default=Paths.best_model,
        help="model file written by training.py (default: %(default)s)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--split",
        default="validation",
        choices=["train", "validation"],
        help="score DATA/<split>.bin (default: %(default)s)",
    )
    what.add_argument(
        "--text-file",
        default=None,
        help="score this raw .txt file instead (stories separated by lines holding only "
        "<|endoftext|>)",
    )
    p.add_argument(
        "--data-dir",
        default=Paths.data_dir,
        help="directory with <split>.bin and meta.json from tokenization.py (default: %(default)s)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="tokens between window starts (default: block_size, non-overlapping windows)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"windows per forward pass (default: {EVAL_TOKENS_PER_BATCH} // block_size)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=20,
        help="stories to generate for the story figures; 0 skips them (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=1337, help="seed of the story sampler (default: %(default)s)"
    )
    add_sampling_flags(p)
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The ranges argparse cannot check itself: each a usage error (exit 2)."""
    if args.stride is not None and args.stride < 1:
        p.error("--stride must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.num_samples < 0 or args.max_new_tokens < 1:
        p.error("--num-samples must be 0 or more and --max-new-tokens at least 1")


def main(argv: list[str] | None = None) -> dict:
    from model import GPT

    args = parse_args(argv)
    device = pick_device(args.device)
    dtype = pick_dtype("auto", device)
    ckpt = load_checkpoint(args.checkpoint)
    enc = get_encoding()
    check_vocab(ckpt, enc, args.checkpoint)
    model = GPT.from_checkpoint(ckpt, device).eval()

    tokens, source = tokens_to_score(args)
    result = {
        "checkpoint": str(args.checkpoint),
        "step": ckpt.get("step"),
        "trained_on": describe_source(ckpt),
        "scored": source,
    }
    result.update(
        score_tokens(
            model,
            tokens,
            token_byte_lengths(enc),
            stride=args.stride,
            batch_size=args.batch_size,
            device=device,
            dtype=dtype,
            progress=not args.quiet,
        )
    )
    result["samples"] = story_figures(model, enc, args, device, dtype) if args.num_samples else None
    print(json.dumps(result, indent=2))
    return result


def tokens_to_score(args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """The tokens of --text-file or --split, and what the result says about where they came from."""
    if args.text_file is not None:
        tokens, num_stories = text_file_tokens(Path(args.text_file))
        return tokens, {"text_file": args.text_file, "stories": num_stories}
    tokens, info = split_tokens(args.data_dir, args.split)
    source = {"split": args.split, "data_dir": str(args.data_dir), "stories": info.get("stories")}
    return tokens, source


def story_figures(model, enc, args: argparse.Namespace, device: str, dtype: str) -> dict:
    """Generate --num-samples stories and measure them: the settings, the figures, one example."""
    top_k = args.top_k or None
    stories, ended = sample_stories(
        model,
        args.num_samples,
        args.max_new_tokens,
        args.seed,
        args.temperature,
        top_k,
        args.top_p,
        device,
        dtype,
        progress=not args.quiet,
    )
    return {
        "num_samples": args.num_samples,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": top_k,
        "top_p": args.top_p,
        **story_metrics(stories, ended),
        "example": enc.decode(stories[0]),
    }


if __name__ == "__main__":
    run_cli(main)
