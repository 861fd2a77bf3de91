"""Do two versions of the code train the same numbers? Runs the same fixed-step trainings with the
code at a git revision and with the working tree, and compares every step's loss in steps.csv and
every tensor of best_model_params.pt (torch.equal).

    python benchmarks/same_numbers.py --against 5330673 --data-dir data
    python benchmarks/same_numbers.py --against 5330673 --data-dir data --new-flags=--full-head

--new-flags adds flags to today's runs only (a flag the old code did not have, such as one that
restores its behaviour). Prints one line per run and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "cpu": "--preset cpu --max-iters 120 --warmup-iters 40 --max-minutes 0 --eval-interval 60",
    "smoke": "--preset smoke --max-iters 200 --max-minutes 0",
}


def train(tree: Path, data_dir: Path, out_dir: Path, flags: str) -> None:
    command = [sys.executable, "training.py", "--data-dir", str(data_dir), "--out-dir"]
    command += [str(out_dir), "--no-progress", *shlex.split(flags)]
    subprocess.run(command, cwd=tree, check=True, stdout=subprocess.DEVNULL)


def differences(old: Path, new: Path) -> list[str]:
    """What differs between two runs' steps.csv and best_model_params.pt ([] when nothing)."""
    found = []
    old_steps = list(csv.reader(open(old / "steps.csv")))
    new_steps = list(csv.reader(open(new / "steps.csv")))
    if old_steps != new_steps:
        first = next((a, b) for a, b in zip(old_steps, new_steps) if a != b) if new_steps else ()
        found.append(f"steps.csv differs ({len(old_steps)} vs {len(new_steps)} rows; {first})")
    a, b = (torch.load(d / "best_model_params.pt", weights_only=True)["model"] for d in (old, new))
    if a.keys() != b.keys():
        found.append(f"tensor names differ: {sorted(set(a) ^ set(b))}")
    found += [f"tensor {k} differs" for k in a if k in b and not torch.equal(a[k], b[k])]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, help="the git revision to compare with")
    p.add_argument("--data-dir", required=True, help="tokenized data (tokenization.py)")
    p.add_argument("--new-flags", default="", help="flags for today's runs only")
    p.add_argument("--runs", default=",".join(RUNS), help=f"which of {', '.join(RUNS)}")
    args = p.parse_args()
    data_dir = Path(args.data_dir).resolve()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), args.against],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            for name in args.runs.split(","):
                old, new = Path(tmp) / f"{name}-old", Path(tmp) / f"{name}-new"
                train(old_tree, data_dir, old, RUNS[name])
                train(ROOT, data_dir, new, f"{RUNS[name]} {args.new_flags}")
                found = differences(old, new)
                failed |= bool(found)
                verdict = "; ".join(found) if found else "identical steps.csv and tensors"
                print(f"{name} ({RUNS[name]} {args.new_flags}): {verdict}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
