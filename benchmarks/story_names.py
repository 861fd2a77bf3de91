"""Does a story keep its people? For each sampling setting, N stories from model_usage.py's `sentence` (which
names Lily), seeds 0..N-1, up to 300 tokens (--max-new-tokens) or the end-of-text token; it prints how
many still name Lily in their last third of words, how many other capitalised names a story brings in, and
the share of repeated 4-word runs (a setting that keeps names by looping on them is no better).

A proxy for "the printed story keeps its named characters", not a score: a story may keep Lily as "she", or
bring in her mom by name.

    .venv/bin/python benchmarks/story_names.py --checkpoint out/best_model_params.pt [--stories 40]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import EOT_ID  # noqa: E402
from evaluate import repeated_ngram_rate  # noqa: E402
from model_usage import encode_prompt, load_for_inference, sentence  # noqa: E402
from slm.cli import run_cli  # noqa: E402
from slm.sampling import MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P  # noqa: E402

NAME = "Lily"
# Capitalised words that are not names: sentence starts, family words, interjections.
NOT_NAMES = set("""Once One The She He They It I But So Then When Her His We You Mom Dad Mommy Daddy In At After As
Yes No Oh Wow Thank Let That This There What Why Can Do Don From Every All Look Come Please Hello Hi Sorry Okay
OK If And Now Later Together Suddenly Finally Just My Your Our Their Its Is Are Will Where How Who Not Maybe A An
Be""".split())
SETTINGS = [  # (temperature, top-k, top-p): model_usage.py's default first, then nanoGPT's and llama2.c's kin
    (TEMPERATURE, TOP_K, TOP_P), (0.7, 200, None), (0.6, 200, None), (1.0, None, 0.9)]


def story(model, prompt: torch.Tensor, seed: int, temperature: float, top_k, top_p, most: int) -> list[int]:
    """The tokens the model writes after the prompt, up to `most` or the end-of-text token (left out)."""
    gen = torch.Generator().manual_seed(seed)
    new = model.generate(prompt, most, temperature, top_k, top_p, EOT_ID, gen)[0, prompt.shape[1]:].tolist()
    return new[:new.index(EOT_ID)] if EOT_ID in new else new


def measure(words: list[str]) -> tuple[bool, int, float]:
    """(NAME in the last third of the words, other capitalised names, share of repeated 4-word runs: 0 in a
    story too short to have one)."""
    names = {w for w in words if w[0].isupper() and w not in NOT_NAMES and w != NAME}
    return NAME in words[len(words) * 2 // 3:], len(names), repeated_ngram_rate([words], 4) or 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a model file written by training.py")
    ap.add_argument("--stories", type=int, default=40, help="stories per setting (seeds 0..N-1)")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                    help="most tokens a story (model_usage.py's default)")
    args = ap.parse_args(argv)
    if args.stories < 1 or args.max_new_tokens < 1:
        ap.error("--stories and --max-new-tokens must be at least 1")
    model, _, enc = load_for_inference(args.checkpoint, "cpu")
    prompt = torch.tensor([encode_prompt(enc, sentence)])
    for temperature, top_k, top_p in SETTINGS:
        kept = others = 0
        repeated = tokens = 0.0
        for seed in range(args.stories):
            ids = story(model, prompt, seed, temperature, top_k, top_p, args.max_new_tokens)
            keeps, names, rep = measure(re.findall(r"[A-Za-z']+", enc.decode(ids)))
            kept, others, repeated, tokens = kept + keeps, others + names, repeated + rep, tokens + len(ids)
        n = args.stories
        print(f"temperature {temperature}, top-k {top_k}, top-p {top_p}: {NAME} in the last third {kept}/{n}, "
              f"other capitalised names {others / n:.2f} a story, repeated 4-word runs {repeated / n:.3f}, "
              f"{tokens / n:.0f} tokens a story", flush=True)


if __name__ == "__main__":
    run_cli(main)
