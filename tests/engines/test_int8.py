"""The embedded engine's fast paths against their plain definitions: W8A8 linears, the top-k nucleus sampler."""

import torch

from pipeline.engines.embedded import PerRowSampler, _nucleus_pick
from pipeline.engines.int8 import RowInt8Linear, quantize_linears


@torch.inference_mode()
def test_int8_linear_rows_do_not_depend_on_their_batch_and_stay_close_to_float32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    x = torch.randn(12, 64) * torch.linspace(0.1, 10.0, 12)[:, None]  # rows of very different scales
    x[:, 3] *= 30.0  # an outlier channel, as LLM activations have
    ref, rel = lin(x), {}
    for passes in (1, 2):
        q = RowInt8Linear(lin, passes)
        together = q(x)
        for i in range(len(x)):
            assert torch.equal(q(x[i : i + 1].clone())[0], together[i])  # per-row scales, exact int32 sums
        rel[passes] = float(((together - ref).norm(dim=-1) / ref.norm(dim=-1)).max())
    assert rel[2] < 0.01 < rel[1] < 0.05  # the residual pass takes the activations' rounding away


def test_quantize_linears_replaces_every_linear_and_keeps_shapes():
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(16, 4, bias=False))
    )
    x = torch.randn(3, 5, 8)
    ref = model(x)
    quantize_linears(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model(x).shape == ref.shape and float((model(x) - ref).abs().max()) < 0.1


def test_nucleus_sampler_matches_a_full_sort():
    torch.manual_seed(1)
    scores = torch.randn(16, 1000) * torch.linspace(0.2, 6.0, 16)[:, None]  # flat rows: nucleus wider than TOP_K
    temps, top_ps = torch.full((16,), 0.8), torch.full((16,), 0.9)
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    picks = PerRowSampler(gens, temps, top_ps)(scores)
    u = torch.cat([torch.rand(1, generator=torch.Generator().manual_seed(i)) for i in range(16)])
    sorted_p, order = (scores / 0.8).softmax(-1).sort(-1, descending=True)
    assert torch.equal(picks, _nucleus_pick(sorted_p, order, top_ps, u))
    flat = int(((scores / 0.8).softmax(-1).topk(PerRowSampler.TOP_K).values.sum(-1) < 0.9).sum())
    assert 0 < flat < 16  # both paths (top-k and the full-sort fallback) were taken
