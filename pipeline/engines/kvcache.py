"""The embedded engine's KV cache for a batch that shares one prompt prefix: the prefix's keys and values are
held once for the whole batch, each row's own tokens go into a preallocated buffer.

Why (docs/engines.md): every row of a negatives batch starts with the same ~170-token few-shot prefix. With
transformers' :class:`~transformers.DynamicLayer` each row held its own copy of that prefix (about 230 MB for
24 rows and 30 layers) and every decoding step copied all of it (``torch.cat``) and read all of it back in
attention: the engine was bound by memory bandwidth, not arithmetic. Here a step reads the prefix once
(it stays in the CPU caches) and writes one token per row.

Two pieces, both plugged into transformers' own extension points:

- :class:`GrowingLayer`, a ``DynamicLayer`` whose ``keys``/``values`` are views of the filled part of a
  buffer holding the rows' own tokens; it reports the prefix in its length, so masks and positions are the
  usual ones over prefix + row tokens.
- :func:`prefix_attention`, registered as an attention implementation (``AttentionInterface``): softmax over
  [q . K_prefix, q . K_row] jointly, then the weighted sum of both value sets, one row at a time against the
  single copy of the prefix (shared-prefix attention as in Juravsky et al. 2024, Hydragen, arXiv:2402.05099,
  without its batching, which made a row's sums depend on its batch). Outside :func:`use_rows` it is
  transformers' SDPA.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

IMPLEMENTATION = "contrastgen_prefix"


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` over a preallocated (batch, heads, capacity, dim) buffer of the rows' own tokens, after
    ``prefix`` (keys, values of shape (1, kv heads, P, dim), shared by every row, never copied; or None).

    Each row's tokens are stored from index 0 without padding (the left padding of a prompt batch is dropped on
    write), so a row's attention sums run over the same positions in any batch: with int8 activations a last-bit
    difference can flip a rounding and then a token, so batch invariance needs the same float sums, not close ones.
    ``get_seq_length`` still reports the padded length, which transformers' forward counts cache positions by.
    """

    _k: torch.Tensor  # (B, heads, room, dim) the rows' own keys and values, once allocated
    _v: torch.Tensor

    def __init__(self, capacity: int, prefix: tuple[torch.Tensor, torch.Tensor] | None, pads: torch.Tensor):
        super().__init__()
        self.capacity, self.prefix, self.logical = capacity, prefix, 0
        self.prefix_len = 0 if prefix is None else prefix[0].shape[2]
        self.pads = pads  # (B,) left padding of the next write (a prompt's); then 0 (one token a step)
        self.lengths = torch.zeros_like(pads)  # (B,) tokens each row holds
        self.query_pads = pads  # the padding of the queries of the current forward (read by prefix_attention)

    def _allocate(self, like: torch.Tensor, room: int) -> None:
        b, h, _, d = like.shape
        old = (self._k, self._v) if self.is_initialized else None
        self._k, self._v = like.new_zeros(b, h, room, d), like.new_zeros(b, h, room, d)
        if old is not None:
            self._k[:, :, : old[0].shape[2]], self._v[:, :, : old[1].shape[2]] = old
        self.device, self.is_initialized = like.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        b, h, m, d = key_states.shape
        need = int(self.lengths.max()) + m
        if not self.is_initialized or need > self._k.shape[2]:  # out of room only past the planned length
            self._allocate(key_states, max(self.capacity, need) if not self.is_initialized else 2 * need)
        # Drop each row's left padding (real tokens first), then write them after the row's own tokens.
        take = (torch.arange(m, device=key_states.device)[None, :] + self.pads[:, None]).clamp_max(m - 1)  # (B, m)
        keys = key_states.gather(2, take[:, None, :, None].expand(b, h, m, d))
        values = value_states.gather(2, take[:, None, :, None].expand(b, h, m, d))
        rows = torch.arange(b, device=key_states.device)[:, None]
        at = self.lengths[:, None] + torch.arange(m, device=key_states.device)[None, :]  # (B, m)
        self._k[rows, :, at] = keys.transpose(1, 2)  # advanced indices first: (B, m, heads, dim)
        self._v[rows, :, at] = values.transpose(1, 2)
        self.lengths = self.lengths + m - self.pads
        self.query_pads, self.pads = self.pads, torch.zeros_like(self.pads)
        self.logical += m
        filled = int(self.lengths.max())
        self.keys, self.values = self._k[:, :, :filled], self._v[:, :, :filled]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prefix_len + self.logical

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.lengths, self.pads, self.query_pads = self.lengths[indices], self.pads[indices], self.query_pads[indices]
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            filled = int(self.lengths.max())
            self.keys, self.values = self._k[:, :, :filled], self._v[:, :, :filled]


def prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over the shared prefix and each row's own tokens (``module.kv_layer``, a :class:`GrowingLayer`),
    as one softmax; transformers' ``attention_mask`` is not used, the layer's row lengths say what a query
    sees. Returns (B, q, heads, dim) like transformers' attention functions; SDPA when no layer is attached."""
    layer = getattr(module, "kv_layer", None)
    if layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    b, heads, q, d = query.shape
    kv_heads, p = key.shape[1], layer.prefix_len
    rep = heads // kv_heads
    scale = scaling if scaling is not None else d**-0.5
    out = query.new_zeros(b, heads, q, d)  # padding queries stay 0: their outputs are never used
    lengths, pads = layer.lengths.tolist(), layer.query_pads.tolist()
    for r in range(b):  # one row at a time, over its own tokens only: the same shapes, so the same sums, in any batch
        n, own = q - pads[r], lengths[r]
        if n <= 0:
            continue
        g = query[r, :, pads[r] :].reshape(kv_heads, rep * n, d)  # query head h reads kv head h // rep
        scores = torch.matmul(g, key[r, :, :own].transpose(-1, -2))  # (kv heads, rep * n, own)
        if n > 1:  # causal: query i is the row's token own - n + i
            seen = (
                torch.arange(own, device=key.device)[None, :] <= torch.arange(own - n, own, device=key.device)[:, None]
            )
            scores = scores.view(kv_heads, rep, n, own).masked_fill(~seen, float("-inf")).view(kv_heads, rep * n, own)
        if p:
            scores = torch.cat([torch.matmul(g, layer.prefix[0][0].transpose(-1, -2)), scores], -1)
        probs = (scores * scale).softmax(-1)
        o = torch.matmul(probs[..., p:], value[r, :, :own])
        if p:
            o = o + torch.matmul(probs[..., :p], layer.prefix[1][0])
        out[r, :, pads[r] :] = o.view(heads, n, d)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def supports_shared_prefix(model) -> bool:
    """Whether ``model``'s cache is all plain ``DynamicLayer``s (no sliding windows) and its attention modules
    carry ``layer_idx``: then :func:`use_rows` applies."""
    plain = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    return plain and bool(_attention_modules(model))


def _attention_modules(model) -> dict[int, torch.nn.Module]:
    return {m.layer_idx: m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")}


def batch_cache(config, prefix: DynamicCache | None, pads: torch.Tensor, capacity: int, shared: bool) -> DynamicCache:
    """A cache for ``len(pads)`` rows of up to ``capacity`` own tokens after ``prefix``; ``pads``: each row's
    left padding in the first write. ``shared``: :class:`GrowingLayer`s (the prefix read in place through
    :func:`use_rows`); else transformers' own layers with the prefix repeated per row."""
    rows = len(pads)
    if not shared:
        if prefix is None:
            return DynamicCache(config=config)
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(rows)
        return cache
    cache = DynamicCache(config=config)
    cache.layers = [
        GrowingLayer(capacity, None if prefix is None else _keys_values(prefix, i), pads)
        for i in range(len(cache.layers))
    ]
    return cache


def _keys_values(cache: DynamicCache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer = cache.layers[i]
    assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None, type(layer)
    return layer.keys, layer.values


@contextlib.contextmanager
def use_rows(model, cache: DynamicCache | None):
    """Within the block, each attention module reads its layer of ``cache`` (a :func:`batch_cache` of
    :class:`GrowingLayer`s) for the prefix and the rows' lengths; None: plain SDPA."""
    modules = _attention_modules(model)
    try:
        for i, m in modules.items():
            setattr(m, "kv_layer", None if cache is None else cache.layers[i])  # our attribute, not a submodule
        yield
    finally:
        for m in modules.values():
            setattr(m, "kv_layer", None)
