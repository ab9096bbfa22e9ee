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

Requests run in engine processes (:mod:`pipeline.serve_workers`): on CPU one single-threaded process per core,
the pipeline's layout, fed by a batcher that splits each burst over the free processes and batches what arrives
while they are busy (up to ``max_batch`` a call, a burst ends at a 20 ms gap), so the HTTP path keeps the
engine's batching. Ray Serve's ``@serve.batch`` does the same inside a Ray Serve deployment; one machine needs
neither its proxy and controller nor a Ray cluster.

One client cannot hurt the others: a request whose prompt plus ``max_tokens`` exceeds the model's context gets
vLLM's 400 ("This model's maximum context length is N tokens. ...") before it is batched, as do sampling values
the engine cannot run; a batch whose engine call fails is run again in halves, so only the request that fails
alone gets a 500 (with the engine's error) and the others their answers.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import os
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

from pipeline.errors import ConfigError
from pipeline.records import Completion, GenerationRequest, Sampling
from pipeline.serve_workers import Batcher, EngineProcess, Failed, start_engines

API_KEY_ENV = "CONTRASTGEN_API_KEY"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: a chat request of a few thousand tokens is a few tens of KiB

UNSUPPORTED = (
    "structured_outputs",
    "guided_choice",
    "guided_json",
    "guided_regex",
    "guided_grammar",
    "tools",
    "logprobs",
)


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
    given = body.model_extra or {}
    extra = sorted(k for k in given if k in UNSUPPORTED and given[k])
    if extra:
        raise HTTPException(
            400, f"unsupported field(s) {extra}: the embedded engine has no structured outputs; parse the text"
        )
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise HTTPException(
            400, "unsupported field response_format: expected type 'text' (no JSON mode in the embedded engine)"
        )
    if body.stream:
        raise HTTPException(400, "unsupported field stream: expected false")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(s != "\n" for s in stops):
        raise HTTPException(400, f"unsupported field stop={stops!r}: expected none or ['\\n']")
    if not body.messages or not 1 <= body.n <= 16:
        raise HTTPException(400, "expected at least one message and 1 <= n <= 16")
    seed = body.seed if body.seed is not None else secrets.randbits(31)
    max_tokens = next((m for m in (body.max_completion_tokens, body.max_tokens) if m is not None), default_max_tokens)
    _check_sampling(body, max_tokens, seed)
    sampling = Sampling(body.temperature, body.top_p, max_tokens, body.n, seed, stop_at_newline=bool(stops))
    return GenerationRequest(uuid.uuid4().hex, tuple((m.role, m.content) for m in body.messages), sampling)


def _check_sampling(body: ChatRequest, max_tokens: int, seed: int) -> None:
    """A 400 for sampling values the engine cannot run (vLLM refuses the same ones)."""
    if max_tokens < 1:
        raise HTTPException(400, f"max_tokens must be at least 1, got {max_tokens}.")
    if not (math.isfinite(body.temperature) and body.temperature >= 0):
        raise HTTPException(400, f"temperature must be a non-negative number, got {body.temperature}.")
    if not 0 < body.top_p <= 1:
        raise HTTPException(400, f"top_p must be in (0, 1], got {body.top_p}.")
    if not -(2**63) <= seed <= 2**63 - 1 - body.n:  # sample i draws with seed + i, a 64-bit generator seed
        raise HTTPException(400, f"seed must be a 64-bit integer (at most 2**63 - 1 - n), got {seed}.")


class ContextLimit:
    """The model's context length, and its tokenizer to count a request's prompt as the engine renders it.

    A request whose prompt plus ``max_tokens`` exceeds the context gets vLLM's 400 before it reaches a batch:
    the engine would otherwise reserve its cache for that many tokens (``max_tokens: 100000000`` tried to
    allocate 76.8 GB and failed its whole batch; issue 31)."""

    def __init__(self, folder: Path):
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        max_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if not max_len:
            raise ConfigError(
                f"serve: expected the model config in {folder} to give its context length "
                "(max_position_embeddings), found none. Fix: serve a model whose config.json has it"
            )
        self.max_len: int = max_len

    def prompt_tokens(self, req: GenerationRequest) -> int:
        msgs = [{"role": r, "content": c} for r, c in req.messages]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def check(self, req: GenerationRequest) -> None:
        prompt, completion = self.prompt_tokens(req), req.sampling.max_tokens
        if prompt + completion > self.max_len:
            raise HTTPException(
                400,
                f"This model's maximum context length is {self.max_len} tokens. However, you "
                f"requested {prompt + completion} tokens ({prompt} in the messages, {completion} in "
                "the completion). Please reduce the length of the messages or completion.",
            )


def to_response(c: Completion, model: str) -> dict:
    choices = []
    for i, (text, reason) in enumerate(zip(c.texts, c.finish_reasons, strict=True)):
        newline = reason == "newline"
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": text.split("\n")[0] if newline else text},
                "finish_reason": "length" if reason == "length" else "stop",
                "stop_reason": "\n" if newline else None,
            }
        )
    usage = {
        "prompt_tokens": c.tokens_in,
        "completion_tokens": c.tokens_out,
        "total_tokens": c.tokens_in + c.tokens_out,
    }
    return {
        "id": f"chatcmpl-{c.key}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


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
                return await _reply(
                    send,
                    401,
                    "missing or wrong API key: expected the header 'Authorization: Bearer "
                    "<key>' with the key the server was started with (--api-key / $" + API_KEY_ENV + ")",
                )
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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
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
        raise ConfigError(
            f"serve --host {host}: expected an API key to serve beyond this machine, got none. Fix: "
            f"--api-key KEY or ${API_KEY_ENV}=KEY (clients send it as $OPENAI_API_KEY), or bind 127.0.0.1"
        )


def build_app(
    engines: list[EngineProcess],
    context: ContextLimit,
    model_id: str,
    min_share: int,
    max_batch: int = 256,
    default_max_tokens: int = 256,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API over loaded engine processes (:mod:`pipeline.serve_workers`); ``min_share``: the requests a free
    process takes at least from a backlog (an engine batch)."""
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["batcher"] = batcher = Batcher(engines, max_batch, min_share)
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.close()

    app = FastAPI(title="contrastgen serve", lifespan=lifespan)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "owned_by": "contrastgen", "max_model_len": context.max_len}],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict:
        if body.model not in (None, model_id):
            raise HTTPException(404, f"model {body.model!r} not served: expected {model_id!r}")
        req = to_request(body, default_max_tokens)
        context.check(req)  # before batching: a request past the context never reaches an engine
        out = await state["batcher"].submit(req)
        if isinstance(out, Failed):
            raise HTTPException(
                500,
                f"the engine failed on this request, run alone after its batch failed: {out.error}. "
                "The requests batched with it were answered. Fix: see the server log; if this request "
                "fails again, change it (its messages or sampling)",
            )
        return to_response(out, model_id)

    return app


def api_key(flag: str | None) -> str | None:
    """The key: the flag, else $CONTRASTGEN_API_KEY, else none."""
    return flag or os.environ.get(API_KEY_ENV) or None


def serve(cfg, host: str, port: int, key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Start the engine processes (``ray.workers``, ``--workers``; default: the pipeline's, one single-threaded
    process per core up to 8 on CPU, one on CUDA), then serve until interrupted (the exposure check comes first)."""
    import uvicorn

    from pipeline.engines.embedded import transformers_folder

    check_exposure(host, key)
    engine = cfg.engine.model_copy(update={"kind": "embedded"})  # what serve serves, whatever kind the file names
    cpus = os.cpu_count() or 1
    workers = cfg.ray.engine_workers(engine, cpus)
    threads = engine.threads or max(1, cpus // workers)
    context = ContextLimit(
        transformers_folder(engine.resolved_model_path())
    )  # a GGUF dequantized once, before the processes
    engines = start_engines(
        engine.model_copy(update={"threads": threads}).model_dump_json(),
        workers,
        threads,
        engine.start_timeout_s,
        engine.call_timeout_s,
    )
    print(
        f"contrastgen serve: {workers} engine process(es) (pids {', '.join(str(e.pid) for e in engines)}), {threads} "
        f"torch thread(s) each; context {context.max_len} tokens",
        flush=True,
    )
    try:
        uvicorn.run(
            build_app(
                engines, context, engine.model_id(), engine.batch_size, api_key=key, max_body_bytes=max_body_bytes
            ),
            host=host,
            port=port,
            log_level="warning",
        )
    finally:
        for e in engines:
            e.closed = True
            e.stop()
