"""What every engine adapter shares about a completion's texts: OpenAI-style sampling arguments and
finish reasons (``stop``, ``newline``, ``length``), and the check that a :class:`Completion` reports one
known finish reason per text.

A leaf module: it imports no engine (and never :mod:`pipeline.engines.base`), so the adapters
(:mod:`~pipeline.engines.openai_compat`, :mod:`~pipeline.engines.vllm_engine`) import it while ``base``
imports them for :func:`~pipeline.engines.base.build_engine`, with no import cycle.
"""

from __future__ import annotations

from pipeline.errors import EngineError, TransientEngineError
from pipeline.records import Completion, Sampling


def sampling_args(s: Sampling) -> dict:
    """The sampling fields OpenAI-style APIs (the openai engine's requests, vLLM's ``SamplingParams``) share:
    ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``, and ``stop: ["\\n"]`` for one-line tasks."""
    args: dict = {"n": s.n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed}
    if s.stop_at_newline:
        args["stop"] = ["\n"]
    return args


FINISH_REASONS = ("stop", "newline", "length")  # what a Completion may say of each text


def finish_reason(output) -> str:
    """Our finish reason of one OpenAI-style output (an openai ``Choice`` or a vLLM ``CompletionOutput``, both
    with ``finish_reason`` and vLLM's ``stop_reason``): ``length``, ``newline`` (stopped by the one-line
    stop) or ``stop``. A server without ``stop_reason`` reports a newline stop as a plain stop: the row is
    then judged by its text alone. ``abort`` (vLLM aborted the request) is a :class:`TransientEngineError`;
    a missing or unknown reason is an :class:`EngineError`: a text whose end is unknown may be truncated,
    so it is never taken as a stop."""
    reason = getattr(output, "finish_reason", None)
    if reason in ("length", "repetition"):  # vLLM's `repetition`: it cut a repeating pattern, the text is truncated
        return "length"
    if reason == "stop":
        return "newline" if getattr(output, "stop_reason", None) == "\n" else "stop"
    if reason in ("abort", "error"):  # vLLM (v1/engine FinishReason): aborted, or a retryable request-level error
        raise TransientEngineError(
            f"the engine ended a request with finish_reason {reason!r}: its text is incomplete. "
            "Fix: none needed, the part is retried; if it persists, check the server's logs"
        )
    raise EngineError(
        f"expected a finish reason 'stop' or 'length' for every output, got {reason!r}: a text whose end "
        "is unknown may be truncated. Fix: use a server that reports finish_reason (vLLM, llama.cpp, "
        "contrastgen serve)"
    )


def check_finish_reasons(c: Completion, n: int) -> None:
    """A completion holds ``n`` texts, each with one known finish reason; else :class:`EngineError`."""
    if (
        len(c.texts) != n
        or len(c.finish_reasons) != len(c.texts)
        or any(r not in FINISH_REASONS for r in c.finish_reasons)
    ):
        raise EngineError(
            f"completion {c.key}: expected {n} texts, each with a finish reason in {FINISH_REASONS}, "
            f"got {len(c.texts)} texts with finish reasons {c.finish_reasons!r}. A missing reason is never "
            "taken as 'stop' (the text may be truncated). Fix: the engine adapter must report one per text"
        )
