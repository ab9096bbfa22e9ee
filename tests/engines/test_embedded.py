"""The real embedded engine (SmolLM2-135M), loaded once per session."""

import pytest

from pipeline.config import load_config
from pipeline.kinds import negatives as task
from pipeline.records import CaptionRecord, GenerationRequest

pytestmark = pytest.mark.integration

CAPS = [
    "A man rides a wave on a surfboard.",
    "Two dogs play with a red frisbee in the grass.",
    "A woman holding an umbrella walks down a busy street.",
]


def _requests(temperature: float, types=("swap_obj", "replace_att")) -> list[GenerationRequest]:
    cfg = load_config(
        None, {"negatives": {"types": list(types)}, "sampling": {"temperature": temperature, "max_tokens": 16}}
    )
    tpls = task.templates_for(cfg)
    units = task.plan_units([CaptionRecord(str(i), c) for i, c in enumerate(CAPS)], cfg, tpls)
    return [task.render(u, tpls[u.task], task.mode_for(u.task, cfg), cfg) for u in units]


@pytest.fixture(scope="module")
def fp32_engine():
    """The engine without int8 (quantize=none): float32 end to end, for checks of exactness against float32."""
    from pipeline.config import EngineConfig
    from pipeline.engines.embedded import EmbeddedEngine

    return EmbeddedEngine(EngineConfig(batch_size=8, quantize="none"))


def test_prefix_cache_matches_uncached_generation(fp32_engine):
    # In float32: with int8 activations the two paths' last-bit differences (the prefix computed in its own
    # forward or inside the row's) can flip a rounding and then a greedy token.
    reqs = _requests(0.0)[:3]
    cached = fp32_engine.generate(reqs)
    assert len(cached) == len(reqs) == 3, "expected one output per request (3 of the 9 planned units)"
    for req, out in zip(reqs, cached):
        full = fp32_engine.prompt_text(req)
        (plain,) = fp32_engine._run([req], [0], "", [full])  # no prefix: the whole prompt as suffix
        assert plain[0] == out.texts[0]
        assert plain[3] == out.tokens_in  # same prompt length either way


def test_decoding_loop_matches_transformers_generate(fp32_engine):
    # The engine decodes with its own loop (finished rows leave the batch); greedy, one request at a time with
    # the whole prompt and no prefix cache, transformers' generate() must give the same first line.
    import torch

    eng = fp32_engine
    reqs = _requests(0.0)[:4]
    outs = eng.generate(reqs)
    assert len(outs) == len(reqs) == 4, "expected one output per request (4 of the 9 planned units)"
    for req, out in zip(reqs, outs):
        ids = eng.tokenizer(eng.prompt_text(req), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            ref = eng.model.generate(
                ids,
                do_sample=False,
                max_new_tokens=16,
                eos_token_id=eng.eos_id,
                pad_token_id=eng.tokenizer.pad_token_id,
            )[0, ids.shape[1] :]
        text = eng.tokenizer.decode(ref, skip_special_tokens=True)
        assert out.texts[0] == (text.split("\n")[0] + "\n" if "\n" in text else text)
    assert len({o.tokens_out for o in outs}) > 1  # rows ended at different steps: some left the batch early


def test_per_request_seeds_make_outputs_batch_invariant(embedded_engine):
    reqs = _requests(0.9)
    together = embedded_engine.generate(reqs)
    alone = [embedded_engine.generate([r])[0] for r in reqs[::2]]
    assert [o.texts for o in alone] == [o.texts for o in together[::2]]
    assert all(len(o.texts) == 2 for o in together)  # n=2 samples per request
    assert any(o.texts[0] != o.texts[1] for o in together)  # sample i uses seed + i


def test_token_accounting_and_order(embedded_engine):
    reqs = _requests(0.7)
    outs = embedded_engine.generate(reqs)
    assert [o.key for o in outs] == [r.key for r in reqs]
    assert len(outs) == 9, "expected one output per unit: 3 captions x (2 types + the paraphrase)"
    for o in outs:
        assert 0 < o.tokens_out <= 2 * 16 + 2 and o.tokens_in > 20
        assert set(o.finish_reasons) <= {"stop", "newline", "length"}


def test_dequantized_cache_gives_the_gguf_model_exactly(fp32_engine):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config import bundled_gguf

    gguf = bundled_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    text = fp32_engine.prompt_text(_requests(0.0)[0])
    assert tok(text).input_ids == fp32_engine.tokenizer(text).input_ids
    ids = torch.tensor([tok(text).input_ids])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, fp32_engine.model(ids).logits)
