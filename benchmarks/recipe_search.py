"""Recipe search for a preset: train each trial, score it on a held-out text file, one table row per
trial.

    python benchmarks/recipe_search.py benchmarks/trials/cpu-round1.tsv --data-dir data \\
        --text-file ../shared/data/tinystories/validation.txt --parallel 1 \\
        --out benchmarks/trials/cpu-round1.out.tsv

A trials file has one trial per line: a name, a tab, then training.py flags (blank lines and #
comments are skipped). Each trial runs `training.py --no-progress --out-dir RUNS/<name> <flags>`,
then `evaluate.py --checkpoint RUNS/<name>/best_model_params.pt --text-file FILE --num-samples
0`, and appends a row to --out: name, flags, optimizer steps, tokens trained, training seconds,
tokens/s, and the loss on the file. Finished trials (already in --out) are skipped, so an
interrupted search continues.

    python benchmarks/recipe_search.py --markdown benchmarks/trials/cpu-round2.out.tsv

prints a results table as Markdown, best loss first, each trial's flags shown as what differs
from the flags all its trials share.

Step counts rather than minutes make a trial's loss independent of the machine it ran on: rank
recipes at the step count a 10-minute CPU run reaches (from the tokens/s of each shape, measured
on that CPU), on whatever hardware is fastest, then confirm the winners by timed runs on the CPU
itself. --parallel N runs N trials at once (for a GPU, which these small models leave mostly
idle); keep it 1 for timed CPU runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = [
    "name",
    "flags",
    "steps",
    "tokens",
    "train_s",
    "tokens_per_s",
    "text_loss",
    "best_val_loss",
]


def read_trials(path: Path) -> list[tuple[str, str]]:
    trials = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, flags = line.partition("\t")
        trials.append((name.strip(), flags.strip()))
    names = [n for n, _ in trials]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        sys.exit(f"error: trial names repeat in {path}: {', '.join(sorted(dupes))}")
    return trials


def run_trial(name: str, flags: str, args: argparse.Namespace) -> dict:
    out_dir = Path(args.runs) / name
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    train_cmd = [
        sys.executable,
        str(ROOT / "training.py"),
        "--no-progress",
        "--data-dir",
        args.data_dir,
        "--out-dir",
        str(out_dir),
        *shlex.split(flags),
    ]
    t0 = time.time()
    done = subprocess.run(train_cmd, capture_output=True, text=True, env=env)
    train_s = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {
            "name": name,
            "flags": flags,
            "text_loss": f"FAILED ({done.stderr.strip().splitlines()[-1:]})",
        }
    eval_cmd = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        "--checkpoint",
        str(out_dir / "best_model_params.pt"),
        "--text-file",
        args.text_file,
        "--num-samples",
        "0",
        "--quiet",
    ]
    if args.device:
        eval_cmd += ["--device", args.device]
    scored = subprocess.run(eval_cmd, capture_output=True, text=True, env=env)
    if scored.returncode != 0:
        return {
            "name": name,
            "flags": flags,
            "text_loss": f"EVAL FAILED ({scored.stderr.strip().splitlines()[-1:]})",
        }
    result = json.loads(scored.stdout)
    log = list(csv.DictReader((out_dir / "log.csv").open()))
    steps = int(log[-1]["step"])
    tokens = int(log[-1]["tokens"])
    return {
        "name": name,
        "flags": flags,
        "steps": steps,
        "tokens": tokens,
        "train_s": round(train_s, 1),
        "tokens_per_s": round(tokens / train_s),
        "text_loss": round(result["loss"], 4),
        "best_val_loss": round(min(float(r["val_loss"]) for r in log), 4),
    }


def markdown(path: Path) -> str:
    """The results table as Markdown, best text loss first; flags shown as the difference from the
    common ones.
    """
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    split = [shlex.split(r["flags"]) for r in rows]
    pairs = [
        [
            " ".join(f[i : i + 2]) if i + 1 < len(f) and not f[i + 1].startswith("--") else f[i]
            for i in range(len(f))
            if f[i].startswith("--")
        ]
        for f in split
    ]
    common = set.intersection(*(set(p) for p in pairs)) if pairs else set()

    def loss(r):
        try:
            return float(r["text_loss"])
        except ValueError:
            return float("inf")

    lines = [
        f"Flags every trial shares: `{' '.join(p for p in pairs[0] if p in common)}`"
        if rows
        else "",
        "",
        "| trial | flags beyond those | steps | tokens | tokens/s | loss on the text file | best "
        "validation loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, p in sorted(zip(rows, pairs), key=lambda rp: loss(rp[0])):
        own = " ".join(x for x in p if x not in common) or "(none)"
        lines.append(
            f"| {r['name']} | `{own}` | {r['steps']} | {r['tokens']} | {r['tokens_per_s']} | "
            f"{r['text_loss']} | {r['best_val_loss']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--markdown"]:
        for path in argv[1:]:
            print(f"### {path}\n\n{markdown(Path(path))}\n")
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "trials", type=Path, help="trials file: NAME<TAB>training.py flags, one per line"
    )
    p.add_argument("--data-dir", default="data", help="tokenized data (train.bin, validation.bin)")
    p.add_argument("--text-file", required=True, help="raw .txt file every trial is scored on")
    p.add_argument("--out", type=Path, required=True, help="results table (TSV), appended to")
    p.add_argument("--runs", default="out/recipe-search", help="where each trial's out dir goes")
    p.add_argument("--parallel", type=int, default=1, help="trials at once (1 for timed CPU runs)")
    p.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for each trial (0: torch's default)"
    )
    p.add_argument(
        "--device", default="", help="--device for evaluate.py (training takes it from the flags)"
    )
    args = p.parse_args(argv)

    done = set()
    if args.out.exists():
        done = {row["name"] for row in csv.DictReader(args.out.open(), delimiter="\t")}
    todo = [(n, f) for n, f in read_trials(args.trials) if n not in done]
    print(
        f"{len(todo)} trials to run ({len(done)} already in {args.out}); load {os.getloadavg()}",
        flush=True,
    )
    new_file = not args.out.exists()
    with (
        args.out.open("a", newline="") as f,
        concurrent.futures.ThreadPoolExecutor(args.parallel) as pool,
    ):
        writer = csv.DictWriter(f, FIELDS, delimiter="\t")
        if new_file:
            writer.writeheader()
        futures = {pool.submit(run_trial, n, fl, args): n for n, fl in todo}
        for fut in concurrent.futures.as_completed(futures):
            row = fut.result()
            writer.writerow(row)
            f.flush()
            print("\t".join(str(row.get(k, "")) for k in FIELDS), flush=True)


if __name__ == "__main__":
    main()
