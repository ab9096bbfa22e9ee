"""The vllm engine on real vLLM (CPU build) in a real Ray actor: seeds, n, stops and their finish reasons,
truncation, and structured choice for the pairs judge."""

from __future__ import annotations

import pytest

from pipeline.records import GenerationRequest, Sampling

pytestmark = pytest.mark.integration


def _req(key: str, text: str, s: Sampling) -> GenerationRequest:
    return GenerationRequest(key, (("user", text),), s)


def test_identity_and_per_request_seeds(vllm_pool):
    assert (vllm_pool.engine_name, vllm_pool.model_id) == ("vllm", "SmolLM2-135M-Instruct.Q4_1.gguf")
    s = Sampling(0.8, 0.95, 20, 2, 7, stop_at_newline=False)
    batch = [
        _req(f"k{i}", f"Write one sentence about a {animal}.", s)
        for i, animal in enumerate(("dog", "cat", "horse", "fox"))
    ]
    first = vllm_pool.generate(0, batch)
    again = vllm_pool.generate(1, batch[2:3])  # alone, in another call
    assert [c.key for c in first] == [r.key for r in batch]
    assert all(len(c.texts) == 2 and len(c.finish_reasons) == 2 for c in first)  # n=2
    assert again[0].texts == first[2].texts  # the request's seed decides its text, not its batch
    assert first[0].texts[0] != first[0].texts[1]  # sample i uses its own seed
    assert all(c.tokens_in > 0 and c.tokens_out > 0 for c in first)


def test_newline_stop_and_truncation_report_their_finish_reasons(vllm_pool):
    lines = Sampling(0.0, 1.0, 60, 1, 1, stop_at_newline=True)
    [c] = vllm_pool.generate(0, [_req("nl", "List three animals, one per line, and nothing else.", lines)])
    assert c.finish_reasons == ("newline",) and "\n" not in c.texts[0]
    [c] = vllm_pool.generate(
        0, [_req("cut", "Tell me a long story about the sea.", Sampling(0.0, 1.0, 3, 1, 1, False))]
    )
    assert c.finish_reasons == ("length",) and c.tokens_out == 3


def test_structured_choice_for_the_judge(vllm_pool):
    """The pairs judge asks for one digit 0-5: vLLM's structured outputs make any other answer impossible."""
    from pipeline.text.scores import SCORES

    s = Sampling(0.9, 1.0, 4, 1, 3, stop_at_newline=False, choices=SCORES)
    reqs = [
        _req(f"j{i}", f"Here is a sentence: {t}. Write a poem about it.", s)
        for i, t in enumerate(("a red car", "two dogs play", "the sky at night"))
    ]
    out = vllm_pool.generate(0, reqs)
    assert len(out) == 3, "expected one completion per request"
    assert all(c.texts[0] in SCORES for c in out)


def test_latency_is_per_request(vllm_pool):
    """vLLM reports each request's own time in the engine: a short answer finishes before a long one in one call."""
    short = _req("short", "Say hi.", Sampling(0.0, 1.0, 2, 1, 1, False))
    long = _req("long", "Tell me a long story about the sea.", Sampling(0.0, 1.0, 48, 1, 1, False))
    a, b = vllm_pool.generate(0, [short, long])
    assert 0 < a.latency_s < b.latency_s
