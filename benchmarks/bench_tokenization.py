"""Benchmark of Step 2: tokenization.py end to end against the limit and the common approach, and
its peak memory at two corpus sizes 4x apart.

    .venv/bin/python benchmarks/bench_tokenization.py          # >= 50 MB of real stories, 2 workers
    .venv/bin/python benchmarks/bench_tokenization.py --mb 50 --num-proc 2 --repeats 2

On the same stories and the same number of workers N. The corpus is the bundled real TinyStories
sample (sample_data/tinystories, 3.7 MB) with its train stories repeated whole until the corpus
reaches --mb, written as a raw .txt file and loaded with load_dataset.py --source local;
validation is the sample's validation split once. (Figures recorded before the sample was bundled
used a generated corpus instead.)
  limit        enc.encode_ordinary_batch(texts, num_threads=N) on texts already held in memory,
               no I/O
  limit/procs  the same texts split over N forked processes, each encoding its part in memory,
               no I/O
  common       Dataset.map(tokenize, num_proc=N) then np.concatenate into one array (nanoGPT's
               prepare.py, the original notebook)
  end to end   tokenization.tokenize(DATA, num_proc=N, force=True) in a fresh process: reading raw/,
               encoding, writing and hashing both .bin files, meta.json
Rates are story tokens per second (end-of-text tokens not counted, so all rows count the same
tokens); the best of --repeats runs, interleaved, since the machine is shared. CPU seconds (user
+ system, all processes and threads of a contender; the fewest over the runs) are printed too:
other people's jobs on a shared machine stretch wall times, much less the CPU time that the work
itself takes. Peak RSS of the end-to-end process and of its largest worker comes from getrusage
in that process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (worker pools are joined on
    exit).
    """
    import resource

    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


# Runs in a fresh interpreter: tokenize() timed from call to return, then this process's and its
# workers' peak RSS in KiB. The main process reads VmHWM (ru_maxrss would still hold the RSS of the
# big benchmark process it was forked from before exec); workers are forked from it, so ru_maxrss is
# theirs.
END_TO_END = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import tokenization
def cpu():
    return sum(getattr(resource.getrusage(who), f)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
c, t = cpu(), time.perf_counter()
meta = tokenization.tokenize({data_dir!r}, num_proc={num_proc}, force=True)
seconds, cpu_seconds = time.perf_counter() - t, cpu() - c
tokens = sum(s["tokens"] for s in meta["splits"].values())
rss_main = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
rss_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"seconds": seconds, "cpu": cpu_seconds, "tokens": tokens,
                   "rss_main_kib": rss_main, "rss_worker_kib": rss_worker}}))
