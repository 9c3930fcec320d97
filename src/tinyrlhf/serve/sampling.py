"""Sampling one token per row of the running batch, with a failure kept to its own row.

The rows of one decoding step belong to unrelated requests, so nothing one row does may reach another:
    * a temperature below MIN_TEMPERATURE is greedy. logits / T overflows fp32 long before T reaches 0
      (T = 1e-38 turns any |logit| > 3.4 into inf, the probabilities into NaN, and inverse-CDF sampling
      then returns token id = vocabulary size), and from T = 1e-5 down sampling already is greedy for any
      logit gap above ~1e-3 (the runner-up's odds are below e^-100);
    * a row whose logits are not finite (NaN, +inf, or every entry -inf: a broken checkpoint, an fp16
      overflow) is reported as a fault of that row and not sampled;
    * rows are sampled in groups of equal (temperature, top_p), as before; if a group's call raises, its
      rows are sampled one by one so that only the row(s) that raise alone fail; a token outside the
      vocabulary is a fault of its row, never handed to the detokeniser.
Each row's uniform is drawn once by the caller, so retrying a row alone samples the same token.
"""
from __future__ import annotations

import collections
import math

import torch

from ..rollout import sample_token

MIN_TEMPERATURE = 1e-5


def effective_temperature(temperature: float) -> float:
    """The temperature the sampler uses: 0 (greedy) below MIN_TEMPERATURE, and for NaN."""
    return temperature if temperature >= MIN_TEMPERATURE and not math.isnan(temperature) else 0.0


def logit_faults(logits: torch.Tensor) -> list[str | None]:
    """Per row of (B, V) logits: why it cannot be sampled, or None. -inf entries alone are fine (masked
    tokens); a row of only -inf has no token to sample."""
    nan, pos_inf, all_neg_inf = logits.isnan().any(-1), logits.isposinf().any(-1), logits.isneginf().all(-1)
    out = []
    for a, b, c in zip(nan.tolist(), pos_inf.tolist(), all_neg_inf.tolist()):
        out.append("the model's logits hold NaN" if a else "the model's logits hold +inf" if b
                   else "the model's logits are -inf for every token" if c else None)
    return out


def sample_rows(logits: torch.Tensor, settings: list[tuple[float, float]], u: torch.Tensor):
    """(tokens (B,), log-probs (B,), faults {row: reason}) for logits (B, V); settings[i] = row i's
    (effective temperature, top_p), u[i] its uniform (ignored when greedy). Faulty rows get token 0."""
    n, vocab = logits.shape
    tokens, logps = torch.zeros(n, dtype=torch.long), torch.zeros(n)
    faults = {i: why for i, why in enumerate(logit_faults(logits)) if why}
    groups = collections.defaultdict(list)
    for i, key in enumerate(settings):
        if i not in faults:
            groups[key].append(i)
    for (temperature, top_p), idx in groups.items():
        _sample_group(logits, u, idx, temperature, top_p, tokens, logps, faults)
    for i in range(n):
        if i not in faults and not 0 <= int(tokens[i]) < vocab:
            faults[i] = f"sampling gave token id {int(tokens[i])}, outside the vocabulary (0..{vocab - 1})"
    return tokens, logps, faults


def _sample_group(logits, u, idx, temperature, top_p, tokens, logps, faults):
    try:
        tok, lp = sample_token(logits[idx], u[idx], temperature, 0, top_p)
    except Exception as e:  # noqa: BLE001 (any failure here is one row's, to be found)
        if len(idx) == 1:
            faults[idx[0]] = f"sampling failed: {e.__class__.__name__}: {e}"
            return
        for i in idx:  # find the row(s) at fault: each alone
            _sample_group(logits, u, [i], temperature, top_p, tokens, logps, faults)
        return
    tokens[idx], logps[idx] = tok, lp
