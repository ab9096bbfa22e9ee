"""`contrastgen serve`'s request mapping: what it honours, and the 400 it gives for what it cannot."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from pipeline.errors import ConfigError
from pipeline.records import Completion
from pipeline.serve import ChatRequest, check_exposure, to_request, to_response


def _req(**kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], **kw)


def test_chat_request_maps_onto_ours():
    r = to_request(_req(n=3, temperature=0.5, top_p=0.9, max_tokens=12, seed=7, stop=["\n"]), 256)
    s = r.sampling
    assert (s.n, s.temperature, s.top_p, s.max_tokens, s.seed, s.stop_at_newline) == (3, 0.5, 0.9, 12, 7, True)
    assert r.messages == (("system", "s"), ("user", "u"))
    assert to_request(_req(max_completion_tokens=5), 256).sampling.max_tokens == 5
    assert to_request(_req(), 256).sampling.stop_at_newline is False


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"structured_outputs": {"choice": ["a"]}}, "structured_outputs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stop": ["END"]}, "stop"),
        ({"stream": True}, "stream"),
    ],
)
def test_unsupported_fields_get_a_400_naming_them(kw, field):
    with pytest.raises(HTTPException) as exc:
        to_request(_req(**kw), 256)
    assert exc.value.status_code == 400 and field in exc.value.detail


@pytest.mark.parametrize(
    "kw,says",
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
        ({"max_completion_tokens": -5, "max_tokens": 9}, "max_tokens must be at least 1, got -5"),
        ({"temperature": -0.1}, "temperature must be a non-negative number"),
        ({"temperature": float("nan")}, "temperature must be a non-negative number"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"seed": 2**64}, "seed must be a 64-bit integer"),
    ],
)
def test_sampling_the_engine_cannot_run_gets_a_400_as_vllm_gives(kw, says):
    """Caught before batching: such a request would otherwise fail, or skew, the batch it lands in."""
    with pytest.raises(HTTPException) as exc:
        to_request(_req(**kw), 256)
    assert exc.value.status_code == 400 and says in exc.value.detail


def test_newline_stop_is_reported_as_vllm_does():
    body = to_response(Completion("k", ("A cat.\n", "A do", "x"), 9, 7, 0.1, ("newline", "length", "stop")), "m")
    ch = body["choices"]
    assert [c["message"]["content"] for c in ch] == ["A cat.", "A do", "x"]
    assert [(c["finish_reason"], c["stop_reason"]) for c in ch] == [("stop", "\n"), ("length", None), ("stop", None)]
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_key(host):
    check_exposure(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "myhost.example"])
def test_serving_beyond_this_machine_without_a_key_is_refused(host):
    with pytest.raises(ConfigError, match="--api-key"):
        check_exposure(host, None)
    check_exposure(host, "k")


def test_serve_cli_refuses_a_public_host_before_loading_the_model(monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.delenv("CONTRASTGEN_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "expected an API key" in err and "CONTRASTGEN_API_KEY" in err
