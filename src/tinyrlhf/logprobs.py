"""Per-token log-probabilities of completion tokens without materialising fp32 full-vocabulary logits
for the whole batch: the LM head is applied only to completion positions, in row chunks, and each
chunk's logits are upcast to fp32 on their own (and recomputed in backward when they would be large)."""
from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import packing
from .models import trunk_and_head, trunk_hidden

CHUNK_ROWS = 1024
# Recompute a chunk's logits in backward instead of keeping them when they exceed this many floats.
RECOMPUTE_ABOVE = 16 * 1024 * 1024


def position_ids(attention_mask):
    """Positions counted over real tokens only, so a left-padded row (rollouts) gets the same positions
    as the unpadded sequence; identical to arange for right-padded rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model) -> str:
    """The keyword a transformers forward takes its key/value cache under: `cache` in recent transformers 5
    releases, which deprecate the older `past_key_values` (and warn on every call), else `past_key_values`.
    Asked of the forward's own signature, so a version that would silently swallow an unknown keyword in
    **kwargs never gets one."""
    return _cache_kwarg_of(type(model.get_base_model() if hasattr(model, "get_base_model") else model))


def output_cache(out):
    """The key/value cache a forward returned (`out.cache` or, in older releases, `out.past_key_values`)."""
    return out["cache"] if "cache" in out else out.past_key_values


def _chunk_logps(head, h, targets, temperature: float):
    logits = head(h).float()  # (N, V) in fp32: log-softmax needs the precision
    if temperature != 1.0:
        logits = logits / temperature
    return -F.cross_entropy(logits, targets, reduction="none")


def token_logps(model, input_ids, attention_mask, completion_mask, *, temperature: float = 1.0,
                return_hidden: bool = False, seq_ids=None):
    """Log-prob of each completion token given what precedes it.

    input_ids, attention_mask, completion_mask: (B, T). Returns (B, T-1) log-probs, zero where
    the target token is not a completion token; with return_hidden, also the trunk's (B, T, H).
    Temperature divides the logits as in sampling (lm-human-preference-details: the trainer must
    score samples with the same temperature that drew them). A packed batch (data/packing.py) passes
    `seq_ids` and no attention_mask; a sequence's first token is then never a target, as column 0 is not."""
    trunk, head = trunk_and_head(model)
    hidden = trunk_hidden(trunk, input_ids, attention_mask, seq_ids)  # (B, T, H)
    # token t+1 is predicted at position t
    target = completion_mask[:, 1:].bool()
    if seq_ids is not None:
        target = target & packing.same_sequence(seq_ids)
    out = _head_logps(head, hidden[:, :-1], input_ids[:, 1:], target, temperature)
    return (out, hidden) if return_hidden else out


def _head_logps(head, predictors, targets, target_mask, temperature: float):
    """(B, T) fp32 log-probs of `targets` where `target_mask`, 0 elsewhere, from the (B, T, H) hidden
    states that predict them; the LM head runs on masked rows only, CHUNK_ROWS at a time."""
    h, tg = predictors[target_mask], targets[target_mask]  # (N, H), (N,)
    vocab = head.weight.shape[0]
    pieces = []
    for i in range(0, h.shape[0], CHUNK_ROWS):
        hc, tc = h[i:i + CHUNK_ROWS], tg[i:i + CHUNK_ROWS]
        if torch.is_grad_enabled() and hc.requires_grad and hc.shape[0] * vocab > RECOMPUTE_ABOVE:
            pieces.append(checkpoint(_chunk_logps, head, hc, tc, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, hc, tc, temperature))
    flat = torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(target_mask.shape, dtype=torch.float32, device=predictors.device)
    return out.masked_scatter(target_mask, flat)


def _per_prompt(batch) -> int:
    """k, the completions per prompt of a `pad_groups` batch."""
    return batch["completion_mask"].shape[0] // max(batch["prompt_mask"].shape[0], 1)


