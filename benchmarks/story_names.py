"""Does a story keep its people? For each sampling setting, N stories from model_usage.py's
`sentence` (which names Lily), seeds 0..N-1, up to 300 tokens (--max-new-tokens) or the
end-of-text token; it prints how many still name Lily in their last third of words, how many
other capitalised names a story brings in, and the share of repeated 4-word runs (a setting that
keeps names by looping on them is no better).

A proxy for "the printed story keeps its named characters", not a score: a story may keep Lily as
"she", or bring in her mom by name. --text-file measures real stories the same way, those that
name Lily in their first 15 words (as the prompt does): how often a written story keeps her, the
mark the models are held to.

    .venv/bin/python benchmarks/story_names.py --checkpoint out/best_model_params.pt [--stories 40]
        [--setting 0.8,20,none ...]
    .venv/bin/python benchmarks/story_names.py --text-file ../shared/data/tinystories/validation.txt
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
from slm.cli import CLIError, run_cli  # noqa: E402
from slm.sampling import MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P  # noqa: E402
from slm.storyfiles import iter_raw_file  # noqa: E402

NAME = "Lily"
# Capitalised words that are not names: sentence starts, family words, interjections.
NOT_NAMES = set(
    """Once One The She He They It I But So Then When Her His We You Mom Dad Mommy Daddy In At After
As Yes No Oh Wow Thank Let That This There What Why Can Do Don From Every All Look Come Please Hello
Hi Sorry Okay OK If And Now Later Together Suddenly Finally Just My Your Our Their Its Is Are Will
Where How Who Not Maybe A An Be""".split()
)
# (temperature, top-k, top-p): model_usage.py's default first, then nanoGPT's and llama2.c's kin
SETTINGS = [(TEMPERATURE, TOP_K, TOP_P), (0.7, 200, None), (0.6, 200, None), (1.0, None, 0.9)]
STORIES = 40  # stories per setting unless --stories says
# a real story counts when it names Lily this early, as the prompt's first sentence does
OPENING_WORDS = 15


def setting(text: str) -> tuple[float, int | None, float | None]:
    """--setting "0.8,20,none": (temperature, top-k, top-p), "none" for off; argparse's type."""
    parts = [p.strip().lower() for p in text.split(",")]
    try:
        temperature, top_k, top_p = parts
        chosen = (
            float(temperature),
            None if top_k == "none" else int(top_k),
            None if top_p == "none" else float(top_p),
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not TEMPERATURE,TOP_K,TOP_P (e.g. 0.8,20,none)"
        ) from None
    temperature, top_k, top_p = chosen
    if (
        temperature < 0
        or (top_k is not None and top_k < 1)
        or (top_p is not None and not 0 < top_p <= 1)
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the temperature must be 0 or more, top-k 1 or more and top-p over 0 and "
            "at most 1"
        )
    return chosen


def words_of(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def story(
    model, prompt: torch.Tensor, seed: int, temperature: float, top_k, top_p, most: int
) -> list[int]:
    """The tokens the model writes after the prompt, up to `most` or the end-of-text token (left
    out).
    """
    gen = torch.Generator().manual_seed(seed)
    new = model.generate(prompt, most, temperature, top_k, top_p, EOT_ID, gen)[
        0, prompt.shape[1] :
    ].tolist()
    return new[: new.index(EOT_ID)] if EOT_ID in new else new


def measure(words: list[str]) -> tuple[bool, int, float]:
    """(NAME in the last third of the words, other capitalised names, share of repeated 4-word runs:
    0 in a story too short to have one)."""
    names = {w for w in words if w[0].isupper() and w not in NOT_NAMES and w != NAME}
    return NAME in words[len(words) * 2 // 3 :], len(names), repeated_ngram_rate([words], 4) or 0.0


def real_stories(path) -> tuple[list[list[str]], int]:
    """(the words of each story in a raw .txt file that names NAME in its first OPENING_WORDS words,
    how many stories the file holds)."""
    if not Path(path).is_file():
        raise CLIError(f"--text-file {path} does not exist or is not a file")
    chosen, total = [], 0
    for text in iter_raw_file(path):
        words = words_of(text)
        total += 1
        if NAME in words[:OPENING_WORDS]:
            chosen.append(words)
    return chosen, total


def report(label: str, stories: list[list[str]], sizes: list[int], unit: str) -> str:
    """One line: how many of the stories (their words) keep NAME in their last third, the other
    names they bring in, their repeats, and their mean size (sizes, in unit)."""
    kept, others, repeated = 0, 0, 0.0
    for words in stories:
        keeps, names, rep = measure(words)
        kept, others, repeated = kept + keeps, others + names, repeated + rep
    n = max(len(stories), 1)
    return (
        f"{label}: {NAME} in the last third {kept}/{len(stories)}, other capitalised names "
        f"{others / n:.2f} a story, repeated 4-word runs {repeated / n:.3f}, {sum(sizes) / n:.0f} "
        f"{unit} a story"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a model file written by training.py")
    source.add_argument(
        "--text-file", help="a raw .txt of stories split by <|endoftext|> lines, measured instead"
    )
    ap.add_argument(
        "--stories", type=int, help=f"stories per setting (seeds 0..N-1; default: {STORIES})"
    )
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"most tokens a story (default: {MAX_NEW_TOKENS}, model_usage.py's)",
    )
    ap.add_argument(
        "--setting",
        type=setting,
        action="append",
        help='a sampling setting "TEMPERATURE,TOP_K,TOP_P" ("none" for off), '
        "instead of the four built in; "
        "repeat it for more",
    )
    args = ap.parse_args(argv)
    sampling = {
        "--setting": args.setting,
        "--stories": args.stories,
        "--max-new-tokens": args.max_new_tokens,
    }
    given = [flag for flag, value in sampling.items() if value is not None]
    if args.text_file and given:
        ap.error(f"{given[0]} samples a model: give it with --checkpoint, not --text-file")
    args.stories = STORIES if args.stories is None else args.stories
    args.max_new_tokens = MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    if args.stories < 1 or args.max_new_tokens < 1:
        ap.error("--stories and --max-new-tokens must be at least 1")
    if args.text_file:
        stories, total = real_stories(args.text_file)
        print(
            report(
                f"{len(stories)} of {total} stories name {NAME} in their first {OPENING_WORDS} "
                "words",
                stories,
                [len(words) for words in stories],
                "words",
            )
        )
        return
    model, _, enc = load_for_inference(args.checkpoint, "cpu")
    prompt = torch.tensor([encode_prompt(enc, sentence)])
    for temperature, top_k, top_p in args.setting or SETTINGS:
        written = [
            story(model, prompt, seed, temperature, top_k, top_p, args.max_new_tokens)
            for seed in range(args.stories)
        ]
        print(
            report(
                f"temperature {temperature}, top-k {top_k}, top-p {top_p}",
                [words_of(enc.decode(ids)) for ids in written],
                [len(ids) for ids in written],
                "tokens",
            ),
            flush=True,
        )


if __name__ == "__main__":
    run_cli(main)
