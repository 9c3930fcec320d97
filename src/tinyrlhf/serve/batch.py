"""The running batch of the serving engine: one left-padded KV cache that rows join and leave between steps.

Continuous batching (Orca, Yu et al. OSDI 2022: "iteration-level scheduling"; vLLM) needs rows of
different ages in one forward pass. Without paged attention kernels, the portable way on a transformers
model is the one Hugging Face's text-generation-inference used for its non-flash models: keep one
DynamicCache whose rows are LEFT-padded to a common width, prefill newcomers on their own, then pad
the narrower of the two caches on the left and concatenate along the batch. Padding columns are masked
out, and every row keeps its own position ids (counted over its real tokens, as `rollout.generate` and
`logprobs.token_logps` count them), so a row's logits do not depend on who shares its batch (up to
float rounding of different matmul shapes). Rows that finish are dropped with the cache's own
`batch_select_indices`; columns that became padding in every remaining row are cut from the left.
The width is then the longest live row, never more than the model's context.
"""
from __future__ import annotations

import inspect

import torch

from ..logprobs import position_ids
from ..loading import unwrap


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise TypeError(f"continuous batching needs a DynamicCache of full-attention layers, got {type(cache).__name__}")
    return layers


def _pad_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Ba, ..., Wa, D) and (Bb, ..., Wb, D) -> (Ba+Bb, ..., W, D), each left-padded with zeros to W."""
    width = max(a.shape[-2], b.shape[-2])
    out = a.new_zeros((a.shape[0] + b.shape[0], *a.shape[1:-2], width, a.shape[-1]))
    out[:a.shape[0], ..., width - a.shape[-2]:, :] = a
    out[a.shape[0]:, ..., width - b.shape[-2]:, :] = b
    return out


def _pad_cat_mask(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    out = a.new_zeros((a.shape[0] + b.shape[0], width))
    out[:a.shape[0], width - a.shape[1]:] = a
    out[a.shape[0]:, width - b.shape[1]:] = b
    return out


class RunningBatch:
    """Rows in batch order, their KV cache, attention mask over the cache columns, next positions and the
    logits of each row's next token. Empty until the first `join`."""

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.mask = None       # (B, W) long: 1 on real cached tokens
        self.next_pos = None   # (B, 1) position of the token each row feeds next
        self.logits = None     # (B, V) fp32 logits of each row's next token
        self.rows: list = []
        params = inspect.signature(unwrap(model).forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], pad_id: int):
        """(cache, mask, next_pos, logits) of left-padded `prompts`, from one forward pass."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                         **self._keep)
        return self._cache_of(out), mask, mask.sum(-1, keepdim=True), out.logits[:, -1].float()

    def _cache_of(self, out):
        return out.cache if self._cache_kw == "cache" else out.past_key_values

    def join(self, rows: list, prompts: list[list[int]], pad_id: int, expand: list[int] | None = None):
        """Prefill `prompts` and add `rows` at the end of the batch; row i continues prompt `expand[i]`
        (default: prompt i). Several choices of one prompt share its prefill: its cache row is repeated."""
        cache, mask, next_pos, logits = self.prefill(prompts, pad_id)
        if expand is not None and expand != list(range(len(prompts))):
            idx = torch.tensor(expand, dtype=torch.long)
            cache.batch_select_indices(idx)
            mask, next_pos, logits = mask[idx], next_pos[idx], logits[idx]
        new_layers = _layers(cache)  # checked before anything changes: a failed join leaves the batch as it was
        if not self.rows:
            self.cache, self.mask, self.next_pos, self.logits, self.rows = cache, mask, next_pos, logits, list(rows)
            return
        for mine, new in zip(_layers(self.cache), new_layers):
            mine.keys, mine.values = _pad_cat(mine.keys, new.keys), _pad_cat(mine.values, new.values)
        self.mask = _pad_cat_mask(self.mask, mask)
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.logits = torch.cat([self.logits, logits])
        self.rows.extend(rows)

    def keep(self, keep: list[int]):
        """Keep only the rows at indices `keep` (in order), then cut all-padding columns on the left."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.cache = self.mask = self.next_pos = self.logits = None
            self.rows = []
            return
        idx = torch.tensor(keep, dtype=torch.long)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos, self.logits = self.mask[idx], self.next_pos[idx], self.logits[idx]
        self.rows = [self.rows[i] for i in keep]
        cut = int(self.mask.any(0).long().argmax())  # first column some row still uses
        if cut:
            for layer in _layers(self.cache):
                layer.keys, layer.values = layer.keys[..., cut:, :], layer.values[..., cut:, :]
            self.mask = self.mask[:, cut:]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor):
        """Feed one sampled token per row (B,) and compute every row's next logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        out = self.model(input_ids=tokens.unsqueeze(-1), attention_mask=self.mask, position_ids=self.next_pos,
                         use_cache=True, **{self._cache_kw: self.cache}, **self._keep)
        self.cache, self.logits = self._cache_of(out), out.logits[:, -1].float()
        self.next_pos = self.next_pos + 1


def check_batching(model, pad_id: int):
    """Fail at start-up, not on the first request, if this model's cache cannot be joined and cut
    (e.g. sliding-window layers): two one-token prompts, a join and a step."""
    batch = RunningBatch(model)
    batch.join([0], [[pad_id]], pad_id)
    batch.join([1], [[pad_id, pad_id]], pad_id)
    batch.step(torch.tensor([pad_id, pad_id]))
    batch.keep([1])
