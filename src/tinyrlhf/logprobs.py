"""Per-token log-probabilities of completion tokens without materialising fp32 full-vocabulary logits
for the whole batch: the LM head is applied only to completion positions, in row chunks, and each
chunk's logits are upcast to fp32 on their own (and recomputed in backward when they would be large)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .models import trunk_and_head

CHUNK_ROWS = 1024
# Recompute a chunk's logits in backward instead of keeping them when they exceed this many floats.
RECOMPUTE_ABOVE = 16 * 1024 * 1024


def position_ids(attention_mask):
    """Positions counted over real tokens only, so a left-padded row (rollouts) gets the same positions
    as the unpadded sequence; identical to arange for right-padded rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _chunk_logps(head, h, targets, temperature: float):
    logits = head(h).float()  # (N, V) in fp32: log-softmax needs the precision
    if temperature != 1.0:
        logits = logits / temperature
    return -F.cross_entropy(logits, targets, reduction="none")


def token_logps(model, input_ids, attention_mask, completion_mask, *, temperature: float = 1.0,
                return_hidden: bool = False):
    """Log-prob of each completion token given what precedes it.

    input_ids, attention_mask, completion_mask: (B, T). Returns (B, T-1) log-probs, zero where
    the target token is not a completion token; with return_hidden, also the trunk's (B, T, H).
    Temperature divides the logits as in sampling (lm-human-preference-details: the trainer must
    score samples with the same temperature that drew them)."""
    trunk, head = trunk_and_head(model)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask)).last_hidden_state  # (B, T, H)
    target_mask = completion_mask[:, 1:].bool()  # token t+1 is predicted at position t
    h = hidden[:, :-1][target_mask]  # (N, H)
    targets = input_ids[:, 1:][target_mask]  # (N,)
    vocab = head.weight.shape[0]
    pieces = []
    for i in range(0, h.shape[0], CHUNK_ROWS):
        hc, tc = h[i:i + CHUNK_ROWS], targets[i:i + CHUNK_ROWS]
        if torch.is_grad_enabled() and hc.requires_grad and hc.shape[0] * vocab > RECOMPUTE_ABOVE:
            pieces.append(checkpoint(_chunk_logps, head, hc, tc, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, hc, tc, temperature))
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(target_mask.shape, dtype=torch.float32, device=hidden.device)
    out = out.masked_scatter(target_mask, flat)
    return (out, hidden) if return_hidden else out


def sequence_logps(model, batch, *, average: bool = False, temperature: float = 1.0):
    """Sum (or mean, for length-normalised losses like SimPO/ORPO) of completion-token log-probs, (B,)."""
    tok = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                      temperature=temperature)
    total = tok.sum(-1)
    if average:
        return total / batch["completion_mask"][:, 1:].sum(-1).clamp(min=1)
    return total
