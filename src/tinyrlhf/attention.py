"""Attention for short sequences on CPU: scores and probabilities as plain batched matmuls.

PyTorch's CPU scaled-dot-product attention (the flash kernel transformers' "sdpa" calls) keeps little for
backward but is slow there: measured on this CPU (1 thread, bf16, 8 x 12 heads x 118 tokens x 64) it
takes 5.3 ms forward + 22 ms backward per layer, while the same math as batched matmuls (AMX in bf16)
takes 3.7 + 6.8 ms. "tinyrlhf" attention is that math, with a backward written out so that it keeps only
q, k, v and the probabilities P (in v's dtype; no fp32 softmax output, no scores):

    S = scale * q k^T + mask,  P = softmax(S),  O = P v
    dV = P^T dO,  dP = dO v^T,  dS = P * (dP - rowsum(P * dP)),  dq = scale * dS k,  dk = scale * dS^T q

P costs Tq x Tk per head, against (2 Tq + 2 Tk) x head_dim for what flash keeps (q, k, v, O), so it is used
only while it is the smaller of the two (Tk <= 4 x 64 = 256 for GPT-2's square case); longer inputs, any
other device, dropout, grouped-query heads and the models' special options (sliding window, soft-capping,
sinks) go to SDPA, and so does a boolean mask. The mask is transformers' additive "eager" mask, so fully
masked rows (left padding) stay finite.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "tinyrlhf"
CHOICES = (NAME, "sdpa", "eager")
_SPECIAL = ("sliding_window", "softcap", "s_aux", "sinks")


class _SavedProbsAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        s = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
        if mask is not None:
            s = s.add_(mask)
        p = torch.softmax(s, dim=-1).to(v.dtype)
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return torch.matmul(p, v)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, p = ctx.saved_tensors
        grad_out = grad_out.to(v.dtype)
        grad_v = torch.matmul(p.transpose(-1, -2), grad_out)
        grad_p = torch.matmul(grad_out, v.transpose(-1, -2)).float()
        pf = p.float()
        grad_s = (pf * (grad_p - (pf * grad_p).sum(-1, keepdim=True))).mul_(ctx.scale).to(q.dtype)
        return torch.matmul(grad_s, k), torch.matmul(grad_s.transpose(-1, -2), q), grad_v, None, None


def _fits(query, key) -> bool:
    tq, tk, d = query.shape[-2], key.shape[-2], query.shape[-1]
    return tq * tk <= 2 * (tq + tk) * d


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: (B, H, T, D) inputs -> ((B, T, H, D) output, None)."""
    if (query.device.type != "cpu" or (dropout and module.training) or query.shape[1] != key.shape[1]
            or (attention_mask is None and query.shape[-2] > 1) or not _fits(query, key)
            or (attention_mask is not None and attention_mask.dtype == torch.bool)
            or any(kwargs.get(name) is not None for name in _SPECIAL)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = _SavedProbsAttention.apply(query, key, value, attention_mask, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention_forward)
AttentionMaskInterface.register(NAME, eager_mask)


def set_attention(model, name: str):
    """Switch a loaded model to attention `name` (one of CHOICES)."""
    model.set_attn_implementation(name)
