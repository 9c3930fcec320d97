"""Tokenisation with one truncation policy, length-bucketed batch plans, and padding.

Truncation policy (documented in the README): when prompt + completion exceeds `max_length` tokens,
keep the END of the prompt (the question is usually last) and the START of the completion. The prompt
keeps at least half of `max_length` when it can; the completion gets the rest.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass
class TruncationStats:
    examples: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0

    def as_metrics(self, prefix: str = "data/") -> dict:
        return {f"{prefix}examples": self.examples, f"{prefix}prompt_truncated": self.prompt_truncated,
                f"{prefix}completion_truncated": self.completion_truncated}


def truncate(prompt_ids: list[int], completion_ids: list[int], max_length: int,
             stats: TruncationStats | None = None) -> tuple[list[int], list[int]]:
    """Apply the truncation policy to one example; counts what it cut in `stats`."""
    if stats is not None:
        stats.examples += 1
    if len(prompt_ids) + len(completion_ids) <= max_length:
        return prompt_ids, completion_ids
    prompt_budget = max(max_length - len(completion_ids), max_length // 2)
    prompt_budget = min(prompt_budget, len(prompt_ids), max_length - 1)
    new_prompt = prompt_ids[len(prompt_ids) - prompt_budget:] if prompt_budget > 0 else []
    new_completion = completion_ids[: max_length - len(new_prompt)]
    if stats is not None:
        stats.prompt_truncated += len(new_prompt) < len(prompt_ids)
        stats.completion_truncated += len(new_completion) < len(completion_ids)
    return new_prompt, new_completion


def encode(tokenizer, prompts: list[str], completions: list[str], max_length: int,
           stats: TruncationStats | None = None, add_eos: bool = True) -> list[tuple[list[int], list[int]]]:
    """Tokenise prompts and completions separately (so the boundary is exact), append EOS to each
    completion, and truncate. Returns [(prompt_ids, completion_ids), ...]."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"] if completions else []
    eos = [tokenizer.eos_token_id] if add_eos else []
    return [truncate(p, c + eos, max_length, stats) for p, c in zip(p_ids, c_ids)]


