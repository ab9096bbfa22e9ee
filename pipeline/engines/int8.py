"""W8A8 linear layers for the embedded CPU engine: int8 weights, int8 activations per row, exact int32 sums.

Each ``nn.Linear`` becomes a :class:`RowInt8Linear`. Weights are quantized once, symmetrically, per output
channel; activations are quantized per row (per token) at every call, and ``torch._int_mm`` multiplies them
with int32 accumulation (VNNI on x86). This is the LLM.int8() / SmoothQuant W8A8 layout without outlier
handling (Dettmers et al. 2022, arXiv:2208.07339; Xiao et al. 2023, arXiv:2211.10438).

Why per row, and not torch's ``quantize_dynamic``: the latter quantizes activations per *tensor*, so a
row's scale depends on the other rows of its batch and a unit's text would depend on the batch it ran in.
Per-row scales depend on the row alone and integer sums are exact, so each row's output is the same in any
batch. (torchao's ``Int8DynamicActivationInt8WeightConfig`` computes the same thing; its tensor subclass
costs about 3x more per call at these sizes, measured in docs/engines.md.)
"""

from __future__ import annotations

import torch
from torch import nn


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float scales) of a 2-D tensor, symmetric per row: ``x ~= q * scale``."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127.0  # (M, 1)
    return torch.round(x / scale).to(torch.int8), scale


class RowInt8Linear(nn.Module):
    """``y = (q(x) @ q(W).T) * s_x * s_W + b``: int8 x int8 -> int32 (exact), scaled back to float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w_q, w_scale = quantize_rows(linear.weight.detach().float())  # per output channel: (N, K), (N, 1)
        self.register_buffer("w_t", w_q.t().contiguous())  # (K, N): _int_mm's layout
        self.register_buffer("w_scale", w_scale.reshape(1, -1))  # (1, N)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()  # (M, K)
        q, s = quantize_rows(rows)
        y = torch._int_mm(q, self.w_t).float() * (s * self.w_scale)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize_linears(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (the LM head included) by a :class:`RowInt8Linear`, in place.

    A tied LM head gets its own int8 copy; the input embedding stays float32."""
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, RowInt8Linear(mod))
    return model
