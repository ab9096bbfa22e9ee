"""LOAD GENERATOR (benchmarks only; not an engine).

A loopback OpenAI-compatible server that answers every chat completion at once (no model, no sleep) with a
valid answer for the negatives kind, so ``bench/scale.py`` can drive the real pipeline end to end
(``contrastgen generate negatives --engine openai --base-url ...``) at 10k-1M units and measure everything but
the LLM. It is never an engine users can pick: nothing in ``pipeline/`` knows it, and it makes no text worth
training on.

    python bench/loadserver.py --port 8011 [--host 127.0.0.1] [--invalid-rate 0.1]

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``n``, ``seed``, ``max_tokens`` /
``max_completion_tokens``, ``stop``, structured outputs: vLLM's ``structured_outputs: {choice | json}``, the
older ``guided_choice`` / ``guided_json``, ``response_format: json_schema | json_object``), and
``GET /bench/stats`` (request counts and the wall times of the first and last request, for the benchmark's
stage windows). Streaming, regex and grammar constraints get a 400 naming the field.

How an answer is made: the system message names the task (it is matched against the system texts of
``prompts/negatives/*.yaml``: ``systems.edit`` means edit mode, ``systems.rewrite`` or a lone ``system`` rewrite
mode), the last user message holds the caption (the template's user text with the ``{caption}`` slot inverted), and
each sample is an edit of the kind the task asks for (``A <-> B`` swaps, ``OLD -> NEW`` replaces and adds,
the whole sentence in rewrite mode), chosen deterministically from (caption, task, seed, sample index) and preferring
words of the synthetic captions' lexicon (:data:`LEXICON`) by their part of speech. Every answer is checked
with the pipeline's own parser and structural check (:func:`pipeline.text.edits.parse_answer`,
:func:`pipeline.text.structure.check_shapes`) before it is sent, so any caption (COCO's too) gets an answer
the pipeline accepts. ``--invalid-rate`` makes that fraction of units (by hash) answer only invalid samples
(chatter, a refusal, an empty text, a span not in the caption, a second line, a text cut at max_tokens) so the
rejection path is exercised at scale. Requests that match no template (the engine's structured-outputs probe
and warm-up) get a short answer, or the first allowed choice.

Usage counts are estimates (words x 1.3); ``finish_reason`` is ``stop`` (``length`` for a text cut at
``max_tokens``; a text cut at a ``"\\n"`` stop reports ``stop_reason: "\\n"`` as vLLM does).

The server is a bare ASGI app under uvicorn (one event loop, orjson): no framework validation per request,
because the openai engine sends hundreds of requests at once and the load generator must not be what a
benchmark measures. ``bench/scale.py`` reports its CPU seconds beside the pipeline's.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.text.edits import Candidate, apply_replace, apply_swap, parse_answer
from pipeline.text.structure import check_shapes
from pipeline.text.templates import SLOT, Template, load_template

LABEL = "LOAD GENERATOR (benchmarks only; not an engine)"
DEFAULT_MODEL = "contrastgen-loadgen"
PROMPTS = REPO / "prompts" / "negatives"

# The synthetic captions' words by part of speech (bench/scale.py builds its captions from these lists).
LEXICON: dict[str, tuple[str, ...]] = {
    "colour": (
        "red",
        "blue",
        "green",
        "yellow",
        "black",
        "white",
        "brown",
        "orange",
        "purple",
        "grey",
        "pink",
        "golden",
        "silver",
        "dark",
        "pale",
    ),
    "quality": (
        "small",
        "large",
        "tiny",
        "huge",
        "wooden",
        "metal",
        "plastic",
        "shiny",
        "tall",
        "short",
        "round",
        "striped",
        "heavy",
        "soft",
        "dusty",
    ),
    "agent": (
        "dog",
        "cat",
        "man",
        "woman",
        "child",
        "horse",
        "bird",
        "girl",
        "boy",
        "cow",
        "sheep",
        "chef",
        "farmer",
        "surfer",
        "skier",
        "rider",
        "player",
        "dancer",
        "monkey",
        "goat",
    ),
    "object": (
        "ball",
        "kite",
        "umbrella",
        "bicycle",
        "ladder",
        "basket",
        "bottle",
        "chair",
        "table",
        "book",
        "phone",
        "hat",
        "bag",
        "box",
        "plate",
        "lamp",
        "skateboard",
        "frisbee",
        "suitcase",
        "guitar",
    ),
    "verb": (
        "holds",
        "carries",
        "chases",
        "watches",
        "pushes",
        "pulls",
        "drops",
        "lifts",
        "throws",
        "paints",
        "grabs",
        "follows",
        "kicks",
        "touches",
        "rides",
    ),
    "prep": (
        "near",
        "beside",
        "behind",
        "under",
        "above",
        "across",
        "along",
        "inside",
        "outside",
        "toward",
        "past",
        "around",
    ),
    "place": (
        "river",
        "park",
        "beach",
        "kitchen",
        "street",
        "garden",
        "station",
        "fence",
        "bridge",
        "market",
        "lake",
        "field",
        "forest",
        "harbor",
        "stadium",
    ),
    "time": ("at night", "in the morning", "during the day", "after the rain", "before sunset", "in the snow"),
}
POS: dict[str, str] = {w: pos for pos, ws in LEXICON.items() if pos != "time" for w in ws}
NOUNS, ADJECTIVES, RELATIONS = ("agent", "object", "place"), ("colour", "quality"), ("verb", "prep")
STOP = frozenset(
    (
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "at",
        "with",
        "while",
        "is",
        "are",
        "its",
        "his",
        "her",
        "their",
        "this",
        "that",
    )
)
_TOKEN = re.compile(r"[A-Za-z]+")

# Each task's structural shape, as pipeline.kinds.negatives.SHAPES.
SHAPE = {
    "reshuffle_order": "permutation",
    "swap_obj": "permutation",
    "swap_att": "permutation",
    "replace_att": "replace_span",
    "replace_obj": "replace_span",
    "replace_rel": "replace_span",
    "add_obj": "insertion",
    "add_att": "insertion",
    "paraphrase": "paraphrase",
}
INVALID = (
    "Sure! Here is the new caption:",
    "",
    "I'm sorry, I cannot help with that.",
    "qqzx -> vvjk",
    "{caption}\nand another line",
    "LONG",
)


def load_task_index(folder: Path = PROMPTS) -> dict[str, tuple[Template, str]]:
    """System text (stripped, as the pipeline renders it) -> (template, mode)."""
    index: dict[str, tuple[Template, str]] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        # as pipeline.kinds.negatives loads them (not imported here: it pulls pyarrow and spaCy in)
        tpl = load_template(
            path, ("caption",), task=path.stem, modes=("edit", "rewrite"), edit_formats=("swap", "replace", "rewrite")
        )
        index[tpl.system_for("rewrite").strip()] = (tpl, "rewrite")
        if tpl.edit_format != "rewrite":
            index[tpl.system_for("edit").strip()] = (tpl, "edit")
    return index


def _rng(*parts) -> random.Random:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _words(caption: str) -> list[str]:
    """Distinct lower-case words of the caption, in order."""
    return list(dict.fromkeys(w.lower() for w in _TOKEN.findall(caption)))


def _of(words: list[str], groups: tuple[str, ...]) -> list[str]:
    return [w for w in words if POS.get(w) in groups]


def _content(words: list[str]) -> list[str]:
    return [w for w in words if w not in STOP and len(w) > 2]


def _other(word: str, rng: random.Random, words: list[str], pool: tuple[str, ...] | None = None) -> str:
    """A word of ``word``'s part of speech (or of ``pool``) that is not in the caption."""
    choices = [w for w in (pool or LEXICON.get(POS.get(word, ""), LEXICON["colour"])) if w not in words and w != word]
    return rng.choice(choices or ["violet"])