def scored_mask(batch):
    """(B*k, C) bool: completion tokens that get a log-prob (all real ones, except the first token of a
    row whose prompt is empty: nothing precedes it)."""
    mask = batch["completion_mask"].bool().clone()
    if batch["prompt_mask"].shape[1]:
        last = batch["prompt_mask"][:, -1].bool().repeat_interleave(_per_prompt(batch))
        mask[:, 0] &= last  # left-padded: the last column is real iff the prompt is not empty
    else:
        mask[:, 0] = False
    return mask


def scored_tokens(batch):
    """(B*k,) number of scored tokens per completion row (the length divisor of SimPO / ORPO)."""
    return scored_mask(batch).sum(-1)


def grouped_token_logps(model, batch, *, share_prompt: bool = True, temperature: float = 1.0):
    """Per-token log-probs of k completions per prompt (a `collate.pad_groups` batch): (B*k, C), row
    i*k + j for completion j of prompt i, zero on padding.

    With `share_prompt` the prompt goes through the trunk ONCE and its key/value cache is repeated for
    its k completions, which then run attending to it (prefix sharing; Wang et al. 2024, "Accelerating
    Direct Preference Optimization with Prefix Sharing"). Gradients reach the prompt through the cache
    from every completion, so the result and its gradient equal the k separate prompt+completion
    forwards, at the cost of P + k*C tokens instead of k*(P + C). Without it (needed under gradient
    checkpointing, which turns the cache off) each prompt+completion runs as its own row.
    The first completion token of a row with an empty prompt has no predictor and is not scored,
    as in `token_logps`."""
    trunk, head = trunk_and_head(model)
    pmask, cids, cmask = batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]
    p_width = pmask.shape[1]
    k = _per_prompt(batch)
    full_mask = torch.cat([pmask.repeat_interleave(k, 0), cmask], 1)
    targets = scored_mask(batch)
    if not share_prompt or p_width == 0:
        ids = torch.cat([batch["prompt_ids"].repeat_interleave(k, 0), cids], 1)
        hidden = trunk(input_ids=ids, attention_mask=full_mask,
                       position_ids=position_ids(full_mask)).last_hidden_state
        if p_width == 0:  # no prompt at all: a placeholder predictor for the (unscored) first tokens
            hidden = torch.cat([hidden[:, :1], hidden], 1)
        predictors = hidden[:, max(p_width - 1, 0):-1]
    else:
        # one embedding lookup for prompts and completions: its backward then builds one dense
        # vocabulary-sized gradient instead of two (7% of a gpt2-small KTO step went to those)
        pids = batch["prompt_ids"]
        embeds = trunk.get_input_embeddings()(torch.cat([pids.flatten(), cids.flatten()]))
        p_embeds, c_embeds = embeds[:pids.numel()].view(*pids.shape, -1), embeds[pids.numel():].view(*cids.shape, -1)
        out = trunk(inputs_embeds=p_embeds, attention_mask=pmask, position_ids=position_ids(pmask), use_cache=True)
        cache = output_cache(out)
        # the prompt's keys/values once per completion; repeat_interleave stays in the graph, and its
        # backward is a sum over the k copies (an index-select's would be a slow scatter-add on CPU)
        cache.batch_repeat_interleave(k)
        hidden = trunk(inputs_embeds=c_embeds, attention_mask=full_mask,
                       position_ids=position_ids(full_mask)[:, p_width:], use_cache=True,
                       **{cache_kwarg(trunk): cache}).last_hidden_state
        predictors = torch.cat([out.last_hidden_state[:, -1:].repeat_interleave(k, 0), hidden[:, :-1]], 1)
    return _head_logps(head, predictors, cids, targets, temperature)


def sequence_logps(model, batch, *, average: bool = False, temperature: float = 1.0):
    """Sum (or mean, for length-normalised losses like SimPO/ORPO) of completion-token log-probs, (B,)."""
    tok = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                      temperature=temperature)
    total = tok.sum(-1)
    if average:
        return total / batch["completion_mask"][:, 1:].sum(-1).clamp(min=1)
    return total