def pad(examples: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (prompt, completion) id lists into input_ids, attention_mask and completion_mask, (B, T).
    An example may carry a third list, a 0/1 loss mask over its prompt ids (a conversation's earlier assistant
    turns, data/conversation.py): completion_mask is then 1 on those prompt tokens too."""
    width = max(len(e[0]) + len(e[1]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    comp = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, c, *prompt_loss) in enumerate(examples):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        attn[i, :n] = 1
        comp[i, len(p):n] = 1
        if prompt_loss and p:
            comp[i, :len(p)] = torch.tensor(prompt_loss[0], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}


def truncate_group(prompt_ids: list[int], completions: list[list[int]], max_length: int,
                   stats: TruncationStats | None = None, counted: int | None = None,
                   anchor: int | None = None) -> tuple[list[int], list[list[int]]]:
    """Truncate one prompt shared by several completions (a preference pair, KTO's matched and mismatched
    completion) so that every completion keeps the SAME prompt: the pair compares pi(y_w|x) with
    pi(y_l|x) under one x. The prompt gets the budget the longest completion leaves it, or with
    `anchor` the budget completion `anchor` leaves it (that one is then cut exactly as `truncate` would
    cut it alone; the others are cut to fit). `stats` counts the first `counted` completions (default
    all) as examples."""
    sizing = completions[anchor] if anchor is not None else max(completions, key=len)
    prompt, _ = truncate(prompt_ids, sizing, max_length)
    room = max_length - len(prompt)
    if stats is not None:
        counted_cs = completions[:counted]
        stats.examples += len(counted_cs)
        stats.prompt_truncated += len(counted_cs) * (len(prompt) < len(prompt_ids))
        stats.completion_truncated += sum(len(c) > room for c in counted_cs)
    return prompt, [c[:room] for c in completions]


def encode_groups(tokenizer, prompts: list[str], completions: list[list[str]], max_length: int,
                  stats: TruncationStats | None = None, counted: int | None = None,
                  anchor: int | None = None) -> list[tuple[list[int], list[list[int]]]]:
    """Like `encode`, for prompts that each have k completions: [(prompt_ids, [completion_ids] * k)]."""
    k = len(completions[0]) if completions else 0
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    flat = [c for cs in completions for c in cs]
    c_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    eos = [tokenizer.eos_token_id]
    return [truncate_group(p, [c + eos for c in c_ids[i * k:(i + 1) * k]], max_length, stats, counted, anchor)
            for i, p in enumerate(p_ids)]


def pad_groups(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch prompts that each have k completions, for `logprobs.grouped_token_logps`.

    prompt_ids / prompt_mask (B, P): prompts LEFT-padded, so every prompt ends at column P-1.
    completion_ids / completion_mask (B*k, C): completions right-padded; row i*k + j is completion j of
    prompt i (so `.view(B, k)` of per-row values puts each prompt's completions in one row)."""
    k = len(groups[0][1])
    if any(len(cs) != k for _, cs in groups):
        raise ValueError("every prompt in a group batch needs the same number of completions")
    p_width = max(len(p) for p, _ in groups)
    rows = [c for _, cs in groups for c in cs]
    c_width = max(len(c) for c in rows)
    pids = torch.full((len(groups), p_width), pad_id, dtype=torch.long)
    pmask = torch.zeros((len(groups), p_width), dtype=torch.long)
    for i, (p, _) in enumerate(groups):
        if p:
            pids[i, p_width - len(p):] = torch.tensor(p, dtype=torch.long)
            pmask[i, p_width - len(p):] = 1
    cids = torch.full((len(rows), c_width), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(rows), c_width), dtype=torch.long)
    for r, c in enumerate(rows):
        cids[r, :len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[r, :len(c)] = 1
    return {"prompt_ids": pids, "prompt_mask": pmask, "completion_ids": cids, "completion_mask": cmask}


def group_slot(batch: dict[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
    """The k=1 `pad_groups` batch of each prompt's j-th completion."""
    k = batch["completion_ids"].shape[0] // max(batch["prompt_ids"].shape[0], 1)
    return {**batch, "completion_ids": batch["completion_ids"][j::k],
            "completion_mask": batch["completion_mask"][j::k]}


@dataclass
class BatchPlan:
    """Deterministic micro-batches of example indices, bucketed by length so padding is not wasted.

    Each epoch: shuffle with a generator seeded by (seed, epoch), sort within windows of 50 batches
    by length, cut into batches, shuffle the batch order. Micro-batch k of the whole run is always the
    same for the same seed, which is what makes resume exact."""
    lengths: list[int]
    batch_size: int
    seed: int
    drop_last: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._cache:
            rng = random.Random(self.seed * 1_000_003 + e)
            idx = list(range(len(self.lengths)))
            rng.shuffle(idx)
            window = self.batch_size * 50
            batches = []
            for w in range(0, len(idx), window):
                chunk = sorted(idx[w:w + window], key=lambda i: self.lengths[i])
                batches += [chunk[b:b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            if self.drop_last and len(idx) >= self.batch_size:
                batches = [b for b in batches if len(b) == self.batch_size]
            rng.shuffle(batches)
            self._cache = {e: batches}
        return self._cache[e]

    def per_epoch(self) -> int:
        return len(self.epoch(0))

    def iter_from(self, micro_step: int):
        """Yield micro-batches starting at global micro-batch number `micro_step`."""
        n = self.per_epoch()
        if n == 0:
            raise ValueError("no full batch: fewer examples than batch_size")
        e, k = divmod(micro_step, n)
        while True:
            batches = self.epoch(e)
            for b in batches[k:]:
                yield b
            e, k = e + 1, 0
