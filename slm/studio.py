"""The story studio: `python model_usage.py --serve` shows in a browser what the model weighed at
each token of a story, served by the standard library alone.

    GET  /           the page (slm/studio_page/: one HTML, one JS, one CSS file; no CDN, no build)
    GET  /info       JSON facts of the model: checkpoint, step, validation loss, parameters, data
    POST /generate   JSON {prompt, max_new_tokens, temperature, top_k, top_p, seed, after} ->
                     text/event-stream: one `data: {...}` event per token, {"text", "id", "p",
                     "top": the 5 likeliest [{"text", "id", "p"}]}, then {"done": true, ...}

Each token's p and top 5 come from the very distribution the token was drawn from (after
temperature, top-k and top-p; at temperature 0 the model's own softmax, whose likeliest token
greedy takes). `after` (optional) is a list of token ids already chosen after the prompt: the page
sends the story up to a token and the alternative clicked there, and the new tokens continue it.
Sampling is model_usage.py's own loop (slm.sampling.continue_story), so one seed and one set of
settings give the same story in both.

A threading server reads requests in parallel, but one lock lets a single story be written at a
time: the model and its caches are never shared by two stories, and the others wait their turn
(at most MAX_WAITING, then 503). Each request body is capped, each value checked, and every
problem answered with a 4xx JSON {"error": ...}. The generator checks between tokens whether the
client has gone, and stops.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import select
import socket
import sys
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from config import EOT_ID
from slm.checkpoint import describe_source
from slm.cli import CLIError
from slm.encoding import EOT_TEXT
from slm.hardware import autocast
from slm.sampling import MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P, continue_story, encode_prompt

PAGE_DIR = Path(__file__).resolve().parent / "studio_page"
# the only files served: URL path -> (file in PAGE_DIR, content type); no path comes from a client
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
    "/studio.css": ("studio.css", "text/css; charset=utf-8"),
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 64 * 1024  # a prompt at its longest, plus a story's worth of `after` ids
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS_LIMIT = 1000
MAX_AFTER_TOKENS = 1000
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1
MAX_WAITING = 32  # stories writing or queued behind the lock; more get 503
SOCKET_TIMEOUT_S = 30  # a client that stops sending mid-request loses its thread after this
TOP_N = 5  # alternatives shown per token
# after refusing a request, how much of its unread body to drop, and for how long at most
DRAIN_BYTES, DRAIN_TIMEOUT_S = 4 * 2**20, 1.0


def _short(p: float) -> float:
    """A probability to 6 significant digits: small ones keep their precision, events stay short."""
    return float(f"{p:.6g}")


class BadRequest(Exception):
    """A request the studio refuses: answered with its status and {"error": message}."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- a request's settings


def _number(body: dict, name: str, default, kind: type, low, high, none_ok: bool = False):
    """body[name] checked: an int (or, for float, any finite number) in [low, high]."""
    value = body.get(name, default)
    if value is None and none_ok:
        return None
    ok_types = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise BadRequest(f"{name} must be {'a number' if kind is float else 'an integer'}")
    if not low <= value <= high:  # NaN and infinities (which json accepts) fail too
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return kind(value)


