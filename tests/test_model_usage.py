"""model_usage.py: the edit-`sentence`-and-run path, every flag and every error, on tiny checkpoints
made here.

The checkpoints are untrained tiny GPTs whose logits are *programmed* (see `constant_logits`), so
the text they write is known in advance: the tests check behaviour, not story quality. The
helpers at the top are shared with test_evaluate.py and test_export_hf.py.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import EOT_ID, GPTConfig
from slm.checkpoint import config_to_dict
from slm.cli import run_cli
from slm.files import atomic_torch_save
from slm.sampling import MAX_NEW_TOKENS

REPO = Path(__file__).resolve().parent.parent
TINY = dict(block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
LA, DI = 8591, 2566  # GPT-2 tokens " la" and " di"
SAMPLE_SOURCE = {
    "source": "sample",
    "requested": "auto",
    "demo": False,
    "num_stories": 400,
    "fallback_reason": "no network",
    "splits": {"train": {"stories": 400}, "validation": {"stories": 25}},
}  # the shape of load_dataset.py's raw/source.json


# ----------------------------------------------------------------------------- shared helpers


def tiny_model(seed: int = 0, **overrides):
    from model import GPT

    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def constant_logits(model, logits: dict[int, float]):
    """Make the model ignore its input: every position gets the same logits, `logits[t]` for token
    t, 0 else.

    The final LayerNorm then outputs its bias e_0 whatever comes in, and the tied LM head turns
    e_0 into column 0 of the token embedding, which we set to the wanted logits."""
    with torch.no_grad():
        ln_f = model.transformer.ln_f
        ln_f.weight.zero_()
        ln_f.bias.zero_()
        ln_f.bias[0] = 1.0
        wte = model.transformer.wte.weight
        wte[:, 0] = 0.0
        for tok, value in logits.items():
            wte[tok, 0] = value
    return model


def save_checkpoint(model, path, source: dict | None = SAMPLE_SOURCE, **data_overrides) -> Path:
    """Write `model` in the checkpoint format of best_model_params.pt."""
    data = {
        "tokenizer": "gpt2",
        "vocab_size": model.config.vocab_size,
        "eot_id": EOT_ID,
        "eot_position": "before",
        "source": source,
    }
    data.update(data_overrides)
    ckpt = {
        "model": model.state_dict(),
        "config": config_to_dict(model.config),
        "data": data,
        "step": 7,
        "val_loss": 1.25,
    }
    atomic_torch_save(ckpt, path)
    return Path(path)


def env_with_repo() -> dict:
    """Environment for a subprocess that must import the project's modules from anywhere."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    # Tiny models gain nothing from threads, and on a busy shared CPU two threads run 4x slower than
    # one.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_script(script: Path | str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env_with_repo(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Programmed checkpoints: 'la' always says " la"; 'pair' mostly " la" or " di"; 'eot' ends at
    once.
    """
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "la": save_checkpoint(constant_logits(tiny_model(), {LA: 30.0}), d / "la.pt"),
        "pair": save_checkpoint(
            constant_logits(tiny_model(), {LA: 10.1, DI: 10.0}),
            d / "pair.pt",
            source={"source": "hub", "dataset": "roneneldan/TinyStories"},
        ),
        "eot": save_checkpoint(constant_logits(tiny_model(), {EOT_ID: 30.0}), d / "eot.pt"),
    }


def call_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A script's main() in-process through run_cli, as `python script.py ARGV` runs it: (status,
    stdout, stderr).
    """
    try:
        run_cli(main, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    import model_usage

    return call_cli(model_usage.main, argv, capsys)


def story_lines(out: str) -> list[str]:
    """The printed stories: every line that is not a bracketed note or a story separator."""
    return [line for line in out.splitlines() if not line.startswith(("[", "--- story"))]


# ----------------------------------------------------------------------------- subprocess: the
# seed's way of use


def test_default_sentence_and_default_checkpoint(tmp_path, ckpts):
    """`python model_usage.py` with no flags: out/best_model_params.pt, the file's `sentence`,
    default sampling.
    """
    import model_usage

    # A context longer than sentence + 300 tokens keeps every step on the cheap KV-cached path.
    save_checkpoint(
        constant_logits(tiny_model(block_size=512), {LA: 30.0}),
        tmp_path / "out" / "best_model_params.pt",
    )
    r = run_script(REPO / "model_usage.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, story = r.stdout.splitlines()[:2]
    assert "out/best_model_params.pt" in header and "step 7" in header
    assert (
        "TinyStories sample bundled in sample_data/tinystories (real stories, 400 train" in header
    )
    assert story == model_usage.sentence + " la" * MAX_NEW_TOKENS


def test_edited_sentence_in_a_copy_of_the_script(tmp_path, ckpts):
    """A user edits `sentence = "..."`, saves and runs the script: the story starts from the new
    sentence.
    """
    source = (REPO / "model_usage.py").read_text(encoding="utf-8")
    edited, n = re.subn(
        r'^sentence = ".*"$', 'sentence = "Tom saw a big dog 🙂."', source, count=1, flags=re.M
    )
    assert n == 1, 'model_usage.py must hold one line `sentence = "..."`'
    script = tmp_path / "model_usage.py"
    script.write_text(edited, encoding="utf-8")
    r = run_script(script, "--checkpoint", str(ckpts["la"]), "--max-new-tokens", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert story_lines(r.stdout) == ["Tom saw a big dog 🙂. la la la"]


def test_every_flag_together_and_seed_reproduces(tmp_path, ckpts, capsys):
    args = [
        "--prompt",
        "Anna sang",
        "--checkpoint",
        str(ckpts["pair"]),
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.0",
        "--top-k",
        "2",
        "--top-p",
        "0.99",
        "--num-samples",
        "3",
        "--seed",
        "5",
        "--device",
        "cpu",
    ]
    r = run_script(REPO / "model_usage.py", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "TinyStories from the Hugging Face hub" in r.stdout.splitlines()[0]
    assert "seed 5" in r.stdout.splitlines()[0]
    assert [line for line in r.stdout.splitlines() if line.startswith("--- story")] == [
        "--- story 1 of 3 ---",
        "--- story 2 of 3 ---",
        "--- story 3 of 3 ---",
    ]
    stories = story_lines(r.stdout)
    assert len(stories) == 3
    for story in stories:
        assert story.startswith("Anna sang")
        words = story[len("Anna sang") :].split(" ")[1:]
        assert len(words) == 12 and set(words) <= {"la", "di"}  # top-k 2 allows nothing else
    assert len(set(stories)) > 1  # sampled, not greedy
    # The same seed writes the same stories (in-process this time, same code path).
    code, out, _ = run_main(args, capsys)
    assert code == 0 and out == r.stdout


def test_missing_checkpoint_is_one_line_exit_1(tmp_path):
    r = run_script(REPO / "model_usage.py", "--checkpoint", str(tmp_path / "nope.pt"), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "python training.py" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- in-process: flags
# and edge cases


def test_greedy_and_top_k_1_and_small_top_p_pick_the_top_token(ckpts, capsys):
    base = [
        "--checkpoint",
        str(ckpts["pair"]),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "6",
        "--seed",
        "0",
    ]
    for extra in (
        ["--temperature", "0"],
        ["--top-k", "1", "--temperature", "2"],
        ["--top-p", "0.3", "--top-k", "0"],
    ):
        code, out, err = run_main(base + extra, capsys)
        assert code == 0, err
        assert story_lines(out) == ["Hi" + " la" * 6], extra


def test_high_temperature_without_top_k_leaves_the_two_tokens(ckpts, capsys):
    code, out, err = run_main(
        [
            "--checkpoint",
            str(ckpts["pair"]),
            "--prompt",
            "",
            "--max-new-tokens",
            "30",
            "--temperature",
            "5",
            "--top-k",
            "0",
            "--seed",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert story_lines(out)[0].replace(" la", "").replace(" di", "") != ""


def test_stops_at_eot_unless_told_not_to(ckpts, capsys):
    args = [
        "--checkpoint",
        str(ckpts["eot"]),
        "--prompt",
        "The end",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
    ]
    code, out, _ = run_main(args, capsys)
    assert code == 0 and story_lines(out) == ["The end"]
    code, out, _ = run_main(args + ["--no-stop-at-eot"], capsys)
    assert code == 0
    assert story_lines(out) == ["The end"] + ["<|endoftext|>", ""] * 3


def record_prompts(monkeypatch) -> list[list[int]]:
    """Record the token ids every story starts from (generate_stream_logits: the loop that
    model_usage.py and generate_stream share)."""
    import model

    seen = []
    original = model.GPT.generate_stream_logits

    def recording(self, idx, *args, **kwargs):
        seen.append(idx[0].tolist())
        return original(self, idx, *args, **kwargs)

    monkeypatch.setattr(model.GPT, "generate_stream_logits", recording)
    return seen


def test_prompt_encoding_empty_literal_eot_and_too_long(ckpts, capsys, monkeypatch):
    from slm.encoding import get_encoding

    enc = get_encoding()
    seen = record_prompts(monkeypatch)
    base = ["--checkpoint", str(ckpts["la"]), "--max-new-tokens", "2"]

    code, out, _ = run_main(base + ["--prompt", ""], capsys)  # empty: a fresh story from EOT
    assert code == 0 and seen[-1] == [EOT_ID] and story_lines(out) == [" la la"]

    text = "She wrote <|endoftext|> on the wall."
    # the characters are text, not token 50256
    code, out, _ = run_main(base + ["--prompt", text], capsys)
    assert code == 0 and seen[-1] == [EOT_ID] + enc.encode_ordinary(text)
    assert EOT_ID not in seen[-1][1:] and story_lines(out) == [text + " la la"]

    long = " ".join(f"word{i}" for i in range(40))  # far more than the 32-token context
    full = [EOT_ID] + enc.encode_ordinary(long)
    code, out, _ = run_main(base + ["--prompt", long], capsys)
    assert code == 0 and seen[-1] == full[-TINY["block_size"] :]
    assert f"keeping its last {TINY['block_size']}" in out
    assert story_lines(out)[0].endswith("word39 la la")


def test_stream_prints_whole_characters_as_they_arrive():
    """An emoji is two GPT-2 tokens, neither valid UTF-8 alone: nothing is printed until the second
    comes.
    """
    import model_usage
    from slm.encoding import get_encoding

    enc = get_encoding()
    tokens = enc.encode_ordinary("🙂 and é, ok")
    assert any(not _is_utf8(enc.decode_single_token_bytes(t)) for t in tokens)

    class Recorder(io.StringIO):
        writes: list[str] = []

        def write(self, s):
            self.writes.append(s)
            return super().write(s)

    out = Recorder()
    assert model_usage.stream_text(iter(tokens), enc, out) == tokens
    assert out.getvalue() == "🙂 and é, ok"
    assert "\ufffd" not in "".join(out.writes) and len([w for w in out.writes if w]) >= 4


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ----------------------------------------------------------------------------- errors


def test_not_a_checkpoint_and_truncated_are_one_line_errors(tmp_path, ckpts, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    truncated = tmp_path / "truncated.pt"
    data = ckpts["la"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    # arbitrary Python objects: torch's refusal is many lines, with colour codes
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": argparse.Namespace(), "config": {}}, pickled)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    says = {
        garbage: "is not a checkpoint: torch.save writes a zip archive",
        truncated: "is truncated",
        other: "no 'model' and 'config' entries",
        pickled: "holds Python objects other than tensors",
        empty: "is empty (0 bytes)",
        tmp_path: "is a directory",
    }
    for path, why in says.items():
        code, out, err = run_main(["--checkpoint", str(path)], capsys)
        assert code == 1, path
        assert (
            err.startswith("error: ") and err.count("\n") == 1 and str(path) in err and why in err
        ), err
        # torch's advice to load unsafely is not passed on
        assert "\x1b" not in err and "weights_only" not in err
        assert out == ""


def test_vocabulary_mismatch_is_an_error(tmp_path, capsys):
    small_vocab = save_checkpoint(tiny_model(vocab_size=1000), tmp_path / "v1000.pt")
    other_tokenizer = save_checkpoint(tiny_model(), tmp_path / "tok.pt", tokenizer="cl100k_base")
    for path in (small_vocab, other_tokenizer):
        code, out, err = run_main(["--checkpoint", str(path)], capsys)
        assert (
            code == 1
            and err.count("\n") == 1
            and "vocabulary" in err
            and "python training.py" in err
        )
        assert out == ""


def test_bad_flag_values_are_usage_errors(ckpts, capsys):
    for bad in (
        ["--temperature", "-1"],
        ["--top-p", "1.5"],
        ["--num-samples", "0"],
        ["--max-new-tokens", "0"],
    ):
        code, _, err = run_main(["--checkpoint", str(ckpts["la"]), *bad], capsys)
        assert code == 2 and bad[0] in err


def test_describe_source_names_the_data():
    import model_usage

    assert model_usage.describe_source({"data": {"source": SAMPLE_SOURCE}}) == (
        "trained on the TinyStories sample bundled in sample_data/tinystories (real stories, 400 "
        "train stories; the hub could not be reached)"
    )
    old_demo = {"source": "generated", "demo": True}  # a checkpoint from before the bundled sample
    assert "DEMO CORPUS" in model_usage.describe_source({"data": {"source": old_demo}})
    assert "unknown" in model_usage.describe_source({"data": {}})
    local = {
        "source": "local",
        "demo": False,
        "data_files": {"train": "a.txt", "validation": "b.txt"},
    }
    described = model_usage.describe_source({"data": {"source": local}})
    assert described == "trained on local files (train=a.txt, validation=b.txt)"


# ----------------------------------------------------------------------------- --interactive


def run_interactive(stdin: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "model_usage.py"), "--interactive", *args],
        cwd=cwd,
        env=env_with_repo(),
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def test_interactive_from_a_pipe_writes_a_story_per_line_and_stops_at_the_empty_line(
    tmp_path, ckpts
):
    r = run_interactive(
        "Once upon a time\nThe dog\n\nnever read\n",
        "--checkpoint",
        str(ckpts["la"]),
        "--max-new-tokens",
        "3",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    # the model is loaded once, said once
    assert r.stdout.splitlines()[0].startswith(f"[{ckpts['la']} (step 7")
    assert story_lines(r.stdout) == ["Once upon a time la la la", "The dog la la la"]
    assert r.stderr == ""


def test_interactive_ends_cleanly_at_the_end_of_input_as_at_ctrl_d(tmp_path, ckpts):
    r = run_interactive(
        "Tom ran",
        "--checkpoint",
        str(ckpts["la"]),
        "--max-new-tokens",
        "2",
        "--num-samples",
        "2",
        cwd=tmp_path,
    )  # no newline, no empty line: the pipe just ends
    assert r.returncode == 0, r.stderr
    assert story_lines(r.stdout) == ["Tom ran la la", "Tom ran la la"]
    assert run_interactive("", "--checkpoint", str(ckpts["la"]), cwd=tmp_path).returncode == 0


def test_interactive_ctrl_c_while_waiting_for_a_prompt_exits_0_without_a_traceback(tmp_path, ckpts):
    import signal

    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "model_usage.py"),
            "--interactive",
            "--checkpoint",
            str(ckpts["la"]),
            "--max-new-tokens",
            "2",
        ],
        cwd=tmp_path,
        env=env_with_repo(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write("Hi\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("[") and proc.stdout.readline() == "Hi la la\n"
    proc.send_signal(signal.SIGINT)  # now blocked reading the next prompt
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err and err == ""


def test_converse_stops_at_ctrl_c_even_in_the_middle_of_a_story(capsys):
    import model_usage

    told = []

    def write(prompt):
        told.append(prompt)
        if prompt == "second":
            raise KeyboardInterrupt

    prompts = iter(["first", "second", "third"])
    model_usage.converse(write, ask=lambda: next(prompts))
    assert told == ["first", "second"]


def test_interactive_with_prompt_is_a_usage_error(ckpts, capsys):
    code, out, err = run_main(
        ["--checkpoint", str(ckpts["la"]), "--interactive", "--prompt", "Hi"], capsys
    )
    assert code == 2 and "--prompt and --interactive do not go together" in err and out == ""
