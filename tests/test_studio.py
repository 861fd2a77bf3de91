"""The story studio over HTTP, without a browser: the stream is model_usage.py's story with each
token's distribution; every bad request gets a 4xx JSON error and the next good one its story; a
client that leaves stops its story; concurrent clients never mix stories.

The server runs in a thread of this process on a free loopback port, serving a tiny untrained GPT
(random weights: almost never an end-of-text, so a story runs to its length).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_model_usage import REPO, call_cli, env_with_repo, save_checkpoint, tiny_model

import model_usage
from config import EOT_ID
from slm import studio
from slm.hardware import pick_dtype

GOOD = {"prompt": "Once upon a time", "max_new_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(
        tiny_model(seed=3, block_size=64), tmp_path_factory.mktemp("studio") / "best.pt"
    )


def start(the_studio: studio.Studio):
    """A running server on a free loopback port, in a daemon thread: (server, port)."""
    server = studio.make_server(the_studio, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture(scope="module")
def served(ckpt):
    """(Studio, port): the studio as model_usage.py --serve builds it (same device and dtype)."""
    dtype = pick_dtype("auto", "cpu")
    model, ck, enc = model_usage.load_for_inference(ckpt, "cpu")
    the_studio = studio.Studio(model, ck, enc, str(ckpt), "cpu", dtype)
    server, port = start(the_studio)
    yield the_studio, port
    server.shutdown()
    server.server_close()


def request(port, method, path, body=None, headers=None, timeout=30):
    """(status, content type, body bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        conn.close()


def events(raw: bytes) -> list[dict]:
    """The server-sent events of a /generate answer, each `data: JSON` and a blank line."""
    chunks = raw.decode().split("\n\n")
    assert chunks[-1] == "", "the stream ends with a complete event"
    assert all(c.startswith("data: ") for c in chunks[:-1])
    return [json.loads(c[len("data: ") :]) for c in chunks[:-1]]


def generate(port, **body) -> list[dict]:
    status, kind, raw = request(port, "POST", "/generate", {**GOOD, **body})
    assert status == 200 and kind.startswith("text/event-stream"), raw[:200]
    return events(raw)


def assert_good_story(port) -> None:
    evs = generate(port)
    assert len(evs) == 4 and evs[-1]["done"] is True and evs[-1]["tokens"] == 3


# ----------------------------------------------------------------------------- a good story


def test_info_gives_the_model_facts(served, ckpt):
    status, kind, raw = request(served[1], "GET", "/info")
    info = json.loads(raw)
    assert status == 200 and kind == "application/json"
    assert info["checkpoint"] == str(ckpt) and info["step"] == 7 and info["val_loss"] == 1.25
    assert info["params"] == served[0].model.num_params() and info["config"]["block_size"] == 64
    assert info["data"].startswith("trained on the TinyStories sample")
    assert info["limits"]["max_new_tokens"] == studio.MAX_NEW_TOKENS_LIMIT


def test_the_page_and_only_its_files_are_served(served):
    port = served[1]
    status, kind, raw = request(port, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b'src="/studio.js"' in raw
    for path, kind_start in (("/studio.js", "text/javascript"), ("/studio.css", "text/css")):
        status, kind, _ = request(port, "GET", path)
        assert status == 200 and kind.startswith(kind_start)
    for path in ("/index.html", "/../studio.py", "/slm/studio.py", "/studio_page/studio.js"):
        status, kind, raw = request(port, "GET", path)
        assert status == 404 and kind == "application/json" and "error" in json.loads(raw)


def test_greedy_stream_is_model_usage_greedy_story_token_by_token(served, ckpt, capsys):
    """The done-when of the issue: 20 token events, each with p and 5 top entries, then done, and
    the same tokens as `model_usage.py --prompt ... --max-new-tokens 20 --temperature 0`."""
    evs = generate(served[1], max_new_tokens=20)
    tokens, done = evs[:-1], evs[-1]
    assert len(tokens) == 20 and done["done"] is True and done["reason"] == "length"
    assert done["prompt_tokens"] == 5  # <|endoftext|>Once upon a time
    for e in tokens:
        assert len(e["top"]) == 5 and 0 < e["p"] <= 1
        assert e["id"] == e["top"][0]["id"] and e["p"] == e["top"][0]["p"]  # greedy: the likeliest
        ps = [t["p"] for t in e["top"]]
        assert ps == sorted(ps, reverse=True) and sum(ps) <= 1 + 1e-5
    argv = ["--checkpoint", str(ckpt), "--prompt", "Once upon a time", "--max-new-tokens", "20"]
    code, out, _ = call_cli(model_usage.main, argv + ["--temperature", "0"], capsys)
    assert code == 0
    assert out.splitlines(keepends=True)[1:] == [
        "Once upon a time" + "".join(e["text"] for e in tokens) + "\n"
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.8, "top_k": 200, "top_p": None},
        {"temperature": 1.3, "top_k": 0, "top_p": 0.9},
    ],
)
def test_a_seed_gives_model_usage_story_and_p_is_the_sampled_distribution(
    served, ckpt, capsys, settings
):
    """Sampled with the same seed and settings: model_usage.py's story; p and the top 5 come from
    the distribution after temperature, top-k and top-p (top-k 50: no token outside the 50 has
    any probability)."""
    the_studio = served[0]
    evs = generate(served[1], max_new_tokens=25, seed=11, **settings)
    assert evs[-1]["seed"] == 11 and len(evs) == 26
    top_k, top_p = settings["top_k"], settings["top_p"]
    argv = ["--checkpoint", str(ckpt), "--prompt", "Once upon a time", "--max-new-tokens", "25"]
    argv += ["--seed", "11", "--temperature", str(settings["temperature"]), "--top-k", str(top_k)]
    argv += ["--top-p", str(top_p)] if top_p is not None else []
    code, out, _ = call_cli(model_usage.main, argv, capsys)
    assert code == 0
    assert out.split("\n", 1)[1] == "Once upon a time" + "".join(e["text"] for e in evs[:-1]) + "\n"
    # p is the sampler's own: rebuild the first token's distribution by hand (in float32, where
    # the one-pass forward and the cached one agree to rounding)
    import torch

    exact = studio.Studio(the_studio.model, {}, the_studio.enc, "x", "cpu", "float32")
    s = studio.parse_settings(json.dumps({**GOOD, "seed": 11, **settings}).encode(), 50257)
    first = next(exact.story_events(s))
    ids = torch.tensor([[EOT_ID] + the_studio.enc.encode_ordinary("Once upon a time")])
    with torch.no_grad():
        logits, _ = the_studio.model(ids)
    probs = torch.softmax(logits[0, -1] / settings["temperature"], dim=-1)
    if top_k:  # the k likeliest, renormalised
        probs = torch.zeros_like(probs).index_fill(0, probs.topk(top_k).indices, 1) * probs
        probs = probs / probs.sum()
    if top_p is not None:  # nucleus by hand: the likeliest tokens until their mass reaches top_p
        p_sorted, order = probs.sort(descending=True)
        keep = order[(p_sorted.cumsum(0) - p_sorted) < top_p]
        probs = torch.zeros_like(probs).index_fill(0, keep, 1) * probs
        probs = probs / probs.sum()
    assert first["p"] == pytest.approx(probs[first["id"]].item(), rel=1e-4)
    assert [t["id"] for t in first["top"]] == probs.topk(5).indices.tolist()
    assert [t["p"] for t in first["top"]] == pytest.approx(probs.topk(5).values.tolist(), rel=1e-4)