def parse_settings(raw: bytes, vocab_size: int) -> dict:
    """A /generate body -> the story's settings, each checked; BadRequest names the first
    problem."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    known = {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "after"}
    if unknown := sorted(set(body) - known):
        raise BadRequest(f"unknown fields {unknown}; known: {sorted(known)}")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    after = body.get("after", [])
    if not isinstance(after, list) or len(after) > MAX_AFTER_TOKENS:
        raise BadRequest(f"after must be a list of at most {MAX_AFTER_TOKENS} token ids")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size for t in after):
        raise BadRequest(f"after must hold token ids from 0 to {vocab_size - 1}")
    top_k = _number(body, "top_k", TOP_K, int, 0, vocab_size, none_ok=True)
    return {
        "prompt": prompt,
        "after": after,
        "max_new_tokens": _number(
            body, "max_new_tokens", MAX_NEW_TOKENS, int, 1, MAX_NEW_TOKENS_LIMIT
        ),
        "temperature": _number(body, "temperature", TEMPERATURE, float, 0.0, MAX_TEMPERATURE),
        "top_k": top_k or None,  # 0 means no limit, as in model_usage.py
        "top_p": _number(body, "top_p", TOP_P, float, 1e-6, 1.0, none_ok=True),
        "seed": _number(body, "seed", None, int, 0, MAX_SEED, none_ok=True),
    }


# ----------------------------------------------------------------------------- the studio


class Studio:
    """The loaded model and what the page needs of it: its facts, and stories as token events."""

    def __init__(self, model, ckpt: dict, enc, checkpoint: str, device: str, dtype: str):
        self.model, self.enc, self.device, self.dtype = model, enc, device, dtype
        self.lock = threading.Lock()  # one story at a time: the model is not shared
        self.waiting = threading.BoundedSemaphore(MAX_WAITING)
        self.last_story: dict = {}  # the last story's ending, for whoever watches (the tests)
        val_loss = ckpt.get("val_loss")
        self.facts = {
            "checkpoint": str(checkpoint),
            "step": ckpt.get("step"),
            "val_loss": round(val_loss, 4) if isinstance(val_loss, float) else None,
            "params": model.num_params(),
            "config": asdict(model.config),
            "data": describe_source(ckpt),
            "device": device,
            "dtype": dtype,
            "defaults": {
                "max_new_tokens": MAX_NEW_TOKENS,
                "temperature": TEMPERATURE,
                "top_k": TOP_K,
                "top_p": TOP_P,
                "seed": None,
            },
            "limits": {
                "max_new_tokens": MAX_NEW_TOKENS_LIMIT,
                "temperature": MAX_TEMPERATURE,
                "top_k": model.config.vocab_size,
                "prompt_chars": MAX_PROMPT_CHARS,
                "after_tokens": MAX_AFTER_TOKENS,
                "body_bytes": MAX_BODY_BYTES,
            },
        }

    def token_text(self, tok: int) -> str:
        """One token on its own, as the alternatives show it (a split character as U+FFFD)."""
        if tok == EOT_ID:
            return EOT_TEXT
        return self.enc.decode_single_token_bytes(tok).decode("utf-8", errors="replace")

    def story_events(self, s: dict, gone=lambda: False):
        """Yield one event dict per new token, then the done event; stops early once gone()."""
        import torch

        start, seed = time.perf_counter(), s["seed"]
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        generator = torch.Generator(device=self.device).manual_seed(seed)
        ids = encode_prompt(self.enc, s["prompt"]) + s["after"]
        # a token's text is what it adds to the story: a character split over several tokens
        # arrives whole with its last byte (the same decoding as model_usage.py's printing)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder.decode(b"".join(self.enc.decode_single_token_bytes(t) for t in s["after"]))
        n, reason = 0, "length"
        with torch.no_grad(), autocast(self.device, self.dtype):
            stream = continue_story(
                self.model,
                ids,
                s["max_new_tokens"],
                s["temperature"],
                s["top_k"],
                s["top_p"],
                generator,
            )
            with contextlib.closing(stream):
                for tok, logits in stream:
                    if gone():
                        reason = "disconnected"
                        break
                    probs = self.model.sampling_probs(
                        logits[None], s["temperature"], s["top_k"], s["top_p"]
                    )[0].float()  # (vocab,) the distribution tok was drawn from
                    top_probs, top_ids = probs.topk(TOP_N)  # (TOP_N,) each
                    n += 1
                    yield {
                        "text": decoder.decode(self.enc.decode_single_token_bytes(tok)),
                        "id": tok,
                        "p": _short(probs[tok].item()),
                        "top": [
                            {"text": self.token_text(i), "id": i, "p": _short(p)}
                            for p, i in zip(top_probs.tolist(), top_ids.tolist(), strict=True)
                        ],
                    }
                else:
                    reason = "end_of_text" if n < s["max_new_tokens"] else "length"
        self.last_story = {"tokens": n, "reason": reason}
        yield {
            "done": True,
            "tokens": n,
            "reason": reason,
            "seed": seed,
            "prompt_tokens": len(ids),
            "seconds": round(time.perf_counter() - start, 3),
        }


# ----------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    """One request; self.server.studio is the Studio. HTTP/1.0: each response ends the
    connection, so an event stream needs no chunked encoding."""

    server_version = "SLMStudio/1"
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, obj: dict, status: int = HTTPStatus.OK) -> None:
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def refuse(self, message: str, status: int) -> None:
        """The error as JSON, then the connection closed gently: what the client still sends is
        read and dropped first, since closing on unread bytes resets the connection and can
        destroy the answer before the client reads it."""
        self.close_connection = True
        self.send_json({"error": message}, status)
        deadline, left = time.monotonic() + DRAIN_TIMEOUT_S, DRAIN_BYTES
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                self.connection.settimeout(wait)
                if not (chunk := self.connection.recv(65536)):
                    break
                left -= len(chunk)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, headers too long, an unknown
        method) as JSON like the rest; an unknown method is 405, not 501."""
        code = HTTPStatus.METHOD_NOT_ALLOWED if code == HTTPStatus.NOT_IMPLEMENTED else code
        self.refuse(message or HTTPStatus(code).phrase, code)

    def foreign_origin(self) -> bool:
        """A page of another site (or a renamed host) asking: the studio serves only itself."""
        origin = self.headers.get("Origin")
        return origin is not None and origin != f"http://{self.headers.get('Host', '')}"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/info":
            self.send_json(self.server.studio.facts)
        elif path in STATIC:
            name, kind = STATIC[path]
            body = (PAGE_DIR / name).read_bytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", "default-src 'self'")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)
        elif path == "/generate":
            self.refuse("use POST for /generate", HTTPStatus.METHOD_NOT_ALLOWED)
        else:
            self.refuse(f"no such page: {path[:100]}", HTTPStatus.NOT_FOUND)

    def do_POST(self):
        try:
            if self.path.split("?", 1)[0] != "/generate":
                raise BadRequest(f"no such endpoint: {self.path[:100]}", HTTPStatus.NOT_FOUND)
            if self.foreign_origin():
                raise BadRequest("requests from other origins are refused", HTTPStatus.FORBIDDEN)
            settings = parse_settings(self.read_body(), self.server.studio.model.config.vocab_size)
        except BadRequest as e:
            return self.refuse(str(e), e.status)
        if not self.server.studio.waiting.acquire(blocking=False):
            return self.refuse("the studio is busy; try again", HTTPStatus.SERVICE_UNAVAILABLE)
        try:
            with self.server.studio.lock:
                self.stream(settings)
        finally:
            self.server.studio.waiting.release()

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("a body with Content-Length is needed", HTTPStatus.LENGTH_REQUIRED)
        if not length.isdigit():
            raise BadRequest("Content-Length must be a number")
        if int(length) > MAX_BODY_BYTES:
            raise BadRequest(
                f"the body is {length} bytes; at most {MAX_BODY_BYTES}",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        try:
            return self.rfile.read(int(length))
        except TimeoutError:
            raise BadRequest("the body did not arrive", HTTPStatus.REQUEST_TIMEOUT) from None

    def client_gone(self) -> bool:
        """The client closed its end: its socket reads as ready with nothing in it."""
        sock = self.connection
        try:
            if not select.select([sock], [], [], 0)[0]:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def stream(self, settings: dict) -> None:
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        events = self.server.studio.story_events(settings, gone=self.client_gone)
        with contextlib.closing(events):
            for event in events:
                try:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                except OSError:  # the client went between two tokens: stop writing its story
                    self.server.studio.last_story = {"reason": "disconnected"}
                    return


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for a story being written
    allow_reuse_address = True

    def __init__(self, address, studio: Studio, verbose: bool = False):
        self.studio, self.verbose = studio, verbose
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)


def make_server(studio: Studio, host: str = "127.0.0.1", port: int = 8000, verbose=False):
    """The bound server (port 0: any free port; server.server_address says which)."""
    return StudioServer((host, port), studio, verbose=verbose)


def serve(studio: Studio, host: str, port: int) -> None:
    """Serve until Ctrl-C, saying where in one line (and warning when others can reach it)."""
    if host not in LOCAL_HOSTS:
        print(
            f"warning: --host {host} lets other machines on the network use this studio and its "
            "CPU/GPU; it has no login",
            file=sys.stderr,
        )
    try:
        server = make_server(studio, host, port, verbose=True)
    except OSError as e:
        raise CLIError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    shown = f"[{host}]" if ":" in host else host
    print(f"story studio at http://{shown}:{server.server_address[1]}/  (Ctrl-C stops it)")
    sys.stdout.flush()
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("\nstudio stopped")
