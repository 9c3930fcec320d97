"""KTO on unpaired good/bad feedback (Ethayarajh et al. 2024).

    tinyrlhf kto --config configs/family_tree/kto.yaml desirable_weight=1.33

Each example's reference point z0 comes from MISMATCHED pairs: the prompts of the micro-batch paired
with other examples' completions (a fixed random pairing per example, drawn once from the seed), scored
by the policy without gradient and by the reference; z0 = max(0, mean(policy - ref)) (KTO paper, §4.1).
Reference log-probs of matched and mismatched pairs are computed once and cached, like for DPO.
"""
from __future__ import annotations

import random
import time

import torch

from .. import losses as L
from ..config import KTOConfig
from ..data.collate import BatchPlan, TruncationStats, encode, pad
from ..errors import DataError
from ..logprobs import token_logps
from ..models import add_lora, build_model, save_hf
from .data import begin_run
from .engine import fit
from .preference import policy_evaluator
from .reference import model_fingerprint, reference_logps
from .sft import task_corpus


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
    model, tokenizer = build_model(cfg.model, task_corpus(task, cfg.data.seed), seed=cfg.seed)
    model = add_lora(model, cfg.lora).to(device)

    stats = TruncationStats()
    prompts, completions = [r.prompt for r in records], [r.completion for r in records]
    other = mismatch(len(records), cfg.seed)
    matched = encode(tokenizer, prompts, completions, cfg.data.max_length, stats)
    mismatched = encode(tokenizer, prompts, [completions[j] for j in other], cfg.data.max_length)
    desirable = torch.tensor([r.label for r in records], dtype=torch.bool)
    t_ref = time.time()
    key = model_fingerprint(model)
    ref_matched, _ = reference_logps(model, matched, tokenizer.pad_token_id, device, cfg.train.precision,
                                     cfg.ref_cache_dir, model_key=key)
    ref_mismatched, _ = reference_logps(model, mismatched, tokenizer.pad_token_id, device,
                                        cfg.train.precision, cfg.ref_cache_dir, model_key=key)
    t_ref = time.time() - t_ref
    plan = BatchPlan([len(p) + len(c) for p, c in matched], cfg.train.batch_size, cfg.seed)

    def make_batch(idx):
        batch = pad([matched[i] for i in idx], tokenizer.pad_token_id)
        mis = pad([mismatched[i] for i in idx], tokenizer.pad_token_id)
        batch.update({f"mis_{k}": v for k, v in mis.items()})
        batch["ref"], batch["ref_mis"], batch["desirable"] = ref_matched[idx], ref_mismatched[idx], desirable[idx]
        return batch

    def loss_fn(batch):
        policy = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum(-1)
        with torch.no_grad():  # z0 is a detached estimate: no gradient flows through the mismatched pairs
            policy_mis = token_logps(model, batch["mis_input_ids"], batch["mis_attention_mask"],
                                     batch["mis_completion_mask"]).sum(-1)
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
