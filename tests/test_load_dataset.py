"""Step 1: every source on small inputs the tests make, the raw .txt format, the built-in corpus,
reruns, atomic replacement, and every bad input (exit 2, one line, nothing replaced)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import builtin_stories
import load_dataset
from common import CLIError

SCRIPT = Path(load_dataset.__file__).resolve()
EOT = "<|endoftext|>"

STORIES = [
    "Once upon a time, there was a cat.\nThe cat liked milk.",
    'Tom wrote "<|endoftext|>" on the board. It is just text here.',  # the token inside a line is text
    "Mia saw a bird.\n\nThe bird sang a song.\nMia smiled.",  # a blank line inside a story is kept
    "Zoë went to the café — it was fun! 🐱",
    "The end <|endoftext|>",  # also text: the line holds more than the token
]


def write_raw(path: Path, stories: list[str]) -> Path:
    """The TinyStories raw .txt layout: each story followed by a line holding only <|endoftext|>."""
    path.write_text("".join(s + f"\n{EOT}\n" for s in stories), encoding="utf-8")
    return path


def sha256_of(stories: list[str]) -> str:
    return hashlib.sha256("".join(s + f"\n{EOT}\n" for s in stories).encode()).hexdigest()


def texts(data_dir: Path, split: str) -> list[str]:
    return list(load_dataset.load_raw(data_dir)[split]["text"])


def snapshot(raw: Path) -> dict[str, bytes]:
    return {str(p.relative_to(raw)): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the raw .txt format


def test_raw_text_separator_is_a_line_holding_only_the_token():
    text = (
        "First story line one.\nA cat said <|endoftext|> and left.\n<|endoftext|>\n"
        "\n\nSecond story.\n\n  <|endoftext|>  \r\n"  # blank lines around a separator are not story text
        "<|endoftext|>\n"  # two separators in a row: no empty story
        "Third, with\r\nCRLF inside.\r\n<|endoftext|>\r\n"
        "Fourth, no separator at the end of the file"
    )
    assert load_dataset.parse_raw_text(text) == [
        "First story line one.\nA cat said <|endoftext|> and left.",
        "Second story.",
        "Third, with\r\nCRLF inside.",
        "Fourth, no separator at the end of the file",
    ]


def test_raw_text_round_trips_stories_exactly():
    text = "".join(s + f"\n{EOT}\n" for s in STORIES)
    assert load_dataset.parse_raw_text(text) == STORIES
    assert load_dataset.parse_raw_text("") == []
    assert load_dataset.parse_raw_text(f"{EOT}\n\n{EOT}\n") == []


# ----------------------------------------------------------------------------- local files


def test_local_raw_txt_files_are_byte_identical(tmp_path):
    train = write_raw(tmp_path / "train.txt", STORIES)
    valid = write_raw(tmp_path / "valid.txt", STORIES[:2])
    raw = load_dataset.prepare(source="local", data_dir=tmp_path / "data",
                               data_files={"train": str(train), "validation": str(valid)})
    assert raw == tmp_path / "data" / "raw"
    assert texts(tmp_path / "data", "train") == STORIES
    assert texts(tmp_path / "data", "validation") == STORIES[:2]
    info = load_dataset.read_source(tmp_path / "data")
    assert info["source"] == "local" and info["demo"] is False
    assert info["data_files"] == {"train": str(train.resolve()), "validation": str(valid.resolve())}
    assert info["splits"]["train"] == {"stories": 5, "chars": sum(map(len, STORIES)), "sha256": sha256_of(STORIES)}
    assert info["splits"]["validation"]["sha256"] == sha256_of(STORIES[:2])
    assert {"python", "datasets", "pyarrow"} <= set(info["tools"])
    # the sha256 is that of the split written in the raw .txt format: here, the input file itself
    assert info["splits"]["train"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()


def test_local_jsonl_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(STORIES)), encoding="utf-8")
    js = tmp_path / "valid.json"  # TinyStories_all_data style: a JSON list with a `story` field
    js.write_text(json.dumps([{"story": s, "summary": "x"} for s in STORIES[:3]]), encoding="utf-8")
    load_dataset.prepare(source="local", data_dir=tmp_path / "a", data_files={"train": str(jsonl), "validation": str(js)})
    assert texts(tmp_path / "a", "train") == STORIES
    assert texts(tmp_path / "a", "validation") == STORIES[:3]
    assert load_dataset.load_raw(tmp_path / "a")["train"].column_names == ["text"]

    pq.write_table(pa.table({"text": STORIES, "n": list(range(5))}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": STORIES[3:]}), tmp_path / "valid.parquet")
    load_dataset.prepare(source="local", data_dir=tmp_path / "b",
                         data_files={"train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "valid.parquet")})
    assert texts(tmp_path / "b", "train") == STORIES
    assert texts(tmp_path / "b", "validation") == STORIES[3:]


def test_local_without_validation_holds_out_a_fixed_fraction(tmp_path):
    stories = [f"Story number {i}. The dog ran." for i in range(300)]
    train = write_raw(tmp_path / "train.txt", stories)
    splits = []
    for name in ("a", "b"):
        load_dataset.prepare(source="auto", data_dir=tmp_path / name, data_files={"train": str(train)}, seed=3)
        splits.append((texts(tmp_path / name, "train"), texts(tmp_path / name, "validation")))
    (tr, va), (tr2, va2) = splits
    assert (tr, va) == (tr2, va2)  # deterministic
    assert len(va) == 3 and len(tr) == 297  # 1% of 300
    assert sorted(tr + va) == sorted(stories)
    info = load_dataset.read_source(tmp_path / "a")
    assert info["source"] == "local" and "held out" in info["validation"]


# ----------------------------------------------------------------------------- the built-in corpus


def test_builtin_generator_is_deterministic_distinct_and_prefix_stable():
    a = builtin_stories.generate_stories(2000, seed=0)
    assert a == builtin_stories.generate_stories(2000, seed=0)
    assert a[:300] == builtin_stories.generate_stories(300, seed=0)
    assert builtin_stories.generate_stories(50, seed=1) != a[:50]
    assert len(set(a)) == len(a) == 2000
    for story in a:
        assert "{" not in story and "}" not in story  # every slot filled
        assert story.count("\n") >= 3  # beginning, setting, problem, ending paragraphs
        assert " a orange" not in story and " a old" not in story
        assert story == story.strip() and EOT not in story


def test_builtin_default_size_is_fast_and_varied():
    import time

    t0 = time.perf_counter()
    stories = builtin_stories.generate_stories(20000, seed=0)
    elapsed = time.perf_counter() - t0
    assert len(set(stories)) == 20000
    assert elapsed < 15, f"20,000 stories took {elapsed:.1f}s"
    openings = {s.split("\n")[2].split(".")[0] for s in stories}  # first sentence of the problem paragraph
    assert len(openings) > 100
    assert sum('"' in s for s in stories) > 0.9 * len(stories)  # dialogue in nearly every story


def test_builtin_names_and_pronouns_stay_consistent():
    import re

    hero = re.compile(r"\b(girl|boy) (?:named|called) ([A-Z][a-z]+)|\b(Her|His) name was ([A-Z][a-z]+)")
    checked = 0
    for story in builtin_stories.generate_stories(500, seed=7):
        first = story.split("\n")[0]
        m = hero.search(first)
        if m is None:
            continue
        girl = (m.group(1) or m.group(3)) in ("girl", "Her")
        name = m.group(2) or m.group(4)
        assert story.count(name) >= 3, story  # the hero comes back through the story
        # the opening paragraph talks about the hero only: every pronoun there is the hero's
        words = set(re.findall(r"[A-Za-z]+", first.replace(name, "")))
        wrong = {"he", "He", "him", "his", "His", "himself"} if girl else {"she", "She", "her", "Her", "herself"}
        assert not words & wrong, first
        checked += 1
    assert checked > 300


def test_builtin_prepare_writes_a_loud_demo_source(tmp_path):
    raw = load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=400, seed=0)
    dd = load_dataset.load_raw(tmp_path)
    assert set(dd) == {"train", "validation"} and dd["train"].column_names == ["text"]
    assert (len(dd["train"]), len(dd["validation"])) == (380, 20)
    stories = builtin_stories.generate_stories(400, seed=0)
    assert sorted(list(dd["train"]["text"]) + list(dd["validation"]["text"])) == sorted(stories)
    info = json.loads((raw / "source.json").read_text())
    assert info["source"] == "builtin" and info["demo"] is True and "NOT TinyStories" in info["note"]
    assert info["splits"]["validation"]["sha256"] == sha256_of(list(dd["validation"]["text"]))
    assert info == load_dataset.read_source(tmp_path)


# ----------------------------------------------------------------------------- hub and auto


@pytest.fixture
def hub_stand_in(tmp_path, monkeypatch):
    """datasets.load_dataset("roneneldan/TinyStories") answered by the real json loader on local files."""
    import datasets

    real = datasets.load_dataset
    files = {}
    for split, stories in (("train", STORIES), ("validation", STORIES[:2])):
        p = tmp_path / f"hub-{split}.jsonl"
        p.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories), encoding="utf-8")
        files[split] = str(p)
    calls = []

    def stand_in(name, *args, **kwargs):
        calls.append(name)
        assert name == "roneneldan/TinyStories" and not args
        return real("json", data_files=files, cache_dir=str(tmp_path / "hub-cache"))

    monkeypatch.setattr(datasets, "load_dataset", stand_in)
    return calls


def test_hub_source(tmp_path, hub_stand_in):
    load_dataset.prepare(source="hub", data_dir=tmp_path / "d")
    assert hub_stand_in == ["roneneldan/TinyStories"]
    assert texts(tmp_path / "d", "train") == STORIES
    assert texts(tmp_path / "d", "validation") == STORIES[:2]
    info = load_dataset.read_source(tmp_path / "d")
    assert info["source"] == "hub" and info["dataset"] == "roneneldan/TinyStories" and info["demo"] is False


def test_hub_failure_is_one_clear_error(tmp_path, monkeypatch):
    import datasets

    def offline(name, *args, **kwargs):
        raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CLIError, match="could not load roneneldan/TinyStories.*--source builtin"):
        load_dataset.prepare(source="hub", data_dir=tmp_path)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.partial").exists()


def test_auto_uses_the_hub_when_it_answers(tmp_path, hub_stand_in, monkeypatch):
    monkeypatch.setattr(load_dataset, "_hub_offline_reason", lambda: None)
    load_dataset.prepare(source="auto", data_dir=tmp_path / "d")
    assert load_dataset.read_source(tmp_path / "d")["source"] == "hub"


def test_auto_falls_back_to_builtin_loudly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_dataset.prepare(source="auto", data_dir=tmp_path, num_stories=40)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "hub cannot be reached" in line]
    assert len(notes) == 1 and "BUILT-IN DEMO CORPUS" in notes[0]
    info = load_dataset.read_source(tmp_path)
    assert info["source"] == "builtin" and info["requested"] == "auto" and info["demo"] is True
    assert "HF_HUB_OFFLINE" in info["fallback_reason"]


def test_auto_keeps_a_hub_dataset_already_here_when_offline(tmp_path, hub_stand_in, monkeypatch, capsys):
    load_dataset.prepare(source="hub", data_dir=tmp_path)
    before = snapshot(tmp_path / "raw")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(load_dataset, "_hub_offline_reason", lambda: pytest.fail("no need to ask the hub"))
    capsys.readouterr()
    load_dataset.prepare(source="auto", data_dir=tmp_path)
    out = capsys.readouterr()
    assert "up to date" in out.out and "BUILT-IN" not in out.err
    assert snapshot(tmp_path / "raw") == before


def test_hub_probe_is_quick_when_nothing_answers(monkeypatch):
    import time

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("no_proxy", "*")  # straight to it, even where a proxy is configured
    t0 = time.perf_counter()
    reason = load_dataset._hub_offline_reason()
    assert reason is not None and "127.0.0.1:9" in reason
    assert time.perf_counter() - t0 < load_dataset.HUB_PROBE_TIMEOUT_S + 1


# ----------------------------------------------------------------------------- reruns and atomic replacement


def test_rerun_does_nothing_and_force_rebuilds(tmp_path, capsys):
    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=60)
    before = snapshot(tmp_path / "raw")
    capsys.readouterr()
    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=60)
    assert "up to date" in capsys.readouterr().out
    assert snapshot(tmp_path / "raw") == before

    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=60, force=True)
    out = capsys.readouterr().out
    assert "up to date" not in out and "wrote" in out
    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=80)  # other inputs: rebuilt
    assert "wrote" in capsys.readouterr().out
    assert load_dataset.read_source(tmp_path)["num_stories"] == 80


def test_rerun_notices_a_changed_input_file(tmp_path, capsys):
    train = write_raw(tmp_path / "train.txt", STORIES)
    files = {"train": str(train), "validation": str(train)}
    load_dataset.prepare(source="local", data_dir=tmp_path / "d", data_files=files)
    write_raw(train, STORIES[:3])
    load_dataset.prepare(source="local", data_dir=tmp_path / "d", data_files=files)
    assert texts(tmp_path / "d", "train") == STORIES[:3]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_the_old_raw_untouched(tmp_path, monkeypatch, exc):
    import datasets

    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=40)
    before = snapshot(tmp_path / "raw")
    real_save = datasets.DatasetDict.save_to_disk

    def save_then_fail(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)  # the new dataset is half there (no source.json yet)
        raise exc

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_then_fail)
    with pytest.raises(type(exc)):
        load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=50)
    assert snapshot(tmp_path / "raw") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert len(load_dataset.load_raw(tmp_path)["train"]) == 38


def test_a_run_stopped_mid_swap_is_recovered(tmp_path, capsys):
    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=40)
    before = snapshot(tmp_path / "raw")
    (tmp_path / "raw").rename(tmp_path / "raw.old")  # as if killed between the two renames
    (tmp_path / "raw.partial").mkdir()
    load_dataset.prepare(source="builtin", data_dir=tmp_path, num_stories=40)
    out = capsys.readouterr().out
    assert "restored" in out and "up to date" in out
    assert snapshot(tmp_path / "raw") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# ----------------------------------------------------------------------------- bad input


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def bad_inputs() -> dict[str, tuple[list[str], str]]:
    """Arguments and the words the one-line error must contain; the files are made by bad_dir."""
    return {
        "missing file": (["--data-files", "train=nope.txt"], "does not exist"),
        "empty file": (["--data-files", "train=empty.txt"], "is empty"),
        "no stories": (["--data-files", "train=only_separators.txt"], "no stories"),
        "JSON without text": (["--data-files", "train=notext.jsonl"], "no 'text' field"),
        "broken JSON": (["--data-files", "train=broken.json"], "could not be read"),
        "not UTF-8": (["--data-files", "train=latin1.txt"], "not UTF-8"),
        "unknown file type": (["--data-files", "train=stories.csv"], "unknown type"),
        "unknown split": (["--data-files", "train=ok.txt", "test=ok.txt"], "unknown split 'test'"),
        "not SPLIT=PATH": (["--data-files", "ok.txt"], "not SPLIT=PATH"),
        "directory": (["--data-files", "train=adir"], "is a directory"),
        "validation only": (["--data-files", "validation=ok.txt"], "no train=PATH"),
        "local without files": (["--source", "local"], "needs files"),
        "files with builtin": (["--source", "builtin", "--data-files", "train=ok.txt"], "only applies"),
        "too few stories": (["--source", "builtin", "--num-stories", "1"], "too few"),
        "one story, no validation": (["--data-files", "train=one.txt"], "too few"),
        "data dir is a file": (["--source", "builtin", "--num-stories", "10", "--data-dir", "ok.txt"], "is a file"),
    }


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "one.txt").write_text("Just one story.\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "only_separators.txt").write_text(f"{EOT}\n\n{EOT}\n")
    (tmp / "notext.jsonl").write_text('{"title": "a"}\n{"title": "b"}\n')
    (tmp / "broken.json").write_text('{"text": "a story"')
    (tmp / "latin1.txt").write_bytes("Zoë went home.\n".encode("latin-1"))
    (tmp / "stories.csv").write_text("text\na story\n")
    (tmp / "adir").mkdir()
    (tmp / "ok.txt").write_text(f"A story.\n{EOT}\nAnother.\n")
    # an existing dataset that no bad run may touch
    load_dataset.prepare(source="builtin", data_dir=tmp / "data", num_stories=30)
    return tmp


@pytest.mark.parametrize("case", [
    "missing file", "empty file", "no stories", "JSON without text", "broken JSON", "not UTF-8", "unknown file type",
    "unknown split", "not SPLIT=PATH", "directory", "validation only", "local without files", "files with builtin",
    "too few stories", "one story, no validation", "data dir is a file"])
def test_bad_input_is_one_line_exit_2_and_nothing_replaced(bad_dir, case):
    args, expected = bad_inputs()[case]
    before = snapshot(bad_dir / "data" / "raw")
    if case in ("missing file", "empty file", "unknown split", "directory", "JSON without text", "local without files"):
        proc = run_script(*args, "--data-dir", "data", cwd=bad_dir)  # a few as real subprocesses: exit code, stderr
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        import os

        cwd = os.getcwd()
        os.chdir(bad_dir)
        try:
            with pytest.raises(CLIError, match=expected.replace("(", r"\(")) as e:
                load_dataset.main(args if "--data-dir" in args else [*args, "--data-dir", "data"])
        finally:
            os.chdir(cwd)
        assert "\n" not in str(e.value)
    assert snapshot(bad_dir / "data" / "raw") == before
    assert sorted(p.name for p in (bad_dir / "data").iterdir()) == ["raw"]


def test_help_explains_every_flag(tmp_path):
    proc = run_script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for flag in ("--source", "--data-files", "--data-dir", "--force", "--num-stories", "--seed", "<|endoftext|>"):
        assert flag in proc.stdout


def test_load_raw_and_read_source_say_how_to_make_the_dataset(tmp_path):
    with pytest.raises(CLIError, match="python load_dataset.py"):
        load_dataset.load_raw(tmp_path)
    with pytest.raises(CLIError, match="python load_dataset.py"):
        load_dataset.read_source(tmp_path)


# ----------------------------------------------------------------------------- the real sample


def test_shared_tinystories_sample(shared_tinystories, tmp_path):
    train, valid = shared_tinystories / "train.txt", shared_tinystories / "validation.txt"
    load_dataset.prepare(source="local", data_dir=tmp_path, data_files={"train": str(train), "validation": str(valid)})
    dd = load_dataset.load_raw(tmp_path)
    assert len(dd["train"]) == 4042
    assert len(dd["validation"]) == 201
    for split, path in (("train", train), ("validation", valid)):
        # independent of the parser: a regex over the whole text, a separator being a line holding only
        # <|endoftext|> (the file may start with one, or end with one and no newline after it)
        text = path.read_bytes().decode("utf-8")
        pieces = re.split(rf"(?m)^[ \t]*{re.escape(EOT)}[ \t]*\r?$", text)
        expected = [s.strip() for s in pieces if s.strip()]
        got = list(dd[split]["text"])
        if "\r\n" not in text:
            assert got == expected
        assert all(s.encode("utf-8") in path.read_bytes() for s in got)  # every story byte-identical to the file
