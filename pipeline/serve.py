"""``contrastgen serve``: the embedded engine behind an OpenAI-compatible API on 127.0.0.1.

Several flows (or machines' drivers) then share one loaded model through the ``openai`` engine, and
that engine is tested against a real server. Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``
(``n``, ``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``seed``, ``stop: ["\\n"]``).
A newline stop is reported as vLLM does (``finish_reason: stop``, ``stop_reason: "\\n"``). Fields this
engine cannot honour (structured outputs, other stop strings, streaming) get a 400 naming the field.

Access, as ``vllm serve``: with an API key (``--api-key`` or ``$CONTRASTGEN_API_KEY``) every ``/v1`` request
must carry ``Authorization: Bearer <key>`` (401 otherwise; the ``openai`` engine sends the key from
``$OPENAI_API_KEY``, or the variable ``engine.openai.api_key_env`` names); ``GET /health`` stays open. Binding to
a host other than loopback without a key is refused. A request body over ``max_body_bytes`` gets a 413 before
it is parsed.

Concurrent requests are batched: a collector takes every request that arrived while the engine was busy
(up to ``max_batch``, a burst ends at a 20 ms gap) and runs them as one :meth:`EmbeddedEngine.generate`
call, so the HTTP path keeps the in-process engine's batching (``bench/engines.py`` measures the overhead). Ray Serve's ``@serve.batch``
does the same inside a Ray Serve deployment; a single local process does not need its proxy and controller.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

from pipeline.errors import ConfigError
from pipeline.records import Completion, GenerationRequest, Sampling

API_KEY_ENV = "CONTRASTGEN_API_KEY"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: a chat request of a few thousand tokens is a few tens of KiB

UNSUPPORTED = ("structured_outputs", "guided_choice", "guided_json", "guided_regex", "guided_grammar", "tools", "logprobs")


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send more than we use; unsupported ones are refused below

    model: str | None = None
    messages: list[Message]
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    response_format: dict[str, Any] | None = None


def to_request(body: ChatRequest, default_max_tokens: int) -> GenerationRequest:
    """Map a chat request onto ours, or raise a 400 that names the field and the fix."""
    extra = sorted(k for k in (body.model_extra or {}) if k in UNSUPPORTED and body.model_extra[k])
    if extra:
        raise HTTPException(400, f"unsupported field(s) {extra}: the embedded engine has no structured outputs; parse the text")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise HTTPException(400, "unsupported field response_format: expected type 'text' (no JSON mode in the embedded engine)")
    if body.stream:
        raise HTTPException(400, "unsupported field stream: expected false")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(s != "\n" for s in stops):
        raise HTTPException(400, f"unsupported field stop={stops!r}: expected none or ['\\n']")
    if not body.messages or not 1 <= body.n <= 16:
        raise HTTPException(400, "expected at least one message and 1 <= n <= 16")
    seed = body.seed if body.seed is not None else secrets.randbits(31)
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    sampling = Sampling(body.temperature, body.top_p, max_tokens, body.n, seed, stop_at_newline=bool(stops))
    return GenerationRequest(uuid.uuid4().hex, tuple((m.role, m.content) for m in body.messages), sampling)


def to_response(c: Completion, model: str) -> dict:
    choices = []
    for i, (text, reason) in enumerate(zip(c.texts, c.finish_reasons, strict=True)):
        newline = reason == "newline"
        choices.append({
            "index": i, "message": {"role": "assistant", "content": text.split("\n")[0] if newline else text},
            "finish_reason": "length" if reason == "length" else "stop", "stop_reason": "\n" if newline else None,
        })
    usage = {"prompt_tokens": c.tokens_in, "completion_tokens": c.tokens_out, "total_tokens": c.tokens_in + c.tokens_out}
    return {"id": f"chatcmpl-{c.key}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage}


class Batcher:
    """Collects concurrent requests and runs each collection as one engine call, one call at a time."""

    def __init__(self, engine, max_batch: int, wait_s: float = 0.02):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.queue: asyncio.Queue = asyncio.Queue()

    async def submit(self, req: GenerationRequest) -> Completion:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((req, fut))
        return await fut

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            # Requests of one client burst arrive a few ms apart: keep collecting until a gap of wait_s.
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), self.wait_s))
                except asyncio.TimeoutError:
                    break
            batch = [(r, f) for r, f in batch if not f.cancelled()]  # a client that gave up
            try:
                # On the event loop's own thread, on purpose: measured ~9% faster than a worker thread on 2
                # cores (bench/engines.py). Requests that arrive meanwhile wait in the socket backlog and
                # form the next batch; the loop answers nothing else while a batch runs.
                outs = self.engine.generate([r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request learns why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), out in zip(batch, outs, strict=True):
                if not fut.done():
                    fut.set_result(out)


class Guard:
    """ASGI middleware: the bearer key on every ``/v1`` request (constant-time compare) and a body size cap
    counted on the bytes received, so a body without Content-Length is capped too."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.key, self.max_body = app, (api_key or "").encode(), max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.key and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(auth, b"Bearer " + self.key):
                await _drain(receive)
                return await _reply(send, 401, "missing or wrong API key: expected the header 'Authorization: Bearer "
                                    "<key>' with the key the server was started with (--api-key / $" + API_KEY_ENV + ")")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _drain(receive)
            return await _reply(send, 413, f"request body of {int(declared)} bytes: expected at most {self.max_body}")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _drain(receive)
            await _reply(send, 413, f"request body over {self.max_body} bytes: expected at most {self.max_body}")


class _TooLarge(Exception):
    pass


DRAIN_BYTES = 64 << 20  # of a refused body, read and discard at most this much before answering


async def _drain(receive) -> None:
    """Read and discard the rest of a refused request's body (up to ``DRAIN_BYTES``, a chunk at a time), so the
    client finishes sending and reads the answer: a server that answers and closes with unread bytes resets the
    connection, and the client sees a broken pipe instead of the 401/413."""
    seen = 0
    while seen <= DRAIN_BYTES:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key (vLLM serves open by default; we do not)."""
    if api_key:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"serve --host {host}: expected an API key to serve beyond this machine, got none. Fix: "
                          f"--api-key KEY or ${API_KEY_ENV}=KEY (clients send it as $OPENAI_API_KEY), or bind 127.0.0.1")


def build_app(engine, max_batch: int = 256, default_max_tokens: int = 256, api_key: str | None = None,
              max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["batcher"] = Batcher(engine, max_batch)
        task = asyncio.create_task(state["batcher"].run())
        yield
        task.cancel()

    app = FastAPI(title="contrastgen serve", lifespan=lifespan)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "owned_by": "contrastgen"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict:
        if body.model not in (None, engine.model_id):
            raise HTTPException(404, f"model {body.model!r} not served: expected {engine.model_id!r}")
        out = await state["batcher"].submit(to_request(body, default_max_tokens))
        return to_response(out, engine.model_id)

    return app


def api_key(flag: str | None) -> str | None:
    """The key: the flag, else $CONTRASTGEN_API_KEY, else none."""
    return flag or os.environ.get(API_KEY_ENV) or None


def serve(cfg, host: str, port: int, key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Load the embedded engine once and serve it until interrupted (the exposure check comes first)."""
    import uvicorn

    from pipeline.engines.embedded import EmbeddedEngine

    check_exposure(host, key)
    engine = EmbeddedEngine(cfg.engine)
    engine.warmup()
    uvicorn.run(build_app(engine, api_key=key, max_body_bytes=max_body_bytes), host=host, port=port, log_level="warning")
