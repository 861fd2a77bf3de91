"""loss.png today against slm/plot.py at an earlier git revision: seconds to draw and write the plot
that training redraws at every evaluation (and a fault sweep of training.py redraws at each of
its runs).

It draws a finished run's logs (--out OUT: its log.csv, steps.csv and best_model_params.pt, as
`training.py --plot-only` does) and a smoke run's first evaluations (two rows), in rounds that
time both revisions in alternating order, so a change in the machine's load hits both alike; it
prints each one's best round and the median of the rounds' ratios. By default the earlier
revision is 0810473, which laid the figure out with fig.tight_layout().

    .venv/bin/python benchmarks/bench_plot.py --out OUT [--rounds 8] [--against REV]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import slm.plot as plot_today  # noqa: E402
from benchmarks.bench_cpu_step import median_ratio, module_at, paired_rounds  # noqa: E402
from slm.cli import run_cli  # noqa: E402
from slm.progress import LOG_FILE, STEPS_FILE, read_log, read_steps  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        required=True,
        help="a finished run's out dir (log.csv, steps.csv, best_model_params.pt)",
    )
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument(
        "--against", default="0810473", help="git revision of slm/plot.py to compare with"
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    history, steps = read_log(out / LOG_FILE), read_steps(out / STEPS_FILE)
    title = plot_today.saved_title(out, history)
    cases = {"finished run": (history, steps), "smoke run, 2 evaluations": (history[:2], steps[:1])}
    then = module_at(args.against, "slm/plot.py", "plot_then")
    target = Path(tempfile.mkdtemp()) / "loss.png"
    print(
        f"slm/plot.py now against {args.against}; {args.out}: {len(history)} evaluations, "
        f"{len(steps)} steps"
    )

    def drawing_s(module, h: list[dict], s: list[dict]) -> float:
        t0 = time.perf_counter()
        module.plot_run(target, h, s, title)
        return time.perf_counter() - t0

    for case, (h, s) in cases.items():
        draw_now, draw_then = partial(drawing_s, plot_today, h, s), partial(drawing_s, then, h, s)
        draw_now(), draw_then()  # untimed: matplotlib's imports, the font cache
        now, earlier = paired_rounds(draw_now, draw_then, args.rounds)
        print(
            f"  {case}: now {min(now):.3f} s, {args.against} {min(earlier):.3f} s (best of "
            f"{args.rounds}); median ratio {median_ratio(earlier, now):.2f}x"
        )


if __name__ == "__main__":
    run_cli(main)
