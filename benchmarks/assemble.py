"""Rebuild BENCHMARKS.md: its header (everything before the first step section) kept as it is, then
each step's figures from benchmarks/<step>.md in pipeline order, their headings moved one level
down.

    python benchmarks/assemble.py
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["load_dataset", "tokenization", "model", "machines", "training", "usage_eval_export"]
FIRST_SECTION = "## Step 1 (load_dataset.py"


def demote_headings(text: str) -> str:
    lines, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        lines.append("#" + line if line.startswith("#") and not in_code else line)
    return "\n".join(lines).rstrip() + "\n"


def assembled() -> str:
    """BENCHMARKS.md as its parts make it today."""
    header = (ROOT / "BENCHMARKS.md").read_text().split(FIRST_SECTION)[0].rstrip() + "\n"
    parts = [header] + [
        "\n" + demote_headings((ROOT / "benchmarks" / f"{s}.md").read_text()) for s in STEPS
    ]
    return "".join(parts)


def main() -> None:
    (ROOT / "BENCHMARKS.md").write_text(assembled())


if __name__ == "__main__":
    main()
