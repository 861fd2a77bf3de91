"""The LM head over the rows train.bin uses (the default) against every row (--full-head): training
tokens/s of training.py itself in paired rounds, and how many distinct tokens a corpus uses.

    P=".venv/bin/python benchmarks/bench_head_rows.py --data-dir data"
    $P                                       # bfloat16 where the CPU has it (the preset's auto)
    $P -- --dtype float32                    # flags after -- go to training.py, both sides alike
    AVX2="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
    env $AVX2 $P -- --dtype float32            # an AVX2-only CPU, emulated: float32
    $P --growth                              # distinct tokens against tokens seen in train.bin

Each round runs `training.py --preset cpu --max-iters 60 --warmup-iters 20 --max-minutes 0` once
with the used rows and once with --full-head, each in a process of its own, in alternating order
(so going first is no advantage and a change in the machine's load hits both alike). A run reports
its training tokens/s two ways: over its optimizer steps alone (train_step timed, the first
UNTIMED steps left out: the allocator and the kernels warm up), and training.py's own figure
(every step and evaluation from the first step to the end). The ratio of the medians is printed
with the load average. The environment (the AVX2 emulation above, OMP_NUM_THREADS) reaches both
sides alike: on a host shared with other jobs, two threads per run make step times swing
several-fold with the others' load (a thread waits for its descheduled twin at every operator);
one thread (OMP_NUM_THREADS=1) does not.

--growth reads train.bin in order and prints how many distinct token ids the first n tokens use,
n growing by sqrt(2), with a fit of Heaps' law (distinct = K n^b, on the upper half of the points)
and its extrapolation to --extrapolate tokens (TinyStories' train split: about 470M).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

UNTIMED = 5  # first optimizer steps of a run left out of its step tokens/s
BASE = ["--preset", "cpu", "--max-iters", "60", "--warmup-iters", "20", "--max-minutes", "0"]


def child(argv: list[str]) -> None:
    """One training.py run in this process, train_step timed: prints a JSON line of its figures."""
    import torch

    import training

    times: list[float] = []
    step = training.train_step

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = step(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out

    training.train_step = timed
    summary = training.main(argv)
    tokens = summary["tokens_per_step"]
    print(
        "RESULT "
        + json.dumps(
            {
                "step_tokens_per_s": tokens * len(times[UNTIMED:]) / sum(times[UNTIMED:]),
                "run_tokens_per_s": summary["tokens_per_s"],
                "ms_per_step": 1000 * statistics.median(times[UNTIMED:]),
                "final_val_loss": summary["final_val_loss"],
                "threads": torch.get_num_threads(),
            }
        )
    )


def one_run(data_dir: str, full_head: bool, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        argv = [*BASE, "--data-dir", data_dir, "--out-dir", out, "--no-progress", "--no-samples"]
        argv += (["--full-head"] if full_head else []) + extra
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--", *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"training.py failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def paired(data_dir: str, rounds: int, extra: list[str]) -> None:
    load_before = os.getloadavg()
    results: dict[bool, list[dict]] = {False: [], True: []}
    for r in range(rounds):
        for full in (False, True) if r % 2 == 0 else (True, False):
            res = one_run(data_dir, full, extra)
            results[full].append(res)
            name = "full head " if full else "used rows "
            print(
                f"round {r + 1} {name}: {res['step_tokens_per_s']:8,.0f} tokens/s over the steps "
                f"({res['ms_per_step']:.1f} ms/step), {res['run_tokens_per_s']:8,.0f} training.py's"
                f", validation loss {res['final_val_loss']:.4f}",
                flush=True,
            )
    load_after = os.getloadavg()
    print(f"\ncommand: training.py {' '.join(BASE + extra)} [--full-head], {rounds} paired rounds")
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                      "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS")
           if k in os.environ}  # fmt: skip
    print(f"environment: {env or 'as is'}; torch threads {results[False][0]['threads']}")
    for key, what in (
        ("step_tokens_per_s", "over the steps"),
        ("run_tokens_per_s", "training.py's"),
    ):
        used = statistics.median(r[key] for r in results[False])
        full = statistics.median(r[key] for r in results[True])
        print(f"median tokens/s {what}: used rows {used:,.0f}, full head {full:,.0f}: "
              f"{used / full:.2f}x")  # fmt: skip
    per_round = [u["step_tokens_per_s"] / f["step_tokens_per_s"]
                 for u, f in zip(results[False], results[True], strict=True)]  # fmt: skip
    print(f"ratio per round (steps): {', '.join(f'{x:.2f}' for x in per_round)}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")


def growth(data_dir: str, extrapolate: float) -> None:
    import numpy as np

    from slm.datafiles import bin_path, read_meta

    meta = read_meta(data_dir)
    tokens = np.memmap(bin_path(data_dir, "train", meta), dtype=np.uint16, mode="r")
    seen = np.zeros(65536, dtype=bool)
    points, done, n = [], 0, 1000.0
    while done < len(tokens):
        end = min(int(n), len(tokens))
        seen[np.asarray(tokens[done:end])] = True
        done = end
        points.append((end, int(seen.sum())))
        n *= math.sqrt(2)
    print("| tokens seen | distinct token ids | share of 50,257 | local exponent |")
    print("|---:|---:|---:|---:|")
    for i, (n, d) in enumerate(points):
        b = (
            ""
            if i == 0
            else f"{math.log(d / points[i - 1][1]) / math.log(n / points[i - 1][0]):.2f}"
        )
        print(f"| {n:,} | {d:,} | {d / 50257:.1%} | {b} |")
    fit = points[len(points) // 2 :]
    b, log_k = np.polyfit([math.log(n) for n, _ in fit], [math.log(d) for _, d in fit], 1)
    heaps = math.exp(log_k) * extrapolate**b
    counts = np.bincount(np.asarray(tokens), minlength=65536)
    f1, f2 = int((counts == 1).sum()), int((counts == 2).sum())
    chao1 = points[-1][1] + f1 * f1 / (2 * f2)
    print(
        f"\nHeaps' law on the last {len(fit)} points: distinct = {math.exp(log_k):.2f} n^{b:.3f}, "
        f"at {extrapolate:,.0f} tokens {heaps:,.0f}; ids seen once {f1:,}, twice {f2:,}: "
        f"Chao1's estimate of the ids the source uses at all {chao1:,.0f}; Good-Turing's chance "
        f"that the next token is an id not seen yet {f1 / len(tokens):.2%}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    if "--child" in own:
        return child(extra)
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default="data")
    p.add_argument("--rounds", type=int, default=3, help="paired rounds (default: 3)")
    p.add_argument("--growth", action="store_true", help="the distinct tokens' growth curve")
    p.add_argument("--extrapolate", type=float, default=470e6, help="tokens to extrapolate to")
    args = p.parse_args(own)
    if args.growth:
        growth(args.data_dir, args.extrapolate)
    else:
        paired(args.data_dir, args.rounds, extra)


if __name__ == "__main__":
    main()
