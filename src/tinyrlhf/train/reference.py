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

from .. import dist
from ..data.collate import pad_groups
from ..diskio import disk_errors
from ..logprobs import grouped_token_logps, scored_tokens
from ..loading import unwrap
from .engine import autocast


def model_fingerprint(model) -> str:
    """Hash of the base weights (LoRA adapter weights excluded: they are the trained part)."""
    h = hashlib.sha1()
    for name, t in sorted(unwrap(model).state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().data)  # a view: no 0.5 GB copy
    return h.hexdigest()[:16]


def data_fingerprint(examples: list[tuple[list[int], list[int]]]) -> str:
    h = hashlib.sha1()
    for p, c in examples:
        h.update(repr((p, c)).encode())
    return h.hexdigest()[:16]


def reference_disabled(model):
    """Context in which `model` computes the reference: adapters off for peft models, else as is."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def _read_cache(path: str, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(sums, counts) from a cache file, or None when there is none. A file that does not load as two
    finite (k, n) tensors (truncated by a kill mid-write in an older version, or damaged on disk) is
    reported on one line and recomputed: the cache holds nothing that cannot be rebuilt."""
    if not os.path.isfile(path):
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        sums, counts = cached["sums"], cached["counts"]
        ok = sums.shape == counts.shape == (k, n) and bool(torch.isfinite(sums).all())
        problem = "" if ok else f"shape {tuple(sums.shape)} instead of {(k, n)}, or non-finite values"
    except Exception as e:  # a truncated zip, an unpickling error, a missing key: all mean "rebuild it"
        problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not problem:
        return sums, counts
    print(f"reference cache {path} is unreadable ({problem}); recomputing it", flush=True)
    os.remove(path)
    return None


@torch.no_grad()
def group_logps(model, groups, pad_id: int, device, precision: str, *, share_prompt: bool = True,
                batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion-token log-probs under `model` as it is (in eval mode, no gradient) and the
    scored-token counts, each (k, N), for `groups` = [(prompt_ids, [completion_ids] * k)]."""
    was_training = model.training
    model.eval()
    sums, counts = [], []
    # batches of similar prompt lengths waste little on padding; results go back to data order below
    order = sorted(range(len(groups)), key=lambda i: len(groups[i][0]))
    for i in range(0, len(order), batch_size):
        chunk = [groups[j] for j in order[i:i + batch_size]]
        batch = {k: v.to(device) for k, v in pad_groups(chunk, pad_id).items()}
        with autocast(device, precision):
            tok = grouped_token_logps(model, batch, share_prompt=share_prompt)
        sums.append(tok.sum(-1).float().cpu().view(len(chunk), -1).T)  # (k, b)
        counts.append(scored_tokens(batch).cpu().view(len(chunk), -1).T)
    model.train(was_training)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return torch.cat(sums, 1)[:, inverse], torch.cat(counts, 1)[:, inverse]


@torch.no_grad()
def reference_logps(model, groups, pad_id: int, device, precision: str, cache_dir: str, *,
                    share_prompt: bool = True, batch_size: int = 32,
                    model_key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion-token log-probs under the reference (the model as loaded; adapters disabled) and
    the scored-token counts, each (k, N): entry [j, i] is completion j of group i, for `groups` =
    [(prompt_ids, [completion_ids] * k)] (`collate.encode_groups`). Cached in `cache_dir`. Pass
    `model_key` (model_fingerprint of the same weights) when calling more than once: hashing 124M
    weights takes ~1 s."""
    layout = "shared" if share_prompt else "flat"
    key = f"{model_key or model_fingerprint(model)}-{data_fingerprint(groups)}-{precision}-{layout}"
    path = os.path.join(cache_dir, f"{key}.pt")
    k = len(groups[0][1]) if groups else 0
    if dist.active():  # torchrun: rank 0 reads the cache; on a miss each rank scores its share
        cached = dist.broadcast_object(_read_cache(path, k, len(groups)) if dist.is_main() else None)
    else:
        cached = _read_cache(path, k, len(groups))
    if cached is not None:
        return cached
    part = groups[dist.shard_range(len(groups))]
    sums, counts = torch.zeros(k, 0), torch.zeros(k, 0, dtype=torch.long)  # (an empty share: fewer groups than ranks)
    if part:
        with reference_disabled(model):
            sums, counts = group_logps(model, part, pad_id, device, precision, share_prompt=share_prompt,
                                       batch_size=batch_size)
    if dist.active():  # computed once over all ranks, shared with every rank
        shares = dist.all_gather_object((sums, counts))
        sums, counts = torch.cat([s for s, _ in shares], 1), torch.cat([c for _, c in shares], 1)
        if not dist.is_main():
            return sums, counts
    tmp = f"{path}.tmp{os.getpid()}"
    with disk_errors("could not write the reference cache", path, cleanup=[tmp]):
        os.makedirs(cache_dir, exist_ok=True)
        torch.save({"sums": sums, "counts": counts}, tmp)
        os.replace(tmp, path)
    return sums, counts
