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

import threading

import torch
from torch import nn


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float scales) of a 2-D tensor, symmetric per row: ``x ~= q * scale``."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127.0  # (M, 1)
    return torch.round(x / scale).to(torch.int8), scale


class _Last(threading.local):
    """The last input quantized (per thread), held by identity: the q, k and v projections (and gate and up) of a
    layer read the same tensor, so it is quantized once for them."""

    x: torch.Tensor | None = None
    passes: int = 0
    parts: tuple = ()


_LAST = _Last()


def activation_parts(x: torch.Tensor, passes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values (passes * M, K), scales (passes * M, 1)): ``passes`` row blocks whose scaled sum approximates
    the M rows of ``x``, each block quantizing what the earlier ones left over (two passes: about 14 bits a
    value). Stacked, so one ``_int_mm`` serves every pass."""
    if _LAST.x is x and _LAST.passes == passes:
        return _LAST.parts
    rest, qs, ss = x.reshape(-1, x.shape[-1]).float(), [], []
    for i in range(passes):
        q, s = quantize_rows(rest)
        qs.append(q)
        ss.append(s)
        if i + 1 < passes:
            rest = rest - q.float() * s
    parts = (torch.cat(qs), torch.cat(ss)) if passes > 1 else (qs[0], ss[0])
    _LAST.x, _LAST.passes, _LAST.parts = x, passes, parts
    return parts


class RowInt8Linear(nn.Module):
    """``y = sum_p (q_p(x) @ q(W).T) * s_p * s_W + b``: int8 x int8 -> int32 (exact), scaled back to float32.

    ``passes`` = 2 quantizes each activation row and then its residual, so activations carry about 14 bits and
    only the weights' int8 rounding remains (measured: the yields of float activations, docs/results/engines.md)."""

    w_t: torch.Tensor  # buffers, declared for the type checker
    w_scale: torch.Tensor

    def __init__(self, linear: nn.Linear, passes: int = 2):
        super().__init__()
        w_q, w_scale = quantize_rows(linear.weight.detach().float())  # per output channel: (N, K), (N, 1)
        self.register_buffer("w_t", w_q.t().contiguous())  # (K, N): _int_mm's layout
        self.register_buffer("w_scale", w_scale.reshape(1, -1))  # (1, N)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features, self.passes = linear.in_features, linear.out_features, passes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s = activation_parts(x, self.passes)
        y = torch._int_mm(q, self.w_t).float() * (s * self.w_scale)  # (passes * M, N)
        if self.passes > 1:
            y = y.view(self.passes, -1, self.out_features).sum(0)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize_linears(model: nn.Module, passes: int = 2) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (the LM head included) by a :class:`RowInt8Linear`, in place.

    A tied LM head gets its own int8 copy; the input embedding stays float32."""
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, RowInt8Linear(mod, passes))
    return model
