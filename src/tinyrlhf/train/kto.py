"""KTO on unpaired good/bad feedback (Ethayarajh et al. 2024).

    tinyrlhf kto --config configs/family_tree/kto.yaml desirable_weight=1.33

Each example's reference point z0 comes from MISMATCHED pairs: the prompts of the micro-batch paired
with other examples' completions (a fixed random pairing per example, drawn once from the seed), scored
by the policy and by the reference; z0 = max(0, mean(policy - ref)), detached (KTO paper, §4.1). Each
prompt runs once, with its matched and mismatched completions on its key/value cache (train.share_prompt).
Reference log-probs of matched and mismatched pairs are computed once and cached, like for DPO.
"""
from __future__ import annotations

import random
import time

import torch

from .. import losses as L
from ..config import KTOConfig
from ..data.collate import BatchPlan, TruncationStats, encode_groups, group_slot, pad_groups
from ..errors import DataError
from ..logprobs import grouped_token_logps
from ..models import save_hf
from .data import begin_run
from .engine import fit
from .preference import offline_policy, policy_evaluator
from .reference import reference_logps


def mismatch(n: int, seed: int) -> list[int]:
    """For each example i, another example j != i whose completion is paired with i's prompt."""
    if n < 2:
        raise DataError("KTO needs at least 2 examples to form mismatched pairs for its reference point")
    rng = random.Random(seed * 7919 + 1)
    shift = [rng.randrange(1, n) for _ in range(n)]
    return [(i + s) % n for i, s in enumerate(shift)]


def run_kto(cfg: KTOConfig) -> dict:
    start = begin_run(cfg, "binary")
    if isinstance(start, dict):
        return start
    run, device, task, records = start.run, start.device, start.task, start.train
    n_good = sum(r.label for r in records)
    model, tokenizer = offline_policy(cfg, task, device)

    stats = TruncationStats()
    prompts, completions = [r.prompt for r in records], [r.completion for r in records]
    other = mismatch(len(records), cfg.seed)
    # prompt i with its own completion and with example other[i]'s: one prompt, two completions. The
    # labelled example is truncated as it would be alone (anchor 0); the mismatched one is cut to fit.
    groups = encode_groups(tokenizer, prompts, [[c, completions[j]] for c, j in zip(completions, other)],
                           cfg.data.max_length, stats, counted=1, anchor=0)
    desirable = torch.tensor([r.label for r in records], dtype=torch.bool)
    share = cfg.train.share_prompt and not cfg.model.gradient_checkpointing
    t_ref = time.time()
    ref, _ = reference_logps(model, groups, tokenizer.pad_token_id, device, cfg.train.precision,
                             cfg.ref_cache_dir, share_prompt=share)
    t_ref = time.time() - t_ref
    plan = BatchPlan([len(p) + len(cs[0]) for p, cs in groups], cfg.train.batch_size, cfg.seed)

    def make_batch(idx):
        batch = pad_groups([groups[i] for i in idx], tokenizer.pad_token_id)
        batch["ref"], batch["ref_mis"], batch["desirable"] = ref[0, idx], ref[1, idx], desirable[idx]
        return batch

    def loss_fn(batch):
        # z0 is a detached estimate, so the mismatched rows carry no gradient into the update. Sharing the
        # prompt, both completions ride one pass (the mismatched ones cost a few tokens); without it, the
        # mismatched rows are a whole extra sequence each, so they run without gradient.
        if share:
            policy, policy_mis = grouped_token_logps(model, batch).sum(-1).view(-1, 2).unbind(1)
        else:
            policy = grouped_token_logps(model, group_slot(batch, 0), share_prompt=False).sum(-1)
            with torch.no_grad():
                policy_mis = grouped_token_logps(model, group_slot(batch, 1), share_prompt=False).sum(-1)
        kl = L.kto_reference_point(policy_mis, batch["ref_mis"])
        losses, metrics = L.kto_loss(policy, batch["ref"], batch["desirable"], kl, beta=cfg.beta,
                                     desirable_weight=cfg.desirable_weight,
                                     undesirable_weight=cfg.undesirable_weight)
        return losses.mean(), metrics

    evaluate = policy_evaluator(model, tokenizer, task, cfg, device)
    summary = fit(run, model, cfg.train, plan, device, make_batch, loss_fn, evaluate,
                  stop_after=cfg.train.stop_after, desc="kto")
    if summary["finished"]:
        save_hf(model, tokenizer, run.final, merge_lora=cfg.lora.merge or not cfg.lora.enabled)
    summary.update(**start.data_metrics, **stats.as_metrics(), reference_seconds=t_ref,
                   desirable=n_good, undesirable=len(records) - n_good,
                   wall_seconds=time.time() - start.t_start, device=str(device))
    run.write_summary(summary)
    return summary