def _pick_two(rng: random.Random, first: list[str], *fallbacks: list[str]) -> tuple[str, str] | None:
    """Two distinct words of ``first``, else of ``first`` plus the first fallback that makes two, and so on."""
    pool = first
    for more in fallbacks:
        if len(pool) >= 2:
            break
        pool = list(dict.fromkeys(first + more))
    return tuple(rng.sample(pool, 2)) if len(pool) >= 2 else None  # type: ignore[return-value]


def _edit(task: str, caption: str, rng: random.Random) -> str | None:
    """One edit answer (``A <-> B`` or ``OLD -> NEW``) of the task's kind, or None when the caption has no room."""
    words = _words(caption)
    content = _content(words)
    if task == "swap_obj":
        pair = _pick_two(rng, _of(words, NOUNS), content)
    elif task == "swap_att":
        pair = _pick_two(
            rng,
            _of(words, ADJECTIVES),
            _of(words, RELATIONS),  # nouns last: they are swap_obj's
            [w for w in content if POS.get(w) not in NOUNS],
            content,
        )
    elif task == "reshuffle_order":  # two phrases exchange places: the verb phrase and a prepositional phrase
        toks = caption.rstrip(".").split()
        low = [t.lower() for t in toks]
        verbs = [i for i, w in enumerate(low) if POS.get(w) == "verb"]
        preps = [i for i, w in enumerate(low) if POS.get(w) == "prep" and i + 2 < len(low) and low[i + 1] == "the"]
        phrases = [(" ".join(toks[v:p]), " ".join(toks[p : p + 3])) for v in verbs for p in preps if v + 1 < p]
        if phrases:
            pair = rng.choice(phrases)
        else:  # any two non-overlapping two-word spans that start with a content word (not an article)
            spans = [(i, " ".join(toks[i : i + 2])) for i in range(len(toks) - 1) if low[i] not in STOP]
            pairs = [(a, b) for i, a in spans for j, b in spans if j >= i + 2 and a.lower() != b.lower()]
            pair = rng.choice(pairs) if pairs else _pick_two(rng, content)
    else:
        pair = None
    if task in ("swap_obj", "swap_att", "reshuffle_order"):
        return f"{pair[0]} <-> {pair[1]}" if pair else None
    groups = {
        "replace_att": ADJECTIVES,
        "replace_obj": NOUNS,
        "replace_rel": RELATIONS,
        "add_obj": NOUNS,
        "add_att": NOUNS,
    }.get(task)
    if groups is None:
        return None
    targets = _of(words, groups) or content
    if not targets:
        return None
    old = rng.choice(targets)
    if task == "add_obj":
        return f"{old} -> {old} and a {_other(old, rng, words, LEXICON['object'])}"
    if task == "add_att":
        return f"{old} -> {_other(old, rng, words, LEXICON[rng.choice(ADJECTIVES)])} {old}"
    pool = (
        None if old in POS else LEXICON[{"replace_att": "colour", "replace_obj": "object", "replace_rel": "prep"}[task]]
    )
    return f"{old} -> {_other(old, rng, words, pool)}"