def test_top_k_one_makes_every_token_certain(served):
    evs = generate(served[1], max_new_tokens=5, temperature=1.0, top_k=1, seed=1)
    for e in evs[:-1]:
        assert e["p"] == 1.0 and e["top"][0]["id"] == e["id"]
        assert [t["p"] for t in e["top"][1:]] == [0.0] * 4


def test_after_continues_a_story_from_its_tokens(served):
    """The page's rewrite: `after` holds the tokens kept (the last one the clicked alternative),
    and the new tokens continue from there, as the whole story would."""
    whole = [e["id"] for e in generate(served[1], max_new_tokens=12)[:-1]]
    rest = generate(served[1], max_new_tokens=7, after=whole[:5])
    assert [e["id"] for e in rest[:-1]] == whole[5:] and rest[-1]["prompt_tokens"] == 5 + 5


# ----------------------------------------------------------------------------- bad requests

TOO_LONG = "x" * (studio.MAX_PROMPT_CHARS + 1)
BAD_BODIES = {
    "malformed JSON": b'{"prompt": "Once',
    "not UTF-8": b'{"prompt": "\xff\xfe"}',
    "not an object": b'["Once upon a time"]',
    "nested too deep": b"[" * 30000 + b"]" * 30000,
    "empty": b"",
    "unknown field": {"promt": "Once"},
    "prompt not a string": {"prompt": 5},
    "prompt too long": {"prompt": TOO_LONG},
    "length a string": {"max_new_tokens": "20"},
    "length a float": {"max_new_tokens": 2.5},
    "length zero": {"max_new_tokens": 0},
    "length too large": {"max_new_tokens": studio.MAX_NEW_TOKENS_LIMIT + 1},
    "length huge": {"max_new_tokens": 10**400},
    "temperature a bool": {"temperature": True},
    "temperature negative": {"temperature": -0.1},
    "temperature too high": {"temperature": 1e9},
    "temperature NaN": b'{"temperature": NaN}',
    "temperature infinite": b'{"temperature": Infinity}',
    "top_k negative": {"top_k": -1},
    "top_k over the vocabulary": {"top_k": 50258},
    "top_p zero": {"top_p": 0},
    "top_p above one": {"top_p": 1.5},
    "seed negative": {"seed": -1},
    "seed a string": {"seed": "7"},
    "after not a list": {"after": "13"},
    "after outside the vocabulary": {"after": [50257]},
    "after too long": {"after": [13] * (studio.MAX_AFTER_TOKENS + 1)},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_bad_body_gets_400_json_and_the_next_story_is_written(served, body):
    status, kind, raw = request(served[1], "POST", "/generate", body)
    assert status == 400 and kind == "application/json", raw[:200]
    assert json.loads(raw)["error"]
    assert_good_story(served[1])


BAD_REQUESTS = {
    "unknown path": ("POST", "/generat", json.dumps(GOOD).encode(), {}, 404),
    "unknown page": ("GET", "/etc/passwd", None, {}, 404),
    "GET /generate": ("GET", "/generate", None, {}, 405),
    "unknown method": ("PUT", "/generate", b"{}", {}, 405),
    "huge body": ("POST", "/generate", b"x" * (studio.MAX_BODY_BYTES + 1), {}, 413),
    "huge length claimed": ("POST", "/generate", b"{}", {"Content-Length": "9" * 30}, 413),
    "another site's page": (
        "POST",
        "/generate",
        json.dumps(GOOD).encode(),
        {"Origin": "http://evil.example"},
        403,
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_gets_a_4xx_json_error_and_the_next_story_is_written(served, case):
    method, path, body, headers, expected = case
    status, kind, raw = request(served[1], method, path, body, headers)
    assert status == expected and kind == "application/json", raw[:200]
    assert json.loads(raw)["error"]
    assert_good_story(served[1])


def raw_exchange(port, data: bytes, read=True, timeout=10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_malformed_requests_get_json_errors_and_a_stalled_body_keeps_the_server_serving(
    served, monkeypatch
):
    port = served[1]
    # an HTTP/0.9-style line: the answer is the bare body, as http.server answers such a line
    assert json.loads(raw_exchange(port, b"NONSENSE\r\n\r\n"))["error"]
    for data, status in (
        (b"POST /generate HTTP/1.0\r\n\r\n", b"411"),  # no Content-Length
        (b"POST /generate HTTP/1.0\r\nContent-Length: -5\r\n\r\n", b"400"),
        (b"GET / HTTP/1.0\r\nX: " + b"x" * 70000 + b"\r\n\r\n", b"431"),  # a header too long
    ):
        head, _, body = raw_exchange(port, data).partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status and json.loads(body)["error"]
        assert_good_story(port)
    # a body promised and never sent: that thread waits out its socket timeout, the rest serve
    monkeypatch.setattr(studio.Handler, "timeout", 1)
    with socket.create_connection(("127.0.0.1", port)) as stalled:
        stalled.sendall(b"POST /generate HTTP/1.0\r\nContent-Length: 100\r\n\r\n{")
        assert_good_story(port)
        stalled.settimeout(10)
        assert stalled.recv(65536).split(b"\r\n")[0].split(b" ")[1] == b"408"


# ----------------------------------------------------------------------------- leaving, queueing


def test_a_client_that_leaves_mid_story_stops_it(served):
    the_studio, port = served
    body = json.dumps({**GOOD, "max_new_tokens": 1000, "temperature": 1.0, "seed": 2}).encode()
    head = b"POST /generate HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body)
    the_studio.last_story = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        seen = b""
        while seen.count(b"\n\ndata: ") < 3:
            seen += s.recv(4096)
    deadline = time.monotonic() + 20
    while the_studio.last_story.get("reason") != "disconnected" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert the_studio.last_story.get("reason") == "disconnected"
    assert the_studio.last_story.get("tokens", 0) < 1000
    assert_good_story(port)


def test_twenty_concurrent_clients_each_get_their_own_story(served):
    """20 requests at once, each with its own seed: all answered within the time bound, and each
    story is the one its seed writes alone (the lock serialises stories; nothing is shared)."""
    port = served[1]
    seeds = list(range(100, 120))

    def one(seed):
        return [e.get("id") for e in generate(port, max_new_tokens=15, temperature=1.0, seed=seed)]

    alone = {seed: one(seed) for seed in seeds[:3]}
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        together = dict(zip(seeds, pool.map(one, seeds), strict=True))
    assert time.monotonic() - start < 60
    assert all(len(story) == 16 for story in together.values())  # 15 tokens + done
    assert {seed: together[seed] for seed in alone} == alone
    assert len({tuple(story) for story in together.values()}) == 20


def test_beyond_the_queue_a_request_gets_503_json(served, monkeypatch):
    the_studio, port = served
    monkeypatch.setattr(the_studio, "waiting", threading.BoundedSemaphore(1))
    the_studio.lock.acquire()  # a story being written: the next request waits, holding the place
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            queued = pool.submit(generate, port)
            deadline = time.monotonic() + 10
            while the_studio.waiting._value and time.monotonic() < deadline:
                time.sleep(0.01)
            status, kind, raw = request(port, "POST", "/generate", GOOD)
            assert status == 503 and kind == "application/json" and json.loads(raw)["error"]
            the_studio.lock.release()
            assert queued.result(timeout=30)[-1]["done"] is True
    finally:
        if the_studio.lock.locked():
            the_studio.lock.release()


# ----------------------------------------------------------------------------- the command line


def test_serve_prints_its_address_and_serves_what_the_cli_writes(ckpt):
    """`python model_usage.py --serve --port 0`: one line with the address, then the page."""
    proc = subprocess.Popen(
        [sys.executable, "model_usage.py", "--serve", "--port", "0", "--checkpoint", str(ckpt)],
        cwd=REPO,
        env=env_with_repo(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc.stdout.readline()  # the checkpoint and device
        line = proc.stdout.readline()
        assert line.startswith("story studio at http://127.0.0.1:"), line
        port = int(line.split(":")[2].split("/")[0])
        assert request(port, "GET", "/")[0] == 200
        assert generate(port, max_new_tokens=4)[-1]["tokens"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_another_host_prints_a_warning_and_a_used_port_one_error_line(served, capsys, monkeypatch):
    class Stopped:
        server_address = ("0.0.0.0", 8000)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def serve_forever(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(studio, "make_server", lambda *a, **k: Stopped())
    studio.serve(served[0], "0.0.0.0", 8000)
    out, err = capsys.readouterr()
    assert err.startswith("warning: --host 0.0.0.0 lets other machines") and err.count("\n") == 1
    assert "story studio at http://0.0.0.0:8000/" in out
    monkeypatch.undo()
    with pytest.raises(studio.CLIError, match=f"cannot serve on 127.0.0.1:{served[1]}"):
        studio.serve(served[0], "127.0.0.1", served[1])


@pytest.mark.parametrize(
    "flags", [["--interactive"], ["--prompt", "x"], ["--num-samples", "2"], ["--port", "70000"]]
)
def test_serve_refuses_flags_it_cannot_use(flags, capsys):
    code, _, err = call_cli(model_usage.main, ["--serve", *flags], capsys)
    last = err.splitlines()[-1]
    assert code == 2 and "error: --" in last and (flags[0] in last or "--serve" in last)