"""


def make_corpus(data_dir: Path, mb: float) -> dict:
    """DATA/raw holding about mb million characters of real stories: the bundled sample's train
    stories repeated whole as often as needed (the sample alone is too small to time), its
    validation stories once."""
    import math

    import load_dataset
    from slm.datafiles import SPLITS, read_source
    from slm.encoding import EOT_TEXT
    from slm.sources import SAMPLE_DIR, SAMPLE_FILES
    from slm.storyfiles import iter_raw_file

    stories = {split: list(iter_raw_file(SAMPLE_DIR / SAMPLE_FILES[split][0])) for split in SPLITS}
    chars = {split: sum(map(len, s)) for split, s in stories.items()}
    copies = max(1, math.ceil((mb * 1e6 - chars["validation"]) / chars["train"]))
    files = {}
    for split, repeat in (("train", copies), ("validation", 1)):
        files[split] = data_dir.parent / f"{data_dir.name}-{split}.txt"
        with open(files[split], "w", encoding="utf-8") as f:
            for _ in range(repeat):
                f.writelines(story + f"\n{EOT_TEXT}\n" for story in stories[split])
    print(
        f"corpus {data_dir.name}: the bundled sample's {len(stories['train']):,} train stories x "
        f"{copies}, {len(stories['validation']):,} validation stories"
    )
    load_dataset.prepare(
        source="local", data_dir=data_dir, data_files={k: str(v) for k, v in files.items()}
    )
    return read_source(data_dir)


def all_texts(data_dir: Path) -> list[str]:
    from slm.datafiles import load_raw

    dd = load_raw(data_dir)
    return [t for split in ("train", "validation") for t in dd[split]["text"]]


def run_limit(texts, num_proc: int) -> tuple[float, int]:
    from slm.encoding import get_encoding

    enc = get_encoding()
    t = time.perf_counter()
    ids = enc.encode_ordinary_batch(texts, num_threads=num_proc)
    seconds = time.perf_counter() - t
    return seconds, sum(map(len, ids))


_TEXTS: list[str] = []  # inherited by the forked workers of run_limit_procs


def _encode_part(bounds: tuple[int, int]) -> int:
    from slm.encoding import get_encoding

    enc = get_encoding()
    return sum(len(ids) for ids in map(enc.encode_ordinary, _TEXTS[bounds[0] : bounds[1]]))


def run_limit_procs(texts, num_proc: int) -> tuple[float, int]:
    import multiprocessing

    global _TEXTS
    _TEXTS = texts
    step = -(-len(texts) // num_proc)
    parts = [(a, min(a + step, len(texts))) for a in range(0, len(texts), step)]
    with multiprocessing.get_context("fork").Pool(num_proc) as pool:
        pool.map(abs, range(num_proc))  # workers started before the clock
        t = time.perf_counter()
        tokens = sum(pool.map(_encode_part, parts, chunksize=1))
        seconds = time.perf_counter() - t
    return seconds, tokens


def _tokenize_example(example):
    from slm.encoding import get_encoding

    ids = get_encoding().encode_ordinary(example["text"])
    return {"ids": ids, "len": len(ids)}


def run_common(data_dir: Path, num_proc: int) -> tuple[float, int]:
    import datasets
    import numpy as np

    from slm.datafiles import load_raw

    datasets.disable_caching()  # map's output goes to a temporary directory, never reused
    datasets.disable_progress_bars()
    dd = load_raw(data_dir)
    t = time.perf_counter()
    arrays = []
    for split in ("train", "validation"):
        tokenized = dd[split].map(_tokenize_example, remove_columns=["text"], num_proc=num_proc)
        arrays.append(np.concatenate(tokenized.with_format("numpy")["ids"]).astype(np.uint16))
    seconds = time.perf_counter() - t
    datasets.enable_progress_bars()
    return seconds, sum(len(a) for a in arrays)


def run_end_to_end(data_dir: Path, num_proc: int) -> dict:
    code = END_TO_END.format(repo=str(REPO), data_dir=str(data_dir), num_proc=num_proc)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - t
    result["closing_line"] = [line for line in out.stdout.splitlines() if line.startswith("wrote")][
        -1
    ]
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mb", type=float, default=52.0, help="story text of the speed corpus, in MB (>= 50)"
    )
    p.add_argument("--num-proc", type=int, default=2, help="workers / threads for every contender")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs of each contender; the best is reported"
    )
    p.add_argument(
        "--common-repeats", type=int, default=1, help="runs of the (slow) common approach"
    )
    p.add_argument(
        "--work-dir", default=None, help="where the corpora go (default: a temporary directory)"
    )
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_tok_"))
    print(
        f"loadavg at start {os.getloadavg()}, {os.cpu_count()} cpus, python "
        f"{sys.version.split()[0]}"
    )
    big, small = work / "big", work / "small"
    src_big = make_corpus(big, args.mb)
    src_small = make_corpus(small, args.mb / 4)
    mb = {
        d: sum(s["chars"] for s in src["splits"].values()) / 1e6
        for d, src in ((big, src_big), (small, src_small))
    }

    texts = all_texts(big)
    print(
        f"\nspeed corpus: {len(texts):,} stories, {mb[big]:.1f} M chars; {args.num_proc} workers; "
        f"best of {args.repeats} (common approach: {args.common_repeats})"
    )
    best: dict[str, float] = {}
    tokens: dict[str, int] = {}
    least_cpu: dict[str, float] = {}
    e2e = []
    for r in range(args.repeats):
        common_due = r < args.common_repeats  # the common approach runs in the first rounds only
        for name, run in (
            ("limit", lambda: run_limit(texts, args.num_proc)),
            ("limit/procs", lambda: run_limit_procs(texts, args.num_proc)),
            ("common", partial(run_common, big, args.num_proc) if common_due else lambda: None),
            ("end to end", None),
        ):
            if run is None:
                res = run_end_to_end(big, args.num_proc)
                e2e.append(res)
                # minus one EOT per story
                seconds, n, cpu = res["seconds"], res["tokens"] - len(texts), res["cpu"]
            else:
                c = cpu_seconds()
                result = run()
                if result is None:
                    continue
                (seconds, n), cpu = result, cpu_seconds() - c
            tokens[name] = n
            best[name] = min(best.get(name, float("inf")), seconds)
            least_cpu[name] = min(least_cpu.get(name, float("inf")), cpu)
            print(
                f"  run {r + 1} {name:12s} {seconds:7.2f} s  {n / seconds / 1e6:5.2f} M tokens/s  "
                f"{cpu:6.2f} CPU s"
            )
    assert len(set(tokens.values())) == 1, f"contenders counted different tokens: {tokens}"
    n = tokens["limit"]
    print(f"\nloadavg {os.getloadavg()}")
    print(
        f"{'contender':14s} {'seconds':>8s} {'M tok/s':>8s} {'vs limit':>9s} {'CPU s':>8s} "
        f"{'CPU vs limit':>13s}"
    )
    for name in best:
        print(
            f"{name:14s} {best[name]:8.2f} {n / best[name] / 1e6:8.2f} "
            f"{best['limit'] / best[name]:9.2f} {least_cpu[name]:8.2f} "
            f"{least_cpu['limit'] / least_cpu[name]:13.2f}"
        )
    print(f"end to end / limit        = {best['limit'] / best['end to end']:.2f}  (target >= 0.8)")
    print(f"end to end / limit/procs  = {best['limit/procs'] / best['end to end']:.2f}")
    if "common" in best:
        print(
            f"end to end / common       = {best['common'] / best['end to end']:.2f}x faster  "
            "(target >= 2)"
        )
    fastest = min(e2e, key=lambda r: r["seconds"])
    print(f"end to end, whole process incl. interpreter start and imports: {fastest['wall']:.2f} s")
    print(f"its closing line: {fastest['closing_line']}")

    print("\npeak RSS of tokenization.py end to end (fresh process each):")
    for data_dir in (small, big):
        res = run_end_to_end(data_dir, args.num_proc)
        print(
            f"  {mb[data_dir]:6.1f} M chars, {res['tokens']:>11,} tokens: main process "
            f"{res['rss_main_kib'] / 1024:6.1f} MiB, largest worker "
            f"{res['rss_worker_kib'] / 1024:6.1f} MiB"
        )
    print(f"loadavg at end {os.getloadavg()}")
    if args.work_dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
