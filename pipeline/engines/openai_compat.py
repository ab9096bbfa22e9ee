"""The ``openai`` engine: any OpenAI-compatible chat completions server (vllm serve, llama.cpp server,
SGLang, ``contrastgen serve``).

Requests go out concurrently from one event loop (bounded by ``engine.openai.concurrency``) through the
official ``openai`` client, whose retries (``max_retries``: exponential backoff with jitter, honouring
``Retry-After``) cover 429, 5xx, timeouts and dropped connections. What fails after those retries is
raised as :class:`TransientEngineError` (the Prefect task may retry the part later) or
:class:`EngineError` (a 4xx or a malformed answer: retrying will not help). The API key comes from the
environment variable named by ``engine.openai.api_key_env`` only.

Structured outputs: at start the engine asks the server for a one-of-two choice in vLLM's
``structured_outputs`` request field; only a server that honours it gets them later (the pairs judge's
0-5 score). Every task parses strictly either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
import time

import openai
from openai.types.chat import ChatCompletion

from pipeline.engines.config import EngineConfig
from pipeline.engines.finish import finish_reason, sampling_args
from pipeline.errors import EngineError, EngineTimeoutError, TransientEngineError
from pipeline.records import Completion, GenerationRequest, Sampling

PROBE_CHOICES = ("qz-7", "vk-3")  # the structured-outputs probe's allowed answers (see OpenAIEngine.warmup)


def request_body(s: Sampling, structured: bool) -> dict:
    """Our sampling as chat-completions arguments (``extra_body`` holds the non-OpenAI fields).

    >>> request_body(Sampling(0.7, 0.95, 40, 2, 11), structured=False)
    {'n': 2, 'temperature': 0.7, 'top_p': 0.95, 'max_tokens': 40, 'seed': 11, 'stop': ['\\n']}
    >>> greedy = Sampling(0.0, 1.0, 4, 1, 3, stop_at_newline=False, choices=("0", "1"))
    >>> request_body(greedy, structured=True)["extra_body"]
    {'structured_outputs': {'choice': ['0', '1']}}
    """
    body = sampling_args(s)
    if structured and s.choices:
        body["extra_body"] = {"structured_outputs": {"choice": list(s.choices)}}
    elif structured and s.json_schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": json.loads(s.json_schema)},
        }
    return body


def _failure(exc: Exception, base_url: str, key_env: str = "OPENAI_API_KEY") -> Exception:
    """Our error for what the client raised once its own retries were spent."""
    if isinstance(exc, openai.AuthenticationError):
        return EngineError(
            f"openai engine at {base_url}: the server refused the API key (HTTP 401: {exc.message}). "
            f"Fix: set ${key_env} (engine.openai.api_key_env) to the key the server was started with"
        )
    if isinstance(
        exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
    ):
        return TransientEngineError(
            f"openai engine at {base_url}: still failing after retries: {exc}. "
            "Fix: check the server is up and not overloaded, or lower engine.openai.concurrency"
        )
    if isinstance(exc, openai.APIStatusError):
        return EngineError(
            f"openai engine at {base_url}: expected a completion, got HTTP {exc.status_code}: "
            f"{exc.message}. Fix: check engine.openai.model and the server's supported parameters"
        )
    return EngineError(
        f"openai engine at {base_url}: expected an OpenAI chat completion, got a malformed answer "
        f"({type(exc).__name__}: {exc}). Fix: point engine.openai.base_url at an OpenAI-compatible /v1 root"
    )


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg.openai
        self.deadline_s = cfg.call_timeout_s
        self.model_id = cfg.model_id()
        self.structured = False
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="openai-engine", daemon=True).start()
        self._client, self._sem = self._call(self._open())

    async def _open(self):
        client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=os.environ.get(self.cfg.api_key_env) or "none",
            max_retries=self.cfg.max_retries,
            timeout=self.cfg.timeout_s,
        )
        return client, asyncio.Semaphore(self.cfg.concurrency)

    def _call(self, coro, timeout: float | None = None):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()  # cancels the gather: its in-flight requests are dropped
            raise EngineTimeoutError(
                f"openai engine at {self.cfg.base_url}: expected the call to finish within "
                f"engine.call_timeout_s = {timeout:g} s, it did not. Fix: check the server's load, or "
                "raise engine.call_timeout_s"
            ) from None

    def warmup(self) -> None:
        """Check the server answers, and probe structured outputs (``engine.openai.structured: auto``)."""
        if self.cfg.structured == "auto":
            # The only allowed answers are strings no model would write to this question unconstrained: a server
            # that ignores the field answers "Yes" (or chatter) and fails; one that honours it must pick one.
            probe = Sampling(0.0, 1.0, 8, 1, 0, stop_at_newline=False, choices=PROBE_CHOICES)
            try:
                c = self.generate(
                    [GenerationRequest("probe", (("user", "Answer yes or no: is 2 > 1?"),), probe)], structured=True
                )[0]
                self.structured = c.texts[0] in probe.choices
            except EngineError:
                self.structured = False
        self.generate([GenerationRequest("warmup", (("user", "Hi"),), Sampling(0.0, 1.0, 2, 1, 0))])

    def generate(self, requests: list[GenerationRequest], structured: bool | None = None) -> list[Completion]:
        use = self.structured if structured is None else structured
        return self._call(self._all(requests, use), self.deadline_s)

    async def _all(self, requests: list[GenerationRequest], structured: bool) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(r, structured) for r in requests)))

    def _body(self, req: GenerationRequest, structured: bool) -> dict:
        """The request's JSON body, posted as it is: ``chat.completions.create`` would walk it through the SDK's
        typed-dict transform first, about a third of a part worker's Python time for fields that are already
        plain JSON (docs/throughput.md). ``extra_body`` merges at the top, as the SDK merges it."""
        body = {
            "model": self.model_id,
            "messages": [{"role": r, "content": c} for r, c in req.messages],
            **request_body(req.sampling, structured),
        }
        body.update(body.pop("extra_body", {}))
        return body

    async def _one(self, req: GenerationRequest, structured: bool) -> Completion:
        async with self._sem:
            start = time.perf_counter()
            try:
                resp = await self._client.post(
                    "/chat/completions", body=self._body(req, structured), cast_to=ChatCompletion
                )
                choices = sorted(resp.choices, key=lambda ch: ch.index)
                texts = tuple(ch.message.content or "" for ch in choices)
                reasons = tuple(finish_reason(ch) for ch in choices)
                usage = resp.usage
            except EngineError:  # ours already (an unknown finish reason, an abort)
                raise
            except Exception as exc:  # noqa: BLE001 - classified into our two engine errors
                raise _failure(exc, self.cfg.base_url, self.cfg.api_key_env) from exc
        if len(texts) != req.sampling.n:
            raise EngineError(
                f"openai engine at {self.cfg.base_url}: expected {req.sampling.n} choices for {req.key}, "
                f"got {len(texts)}. Fix: use a server that supports the `n` parameter, or set sampling.n: 1"
            )
        return Completion(
            req.key,
            texts,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            round(time.perf_counter() - start, 4),
            reasons,
        )
