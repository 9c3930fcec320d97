"""Batched sampling with transformers' `generate` (KV cache, left padding, stop at EOS).
Used by evaluation and reward normalisation; the online-RL rollout engine builds on the same contract:
prompts in, completion strings (cut at EOS) out, reproducible for a seed."""
from __future__ import annotations

import contextlib
import logging

import torch

from .loading import unwrap


class _NoPaddingFalseAlarm(logging.Filter):
    """Drops transformers' "We strongly recommend passing in an `attention_mask`" warning, which `generate` raises
    here although we always pass the mask. Why it fires: when no prompt in a batch is padded, transformers (5.x)
    decodes without a mask (none is needed), and a row that already finished keeps receiving the pad token, which
    for our models is the EOS token (id 0); the warning's heuristic sees that id in the last column and assumes
    padding. Left-padded batches keep their mask (tests/test_rollout.py checks sampling against unpadded rows)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_NoPaddingFalseAlarm())


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, temperature: float = 1.0,
           batch_size: int = 64, seed: int = 0, device: torch.device | None = None) -> list[str]:
    """One completion per prompt. temperature 0 = greedy. Same seed, same completions (on CPU).
    The caller's RNG state is left untouched (resume and determinism depend on it)."""
    device = device or next(model.parameters()).device
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts are left-padded
    limit = unwrap(model).config.max_position_embeddings - max_new_tokens
    kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    # weights stored in bf16 (models.store_frozen_base) run under the autocast they were trained with
    low = {p.dtype for p in model.parameters()} - {torch.float32}
    precision = torch.autocast(device.type, dtype=low.pop()) if low else contextlib.nullcontext()
    out: list[str] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                ids, attn = enc["input_ids"][:, -limit:], enc["attention_mask"][:, -limit:]
                with precision:
                    seqs = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
                for row in seqs[:, ids.shape[1]:].cpu().tolist():
                    if tokenizer.eos_token_id in row:
                        row = row[:row.index(tokenizer.eos_token_id)]
                    out.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out
