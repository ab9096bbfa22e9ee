"""The embedded CPU engine: SmolLM2-135M-Instruct (GGUF, dequantized by transformers), batched.

Chosen by measurement (bench/engines.py, docs/engines.md): transformers with int8 linears
(pipeline.engines.int8) and a shared-prefix KV cache (pipeline.engines.kvcache), one single-threaded
process per core.

Sampling uses one ``torch.Generator`` per request (seeded with the request's seed, like vLLM's
per-request ``SamplingParams.seed``), so a unit's output does not depend on which batch it landed in.
The decoding loop is the engine's own (:meth:`EmbeddedEngine._decode`), not ``generate()``: ``generate``
has one RNG per call, and it keeps computing finished rows until the batch's longest row ends (on the
demo's prompts 60% of its row-steps were such; docs/engines.md). Here a row leaves the batch, and its
cache, as soon as it ends.
"""

from __future__ import annotations

import inspect
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
)

from pipeline.engines.config import EngineConfig
from pipeline.engines.int8 import quantize_linears
from pipeline.engines.kvcache import IMPLEMENTATION, batch_cache, supports_shared_prefix, use_rows
from pipeline.records import Completion, GenerationRequest, Sampling


class PerRowSampler:
    """Temperature + top-p sampling with one generator per batch row.

    Exact top-p without sorting the vocabulary: the nucleus almost always lies inside the ``TOP_K`` most
    likely tokens, found with ``topk``; a row whose top ``TOP_K`` hold less than ``top_p`` of the mass is
    sorted in full. Each row then draws one uniform number from its own generator and picks by inverse CDF
    over its kept tokens. (Sorting 49k logits a row and ``multinomial`` over them took half the engine's
    time; see docs/results/engines.md.) Temperature 0 is greedy.
    """

    TOP_K = 128

    def __init__(self, generators: list[torch.Generator], temperatures: torch.Tensor, top_ps: torch.Tensor):
        self.generators, self.temperatures, self.top_ps = generators, temperatures, top_ps

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """One token id per row of ``scores`` (B, V), each drawn with its row's generator."""
        scores = scores.float()
        probs = (scores / self.temperatures.clamp_min(1e-5)[:, None]).softmax(-1)
        top_p, order = probs.topk(min(self.TOP_K, probs.shape[-1]), -1)  # (B, K), descending
        u = torch.cat([torch.rand(1, generator=g, device=scores.device) for g in self.generators])  # (B,)
        picks = _nucleus_pick(top_p, order, self.top_ps, u)
        for i in torch.nonzero(top_p.sum(-1) < self.top_ps).flatten().tolist():  # nucleus wider than TOP_K
            p_i, o_i = probs[i].sort(descending=True)
            picks[i] = _nucleus_pick(p_i[None], o_i[None], self.top_ps[i : i + 1], u[i : i + 1])[0]
        return torch.where(self.temperatures <= 0, scores.argmax(-1), picks)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (in that order)."""
        self.generators = [self.generators[i] for i in rows.tolist()]
        self.temperatures, self.top_ps = self.temperatures[rows], self.top_ps[rows]


def _nucleus_pick(sorted_p: torch.Tensor, order: torch.Tensor, top_ps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids drawn from each row's nucleus by inverse CDF: ``sorted_p`` (B, K) descending probabilities
    with their token ids ``order``, ``u`` (B,) uniform draws in [0, 1). A token is dropped once the mass
    *before* it already reaches top_p (at least one token is kept)."""
    kept = sorted_p.masked_fill((sorted_p.cumsum(-1) - sorted_p) >= top_ps[:, None], 0.0)
    cdf = kept.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(cdf.shape[-1] - 1)
    return order.gather(1, idx)[:, 0]


def dequantized_cache(path: Path) -> Path:
    """Folder holding the GGUF dequantized to safetensors, made once (dequantizing costs ~16 s a load).

    Keyed by file name, size and mtime; built in a temp folder and renamed, so a half-written cache is
    never used. Location: $CONTRASTGEN_CACHE or ~/.cache/contrastgen.
    """
    root = Path(os.environ.get("CONTRASTGEN_CACHE", Path.home() / ".cache" / "contrastgen")) / "models"
    stat = path.stat()
    target = root / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    tok.save_pretrained(tmp)
    # transformers refuses to save a model still marked as GGUF-quantized, yet its weights are plain
    # float32 after dequantizing: copy them into a fresh model built from the same config and save that.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def transformers_folder(path: Path) -> Path:
    """A transformers folder of ``path``: a .gguf file dequantized once (cached), or the folder itself."""
    return dequantized_cache(path) if path.suffix == ".gguf" else path