def _paraphrase(caption: str, rng: random.Random) -> str:
    """Same words in another order, or a framing phrase around them."""
    body = caption.strip().rstrip(".")
    toks = body.split()
    preps = [i for i, w in enumerate(toks) if POS.get(w.lower()) == "prep" and 1 < i < len(toks) - 1]
    lower = body[:1].lower() + body[1:]
    frames = [f"In this picture, {lower}.", f"In the photo, {lower}.", f"{body}, as the image shows."]
    if preps and rng.random() < 0.6:
        i = rng.choice(preps)
        head, tail = " ".join(toks[i:]), " ".join(toks[:i])
        return f"{head[:1].upper()}{head[1:]}, {tail[:1].lower()}{tail[1:]}."
    return rng.choice(frames)


def _valid(caption: str, text: str, fmt: str, shape: str) -> bool:
    """What pipeline.kinds.negatives.parse_unit accepts: parsed, not a copy, not too long, the task's shape."""
    cand = parse_answer(caption, text, fmt, "stop")
    return (
        isinstance(cand, Candidate)
        and cand.text.strip().lower() != caption.strip().lower()
        and len(cand.text) <= 3 * len(caption) + 40
        and check_shapes(shape, [caption], [cand.text])[0]
    )


def answer(tpl: Template, mode: str, caption: str, seed: int, index: int, invalid_rate: float = 0.0) -> str:
    """Sample ``index`` of a unit: a valid answer for (task, mode), deterministic in (caption, task, seed, index)."""
    task = tpl.task
    if invalid_rate and _rng("invalid", caption, task).random() < invalid_rate:
        bad = INVALID[(index + int(_rng("why", caption, task).random() * len(INVALID))) % len(INVALID)]
        return bad.replace("{caption}", caption)
    fmt = "rewrite" if (mode == "rewrite" or tpl.edit_format == "rewrite") else tpl.edit_format
    shape = SHAPE.get(task, "paraphrase")
    for attempt in range(6):
        rng = _rng(caption, task, seed, index, attempt)
        if task == "paraphrase" or shape == "paraphrase":
            text = _paraphrase(caption, rng)
        else:
            edit = _edit(task, caption, rng)
            if edit is None:
                break
            text = edit if fmt != "rewrite" else _apply(caption, edit, tpl.edit_format)
        if text and _valid(caption, text, fmt, shape):
            return text
    return "In this picture, " + caption.strip()  # nothing valid fits this caption: the pipeline rejects it


