"""Benchmark for Step 5: train a preset, then write three sample stories from the best model.

    python benchmarks/bench_training.py --data-dir data --out-dir out/bench-cpu -- --preset cpu
    python benchmarks/bench_training.py --no-train --out-dir out    # the run `make run` just made

Everything after `--` goes to training.py unchanged. Prints the machine's load average beside the
figures (the machine may be shared, so timings are noisy), the validation loss reached, where the
loss plot is, and three stories sampled with a fixed seed, as a Markdown block for
benchmarks/training.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import training  # noqa: E402
from model import GPT  # noqa: E402
from slm.checkpoint import describe_source, load_checkpoint  # noqa: E402
from slm.cli import run_cli  # noqa: E402
from slm.progress import LOG_FILE, PLOT_FILE, read_log  # noqa: E402


def sample_stories(
    checkpoint: Path, n: int, max_new_tokens: int, temperature: float, top_k: int, seed: int
):
    """n stories from an empty prompt, by evaluate.py's sampler (one generator seeded once), as
    text.
    """
    import evaluate
    from slm.encoding import get_encoding

    model = GPT.from_checkpoint(load_checkpoint(checkpoint)).eval()
    stories, _ = evaluate.sample_stories(model, n, max_new_tokens, seed, temperature, top_k, None)
    enc = get_encoding()
    return [enc.decode(tokens).strip() for tokens in stories]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out-dir", default="out/bench-training")
    p.add_argument("--stories", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-train",
        action="store_true",
        help="report the finished run in --out-dir (its log and samples) instead of training one; "
        "its wall time is in training.py's own closing line",
    )
    args = p.parse_args(own)

    load_before = os.getloadavg()
    cmd = ["--data-dir", args.data_dir, "--out-dir", args.out_dir, *extra]
    summary = None if args.no_train else training.main(cmd)
    load_after = os.getloadavg()
    out = Path(args.out_dir)
    stories = sample_stories(
        out / training.BEST_FILE,
        args.stories,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.seed,
    )

    rows = read_log(out / LOG_FILE)
    print("\n" + "=" * 80)
    print(
        f"## {datetime.date.today()} {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}"
    )
    if summary is None:
        best = min(rows, key=lambda r: r["val_loss"])
        print(f"report of the finished run in {out} (not trained by this command)")
        print(f"data: {describe_source(load_checkpoint(out / training.BEST_FILE))}")
        print(
            f"validation loss: {rows[0]['val_loss']:.4f} at step 0 -> best {best['val_loss']:.4f} "
            f"at step {best['step']} (train {rows[-1]['train_loss']:.4f} at the end)"
        )
    else:
        print(f"command: python training.py {' '.join(cmd)}")
        print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-minute)")
        print(f"data: {summary['data']}")
        print(
            f"stopped: {summary['stopped']} at step {summary['step']} of {summary['max_iters']}, "
            f"{summary['elapsed_s'] / 60:.1f} min wall, {summary['tokens_trained']:,} tokens, "
            f"{summary['tokens_per_s']:,.0f} tokens/s (training loop, evaluations included)"
        )
        print(
            f"validation loss: {rows[0]['val_loss']:.4f} at step 0 -> best "
            f"{summary['best_val_loss']:.4f} at step {summary['best_step']} (train "
            f"{rows[-1]['train_loss']:.4f} at the end)"
        )
    print(f"loss plot: {out / PLOT_FILE}")
    print("evaluations (step: train / validation):")
    for r in rows:
        print(f"  {r['step']:>6}: {r['train_loss']:.4f} / {r['val_loss']:.4f}")
    print(
        f"samples (empty prompt, temperature {args.temperature}, top-k {args.top_k}, seed "
        f"{args.seed}):"
    )
    for i, s in enumerate(stories, 1):
        print(f"\n--- story {i} ---\n{s}")


if __name__ == "__main__":
    run_cli(main)
