"""Which --ema decay, screened in one run: a training run as training.py makes it (any of its
flags), with the weights' moving average (slm/averaging.py) kept at several decays beside it,
each scored on a text file the way evaluate.py scores a model. One run answers for every decay,
because the average never changes the training.

    .venv/bin/python benchmarks/ema_decays.py --decays 0.98,0.99,0.995 \\
        --text-file ../shared/data/tinystories/validation.txt \\
        -- --data-dir data --out-dir /tmp/ema-r1550 --max-iters 1550 --max-minutes 0

Prints one row per model: the trained weights' best_model_params.pt (no average: --ema 0) and
each decay's average at the last step, with their loss on the text file. Run it with --ema 0 in
the training flags (the default of every preset but cpu: `--ema 0` is added when absent), so the
best model is the trained weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evaluate  # noqa: E402
import training  # noqa: E402
from slm.averaging import WeightAverage  # noqa: E402
from slm.cli import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--decays", required=True, help="comma-separated decays, e.g. 0.98,0.99,0.995")
    p.add_argument(
        "--text-file", required=True, help="what each model is scored on (evaluate.py --text-file)"
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then training.py's flags")
    args = p.parse_args(argv)
    decays = [float(d) for d in args.decays.split(",")]
    train_args = [a for a in args.train_args if a != "--"]
    if "--ema" not in train_args:
        train_args += ["--ema", "0"]
    averages: dict[float, WeightAverage] = {}  # decay -> the average, made at the first step
    trained: list[torch.nn.Module] = []  # the run's model, whose parameters the averages follow
    step = training.train_step

    def step_and_average(model, *rest):
        result = step(model, *rest)
        if not trained:
            trained.append(getattr(model, "_orig_mod", model))  # the uncompiled model
            averages.update({d: WeightAverage(trained[0], d) for d in decays})
        for average in averages.values():
            average.update()
        return result

    training.train_step = step_and_average
    summary = training.main(train_args + ["--no-progress"])
    out = Path(train_args[train_args.index("--out-dir") + 1])
    best = torch.load(out / "best_model_params.pt", weights_only=True)
    rows = [("trained weights (best_model_params.pt)", best["step"], out / "best_model_params.pt")]
    for d, average in averages.items():
        path = out / f"ema-{d}.pt"
        with average.swapped_in():
            torch.save({**best, "model": trained[0].state_dict(), "step": summary["step"]}, path)
        rows.append((f"average, decay {d}", summary["step"], path))
    print(f"\n{'model':<40} {'step':>6} {'loss on ' + Path(args.text_file).name:>24}")
    for name, at, path in rows:
        result = evaluate.main(
            [
                "--checkpoint",
                str(path),
                "--text-file",
                args.text_file,
                "--num-samples",
                "0",
                "--quiet",
            ]
        )
        print(f"{name:<40} {at:>6} {result['loss']:>24.4f}")


if __name__ == "__main__":
    run_cli(main)
