"""Reference log-probabilities, computed once per (model, data) and cached on disk.

Offline methods (DPO family, KTO) compare the policy to a frozen reference. Instead of keeping a second
model in memory for the whole run, the reference's sequence log-probs are computed once before training
(with LoRA: the same network with its adapters disabled) and cached under a key made of the model's
weights and the encoded data, so other losses, seeds and reruns on the same SFT model reuse them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os

import torch

from ..data.collate import pad
from ..logprobs import token_logps
from ..models import unwrap
from .engine import autocast


def model_fingerprint(model) -> str:
    """Hash of the base weights (LoRA adapter weights excluded: they are the trained part)."""
    h = hashlib.sha1()
    for name, t in sorted(unwrap(model).state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(examples: list[tuple[list[int], list[int]]]) -> str:
    h = hashlib.sha1()
    for p, c in examples:
        h.update(repr((p, c)).encode())
    return h.hexdigest()[:16]


def reference_disabled(model):
    """Context in which `model` computes the reference: adapters off for peft models, else as is."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@torch.no_grad()
def reference_logps(model, examples, pad_id: int, device, precision: str, cache_dir: str,
                    batch_size: int = 64, model_key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token log-probs, completion token count) per example, (N,) each, under the
    reference (the model as loaded; adapters disabled). Cached in `cache_dir`. Pass `model_key`
    (model_fingerprint of the same weights) when calling more than once: hashing 124M weights takes ~1 s."""
    key = f"{model_key or model_fingerprint(model)}-{data_fingerprint(examples)}-{precision}"
    path = os.path.join(cache_dir, f"{key}.pt")
    if os.path.isfile(path):
        cached = torch.load(path)
        return cached["sums"], cached["counts"]
    was_training = model.training
    model.eval()
    sums, counts = [], []
    with reference_disabled(model):
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in pad(examples[i:i + batch_size], pad_id).items()}
            with autocast(device, precision):
                tok = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            sums.append(tok.sum(-1).float().cpu())
            counts.append(batch["completion_mask"][:, 1:].sum(-1).cpu())
    model.train(was_training)
    sums, counts = torch.cat(sums), torch.cat(counts)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"sums": sums, "counts": counts}, tmp)
    os.replace(tmp, path)
    return sums, counts