def _apply(caption: str, edit: str, edit_format: str) -> str:
    sep = "<->" if edit_format == "swap" else "->"
    a, b = (x.strip() for x in edit.split(sep, 1))
    out = apply_swap(caption, a, b) if edit_format == "swap" else apply_replace(caption, a, b)
    return out if isinstance(out, str) else ""


def _tokens(text: str) -> int:
    return math.ceil(len(text.split()) * 1.3)


def _example(schema: dict):
    """A minimal instance of a JSON schema (for response_format / guided_json requests)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        return {k: _example(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_example(schema.get("items") or {}) for _ in range(schema.get("minItems", 0))]
    return {
        "string": "x",
        "integer": schema.get("minimum", 0),
        "number": schema.get("minimum", 0.0),
        "boolean": True,
        "null": None,
    }.get(kind, "x")


class BadRequest(Exception):
    pass


class LoadServer:
    """The request -> response logic (no I/O), and the counters ``/bench/stats`` reports."""

    def __init__(self, prompts: Path = PROMPTS, invalid_rate: float = 0.0, model: str = DEFAULT_MODEL):
        self.index = load_task_index(prompts)
        self.users = {tpl.task: tpl.user.split(SLOT, 1) for tpl, _ in self.index.values()}
        self.invalid_rate, self.model = invalid_rate, model
        self.stats = {
            "label": LABEL,
            "requests": 0,
            "task_requests": 0,
            "other_requests": 0,
            "errors": 0,
            "samples": 0,
            "by_task": {},
            "first_request": None,
            "first_task_request": None,
            "last_task_request": None,
            "last_response": None,
            "pid": os.getpid(),
        }

    def chat(self, body: dict) -> dict:
        now = time.time()
        st = self.stats
        st["requests"] += 1
        st["first_request"] = st["first_request"] or now
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequest("expected 'messages': a non-empty list of {role, content}")
        if body.get("stream"):
            raise BadRequest("unsupported field stream: the load generator answers whole completions only")
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise BadRequest(f"expected 1 <= n <= 128, got {n!r}")
        seed = body.get("seed") or 0
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        choices, schema = self._constraints(body)
        system = next((m.get("content") or "" for m in msgs if m.get("role") == "system"), "")
        hit = self.index.get(system.strip())
        prompt_words = sum(len(str(m.get("content") or "").split()) for m in msgs)
        if hit and not choices and schema is None:
            tpl, mode = hit
            caption = self._caption(tpl, msgs)
            texts = [answer(tpl, mode, caption, seed, i, self.invalid_rate) for i in range(n)]
            st["task_requests"] += 1
            st["by_task"][tpl.task] = st["by_task"].get(tpl.task, 0) + 1
            st["first_task_request"] = st["first_task_request"] or now
            st["last_task_request"] = now
        else:
            st["other_requests"] += 1
            if choices:
                texts = [choices[(seed + i) % len(choices)] for i in range(n)]
            elif schema is not None:
                texts = [orjson.dumps(_example(schema)).decode() for _ in range(n)]
            else:
                texts = ["Yes." for _ in range(n)]
        out, completion = [], 0
        for i, text in enumerate(texts):
            finish, stop_reason = "stop", None
            if text == "LONG":
                text, finish = " ".join(["word"] * (max_tokens + 5)), "length"
            if "\n" in text and "\n" in stops:
                text, stop_reason = text.split("\n", 1)[0], "\n"
            words = text.split()
            if _tokens(text) > max_tokens:  # a real server stops at max_tokens
                text, finish, stop_reason = " ".join(words[: max(1, int(max_tokens / 1.3))]), "length", None
            completion += _tokens(text)
            out.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                }
            )
        st["samples"] += n
        prompt = math.ceil(prompt_words * 1.3)
        st["last_response"] = time.time()
        return {
            "id": f"chatcmpl-load-{st['requests']}",
            "object": "chat.completion",
            "created": int(now),
            "model": body.get("model") or self.model,
            "choices": out,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    def _caption(self, tpl: Template, msgs: list[dict]) -> str:
        user = next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")
        before, after = self.users[tpl.task]
        if user.startswith(before) and user.endswith(after) and len(user) >= len(before) + len(after):
            return user[len(before) : len(user) - len(after)]
        return user

    @staticmethod
    def _constraints(body: dict) -> tuple[list[str] | None, dict | None]:
        """(allowed choices, JSON schema) from vLLM's structured_outputs, the older guided_* and response_format."""
        so = body.get("structured_outputs") or {}
        for field in ("regex", "grammar", "structural_tag"):
            if so.get(field) or body.get(f"guided_{field}"):
                raise BadRequest(
                    f"unsupported field structured_outputs.{field}: the load generator honours choice and json only"
                )
        choices = so.get("choice") or body.get("guided_choice")
        schema = so.get("json") or body.get("guided_json")
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {}
        elif rf.get("type") == "json_object":
            schema = {"type": "object"}
        if isinstance(schema, str):
            schema = orjson.loads(schema)
        return ([str(c) for c in choices] if choices else None), schema

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "owned_by": "contrastgen-loadgen", "created": 0}],
        }