def torch_dtype(dtype: str, device: str) -> torch.dtype:
    """``engine.dtype``: auto is float32 on CPU (no fast half kernels there) and bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return getattr(torch, dtype)


def load_causal_lm(path: Path, device: str, dtype: str = "float32"):
    """(tokenizer, model) of a .gguf file (dequantized once, cached) or a transformers folder, in eval mode."""
    folder = transformers_folder(path)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype, device))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # PreTrainedModel.to is wrapped in functools.wraps(nn.Module.to), whose stub (_Wrapped) does not bind self:
    # typed as the nn.Module it is, the call is still PreTrainedModel.to
    return tok, cast(torch.nn.Module, model).to(device).eval()


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, cfg: EngineConfig):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        path = cfg.resolved_model_path()
        self.model_id = cfg.model_id()
        self.tokenizer, self.model = load_causal_lm(path, cfg.device, cfg.dtype)
        if cfg.int8_passes():
            quantize_linears(self.model, cfg.int8_passes())
        self._shared = supports_shared_prefix(self.model)  # one copy of a batch's prefix (pipeline.engines.kvcache)
        if self._shared:
            self.model.set_attn_implementation(IMPLEMENTATION)
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos_id is None or self.eos_id == self.tokenizer.unk_token_id:
            self.eos_id = self.tokenizer.eos_token_id
        self._prefixes: dict[str, tuple[torch.Tensor, DynamicCache]] = {}
        # seconds spent computing prefixes' KV, once a prefix for many calls (pipeline.engines.metered): this process's
        # CPU-seconds on a CPU device (as the replica times its calls there), else wall seconds
        self.setup_s = 0.0
        self._clock = time.process_time if str(cfg.device) == "cpu" else time.perf_counter
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes in 6.0).
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.newline_ids = torch.tensor(
            [i for i, t in enumerate(vocab) if t is not None and "\n" in self.tokenizer.convert_tokens_to_string([t])],
            device=cfg.device,
        )

    def warmup(self) -> None:
        """One tiny generation: the first forward pass in a process pays one-time kernel set-up."""
        msgs = (("user", "Hi"),)
        self.generate([GenerationRequest("warmup", msgs, Sampling(0.0, 1.0, 2, 1, 0))])

    def prompt_text(self, req: GenerationRequest) -> str:
        return self._chat(req.messages, generation_prompt=True)

    def _chat(self, messages, generation_prompt: bool) -> str:
        msgs = [{"role": r, "content": c} for r, c in messages]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    def _split(self, req: GenerationRequest) -> tuple[str, str]:
        """(shared prefix, per-request suffix): the prefix is every turn before the last user turn."""
        full = self.prompt_text(req)
        prefix = self._chat(req.messages[:-1], generation_prompt=False) if len(req.messages) > 1 else ""
        return (prefix, full[len(prefix) :]) if full.startswith(prefix) else ("", full)

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        # Rows: n samples per request (sample i uses seed + i); grouped by shared prefix so its KV cache
        # is computed once (prefix caching, as vLLM does); sorted by suffix length to limit padding.
        rows = [(qi, si, *self._split(q)) for qi, q in enumerate(requests) for si in range(q.sampling.n)]
        rows.sort(key=lambda r: (r[2], len(r[3])))
        outs: dict[tuple[int, int], tuple[str, int, str]] = {}
        tokens_in = [0] * len(requests)
        latency = [0.0] * len(requests)
        for prefix, grouped in itertools.groupby(rows, key=lambda r: r[2]):  # a batch never mixes prefixes
            group = list(grouped)
            for b in range(0, len(group), self.cfg.batch_size):
                part = group[b : b + self.cfg.batch_size]
                t0 = time.perf_counter()
                results = self._run(
                    [requests[qi] for qi, *_ in part], [si for _, si, *_ in part], prefix, [r[3] for r in part]
                )
                dt = time.perf_counter() - t0
                for (qi, si, *_), out in zip(part, results):
                    outs[(qi, si)] = out[:3]
                    tokens_in[qi] += out[3] if si == 0 else 0
                    latency[qi] = max(latency[qi], dt)
        return [
            Completion(
                key=q.key,
                texts=tuple(outs[(qi, si)][0] for si in range(q.sampling.n)),
                tokens_in=tokens_in[qi],
                tokens_out=sum(outs[(qi, si)][1] for si in range(q.sampling.n)),
                latency_s=round(latency[qi], 4),
                finish_reasons=tuple(outs[(qi, si)][2] for si in range(q.sampling.n)),
            )
            for qi, q in enumerate(requests)
        ]

    def _prefix_cache(self, prefix: str):
        """KV cache of a shared prefix, computed once and kept (few templates, so few prefixes)."""
        if prefix not in self._prefixes:
            started = self._clock()
            ids = self.tokenizer(prefix, return_tensors="pt", add_special_tokens=False).input_ids.to(self.cfg.device)
            cache = DynamicCache(config=self.model.config)
            self.model(ids, use_cache=True, **{self._cache_kw: cache})
            self.setup_s += self._clock() - started
            if len(self._prefixes) >= 32:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[prefix] = (ids, cache)
        return self._prefixes[prefix]

    def _prefill(self, ids, mask, n_prefix: int, cache) -> None:
        """Fill ``cache`` (one row per distinct suffix) with every prompt token but the last (_decode feeds
        that one). Rows with the same suffix (the ``n`` samples of a request) share their whole prompt: each
        distinct prompt is prefilled once; the prefix is already in ``cache``."""
        if ids.shape[1] - 1 > n_prefix:
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            self.model(
                input_ids=ids[:, n_prefix:-1],
                attention_mask=mask[:, :-1],
                position_ids=positions[:, n_prefix:-1],
                use_cache=True,
                **{self._cache_kw: cache},
            )

    @torch.inference_mode()
    def _run(self, reqs: list[GenerationRequest], sample_idx: list[int], prefix: str, suffixes: list[str]):
        dev, batch = self.cfg.device, len(reqs)
        enc = self.tokenizer(suffixes, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pids, pcache = self._prefix_cache(prefix) if prefix else (ids[:1, :0], None)
        pads = (mask == 0).sum(-1)  # (B,) each suffix's left padding
        # Padding sits between prefix and suffix; positions come from the mask.
        ids = torch.cat([pids.expand(batch, -1), ids], 1)  # (B, P + S)
        mask = torch.cat([torch.ones(batch, pids.shape[1], dtype=mask.dtype, device=dev), mask], 1)
        max_new = max(r.sampling.max_tokens for r in reqs)
        first: dict[str, int] = {}
        inverse = torch.tensor([first.setdefault(s, len(first)) for s in suffixes], device=dev)
        uniq = torch.tensor([suffixes.index(s) for s in first], device=dev)
        cache = batch_cache(self.model.config, pcache, pads[uniq], enc["input_ids"].shape[1] + max_new, self._shared)
        with use_rows(self.model, cache if self._shared else None):
            self._prefill(ids[uniq], mask[uniq], pids.shape[1], cache)
            cache.batch_select_indices(inverse)
            tokens = self._decode(reqs, sample_idx, ids, mask, cache)
        return self._results(reqs, tokens, mask)

    def _decode(self, reqs, sample_idx, ids, mask, cache) -> list[list[int]]:
        """Each row's new token ids, up to and including its end (eos, a newline for a one-line request, or
        its own max_tokens). The cache holds every prompt token but the last; each step feeds one token a
        row, and the rows that ended leave the batch (``batch_select_indices``): each row's sums are its
        own (per-row int8 scales, per-row attention), so dropping rows changes no other row's text."""
        dev = self.cfg.device
        sampler = PerRowSampler(
            [torch.Generator(device=dev).manual_seed(r.sampling.seed + si) for r, si in zip(reqs, sample_idx)],
            torch.tensor([r.sampling.temperature for r in reqs], device=dev),
            torch.tensor([r.sampling.top_p for r in reqs], device=dev),
        )
        limits = torch.tensor([r.sampling.max_tokens for r in reqs], device=dev)
        one_line = torch.tensor([r.sampling.stop_at_newline for r in reqs], device=dev)
        live = torch.arange(len(reqs), device=dev)  # the request row of each batch row
        tokens: list[list[int]] = [[] for _ in reqs]
        step, positions = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
        for n in range(1, int(limits.max()) + 1):
            logits = self.model(
                input_ids=step,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            ).logits[:, -1]
            picks = sampler(logits)
            for row, tok in zip(live.tolist(), picks.tolist()):
                tokens[row].append(tok)
            ended = (
                (picks == self.eos_id) | (limits[live] <= n) | (one_line[live] & torch.isin(picks, self.newline_ids))
            )
            if bool(ended.all()):
                break
            if bool(ended.any()):
                keep = torch.nonzero(~ended).flatten()
                cache.batch_select_indices(keep)
                sampler.select(keep)
                live, picks, mask, positions = live[keep], picks[keep], mask[keep], positions[keep]
            step, positions = picks[:, None], positions + 1
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        return tokens

    def _results(self, reqs, tokens: list[list[int]], mask):
        """(text, tokens out, finish reason, tokens in) per row of the generated ids ``tokens``."""
        n_in = mask.sum(-1).tolist()
        results = []
        newline = set(self.newline_ids.tolist())
        for i, r in enumerate(reqs):
            toks = tokens[i]  # _decode stopped it at its end or its max_tokens
            stops = newline if r.sampling.stop_at_newline else set()
            end = next((j for j, t in enumerate(toks) if t == self.eos_id or t in stops), None)
            reason = "length" if end is None else "stop" if toks[end] == self.eos_id else "newline"
            kept = toks if end is None else toks[: end + (reason == "newline")]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            results.append((text, len(kept) + (reason == "stop"), reason, int(n_in[i])))
        return results
