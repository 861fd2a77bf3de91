"""Step 6: continue a story from a sentence with the trained model, printed as it is written.

Edit `sentence` below, save, and run `python model_usage.py`. Flags override the file:

    python model_usage.py --prompt "Once upon a time" --temperature 0 --max-new-tokens 100
    python model_usage.py --interactive  # load once, then a story per prompt typed (or piped in)
    python model_usage.py --serve        # the story studio in a browser: http://127.0.0.1:8000

The story comes from out/best_model_params.pt (written by `python training.py`) unless
--checkpoint says otherwise. The line before the story names the checkpoint and the data it was
trained on.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from config import EOT_ID, Paths
from slm.checkpoint import check_vocab, describe_source, load_checkpoint
from slm.cli import run_cli
from slm.encoding import EOT_TEXT, get_encoding
from slm.hardware import autocast, pick_device, pick_dtype
from slm.sampling import add_sampling_flags, continue_story, encode_prompt

# The sentence the story starts from. Edit it and run `python model_usage.py`.
sentence = "Once upon a time, there was a little girl named Lily. She loved to play in the park."

DEFAULT_CHECKPOINT = Paths.best_model


# ----------------------------------------------------------------------------- the prompt and the
# model


def load_for_inference(path, device: str):
    """(model in eval mode on device, checkpoint dict, tokenizer), each checked; CLIError on any
    problem.
    """
    from model import GPT

    ckpt = load_checkpoint(path, map_location="cpu")
    enc = get_encoding()
    check_vocab(ckpt, enc, path)
    model = GPT.from_checkpoint(ckpt, device)
    model.eval()
    return model, ckpt, enc


def stream_text(tokens: Iterable[int], enc, out: TextIO) -> list[int]:
    """Print tokens as text as they arrive. A character split over several tokens (emoji, accents)
    is held back until its last byte comes, so the terminal never shows half a character. Returns
    the tokens."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen = []
    for tok in tokens:
        seen.append(tok)
        piece = (
            f"\n{EOT_TEXT}\n"
            if tok == EOT_ID
            else decoder.decode(enc.decode_single_token_bytes(tok))
        )
        if piece:
            out.write(piece)
            out.flush()
    out.write(decoder.decode(b"", final=True))
    out.flush()
    return seen


# ----------------------------------------------------------------------------- the script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Continue a story from a sentence with the trained model, printing it as it "
        "is generated.",
    )
    p.add_argument(
        "--prompt",
        default=None,
        help="text the story starts from (default: `sentence` at the top of this file); '' starts "
        "a fresh story",
    )
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help="model file written by training.py (default: %(default)s)",
    )
    add_sampling_flags(p)
    p.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="how many stories to write from the prompt (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed for sampling (default: a fresh one, printed so it can be reused)",
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)"
    )
    p.add_argument(
        "--no-stop-at-eot",
        action="store_true",
        help="keep generating past the end-of-text token (prints it as <|endoftext|>)",
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="load the model once, then write a story for each prompt typed (or one per line of a "
        "pipe); an empty line, Ctrl-D or Ctrl-C ends",
    )
    add_studio_flags(p)
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The combinations and ranges argparse cannot check itself: each a usage error (exit 2)."""
    if args.serve and (args.interactive or args.prompt is not None or args.num_samples != 1):
        p.error(
            "--serve takes its prompts from the page: leave out --prompt, --interactive and "
            "--num-samples"
        )
    if not 0 <= args.port <= 65535:
        p.error("--port must be from 0 to 65535")
    if args.interactive and args.prompt is not None:
        p.error(
            "--prompt and --interactive do not go together: with --interactive, type the prompts"
        )
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        p.error("--temperature must be 0 (greedy) or more")
    if args.top_k is not None and args.top_k < 0:
        p.error("--top-k must be 0 (no limit) or more")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        p.error("--top-p must be in (0, 1]")
    if args.num_samples < 1:
        p.error("--num-samples must be at least 1")


def add_studio_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--serve",
        action="store_true",
        help="load the model once and serve the story studio, a page that shows each token's "
        "probability and the likeliest alternatives (slm/studio.py); Ctrl-C stops it",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="with --serve: the port (default: %(default)s)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="with --serve: the address to listen on (default: %(default)s, this machine only; "
        "0.0.0.0 opens it to the network, with a warning)",
    )


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    prompt = sentence if args.prompt is None else args.prompt
    device = pick_device(args.device)
    dtype = pick_dtype("auto", device)
    model, ckpt, enc = load_for_inference(args.checkpoint, device)
    if args.serve:
        from slm import studio

        print(f"[{args.checkpoint} | {describe_source(ckpt)} | {device}, {dtype}]")
        return studio.serve(
            studio.Studio(model, ckpt, enc, args.checkpoint, device, dtype), args.host, args.port
        )

    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    generator = torch.Generator(device=device).manual_seed(seed)
    top_k = args.top_k or None  # 0 means no limit
    step = ckpt.get("step")
    val_loss = ckpt.get("val_loss")
    trained = f"step {step}" + (f", val loss {val_loss:.3f}" if isinstance(val_loss, float) else "")
    print(
        f"[{args.checkpoint} ({trained}) | {describe_source(ckpt)} | temperature "
        f"{args.temperature}, top-k {top_k}, top-p {args.top_p}, seed {seed}, {device}]"
    )
    write = functools.partial(
        tell, model, enc, args=args, generator=generator, device=device, dtype=dtype
    )
    if args.interactive:
        converse(write)
    else:
        write(prompt)


def tell(
    model, enc, prompt: str, args: argparse.Namespace, generator, device: str, dtype: str
) -> None:
    """Write args.num_samples stories that continue prompt, each printed as it is generated."""
    import torch

    block_size, top_k = model.config.block_size, args.top_k or None  # top-k 0 means no limit
    ids = encode_prompt(enc, prompt)
    shown = prompt
    if len(ids) > block_size:
        print(
            f"[the prompt is {len(ids)} tokens, longer than the model's context of {block_size}: "
            f"keeping its last {block_size}]"
        )
        ids = ids[-block_size:]
        shown = "..." + enc.decode(ids)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- story {i + 1} of {args.num_samples} ---")
        sys.stdout.write(shown)
        with torch.no_grad(), autocast(device, dtype):
            stream = continue_story(
                model,
                ids,
                args.max_new_tokens,
                args.temperature,
                top_k,
                args.top_p,
                generator,
                stop_at_eot=not args.no_stop_at_eot,
            )
            stream_text((tok for tok, _ in stream), enc, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()


def converse(write: Callable[[str], None], ask: Callable[[], str] | None = None) -> None:
    """--interactive: write(prompt) for each prompt until an empty line, Ctrl-D (end of input) or
    Ctrl-C, all of which end the program cleanly (exit status 0). On a terminal it asks with ">
    "; from a pipe it reads one prompt per line and prints only the stories."""
    tty = sys.stdin.isatty()
    if tty:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (arrow keys and history for input())
        print("[type the start of a story and press Enter; an empty line, Ctrl-D or Ctrl-C ends]")
    ask = ask or (lambda: input("> ") if tty else read_line(sys.stdin))
    try:
        while (prompt := ask()).strip():
            write(prompt)
    except EOFError:
        if tty:
            print()
    except KeyboardInterrupt:
        print()


def read_line(stream: TextIO) -> str:
    """One prompt from a pipe, without its newline; EOFError at the end of the input."""
    line = stream.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


if __name__ == "__main__":
    run_cli(main)