def build_app(server: LoadServer):
    """A bare ASGI app: routes, JSON in and out, 400/404 as OpenAI-style error objects."""

    async def send_json(send, status: int, payload) -> None:
        data = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        path, method = scope["path"].rstrip("/"), scope["method"]
        try:
            if method == "POST" and path == "/v1/chat/completions":
                try:
                    body = orjson.loads(b"".join(chunks))
                except orjson.JSONDecodeError as exc:
                    raise BadRequest(f"expected a JSON body: {exc}") from None
                if not isinstance(body, dict):
                    raise BadRequest("expected a JSON object")
                return await send_json(send, 200, server.chat(body))
            if method == "GET" and path == "/v1/models":
                return await send_json(send, 200, server.models())
            if method == "GET" and path == "/bench/stats":
                return await send_json(send, 200, server.stats)
            return await send_json(
                send,
                404,
                {
                    "error": {
                        "message": f"{method} {path}: not served ({LABEL})",
                        "type": "not_found_error",
                        "code": 404,
                    }
                },
            )
        except BadRequest as exc:
            server.stats["errors"] += 1
            return await send_json(
                send, 400, {"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": 400}}
            )

    return app


def serve(host: str = "127.0.0.1", port: int = 8011, invalid_rate: float = 0.0, prompts: Path = PROMPTS) -> None:
    import uvicorn

    print(f"{LABEL}: http://{host}:{port}/v1 (invalid rate {invalid_rate:g})", flush=True)
    uvicorn.run(
        build_app(LoadServer(prompts, invalid_rate)),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=60,
        lifespan="on",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_in_subprocess(
    port: int | None = None, invalid_rate: float = 0.0, log: Path | None = None, timeout_s: float = 60.0
) -> tuple[subprocess.Popen, str]:
    """Start the load generator in a child process on 127.0.0.1 and wait until it answers; (process, base URL)."""
    port = port or free_port()
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--invalid-rate", str(invalid_rate)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url, deadline = f"http://127.0.0.1:{port}/v1", time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"the load generator did not answer on {url} within {timeout_s:g} s"
                    + (f"; see {log}" if log else "")
                ) from None
            time.sleep(0.2)


def stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/bench/stats", timeout=10) as r:
        return orjson.loads(r.read())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=LABEL + ": an OpenAI-compatible server that answers the negatives "
        "kind's requests at once with valid outputs"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument(
        "--invalid-rate",
        type=float,
        default=0.0,
        help="fraction of units (by hash) whose samples are all invalid (default 0)",
    )
    ap.add_argument(
        "--prompts", type=Path, default=PROMPTS, help="negatives templates folder (default prompts/negatives)"
    )
    a = ap.parse_args(argv)
    serve(a.host, a.port, a.invalid_rate, a.prompts)


if __name__ == "__main__":
    main()
