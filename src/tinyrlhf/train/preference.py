"""Offline preference optimisation on pairs: DPO, IPO, cDPO, hinge (SLiC), SimPO, ORPO.

    tinyrlhf dpo --config configs/family_tree/dpo.yaml loss=ipo beta=0.5

Chosen and rejected go through the policy in ONE forward (a 2B batch). Reference log-probs are
computed once and cached (train/reference.py); reference-free losses (SimPO, ORPO) compute none.
"""
from __future__ import annotations

import time

import torch

from .. import losses as L
from ..config import PreferenceConfig
from ..data.collate import BatchPlan, TruncationStats, encode, pad
from ..eval.policy import completion_logps, policy_eval
from ..logprobs import token_logps
from ..models import add_lora, build_model, save_hf
from .data import begin_run
from .engine import fit
from .reference import model_fingerprint, reference_disabled, reference_logps
from .sft import task_corpus


def _loss(cfg: PreferenceConfig, batch, policy_sums, policy_counts):
    """Per-example losses and metrics of `cfg.loss`, from the (2B,) policy sums/counts of a batch."""
    pc, pr = policy_sums.chunk(2)
    nc, nr = policy_counts.chunk(2)
    if cfg.loss == "simpo":  # length-normalised log-probs, no reference (Meng et al. 2024, eq. 6)
        return L.simpo_loss(pc / nc, pr / nr, beta=cfg.beta, gamma=cfg.gamma)
    if cfg.loss == "orpo":  # ORPO: NLL on chosen + odds-ratio term (Hong et al. 2024, eq. 6)
        return L.orpo_loss(pc / nc, pr / nr, -pc / nc, lam=cfg.orpo_lambda)
    refs = (batch["ref_chosen"], batch["ref_rejected"])
    if cfg.loss in ("dpo", "cdpo"):
        smoothing = cfg.label_smoothing if cfg.loss == "cdpo" else 0.0
        return L.dpo_loss(pc, pr, *refs, beta=cfg.beta, label_smoothing=smoothing)
    return L.PREFERENCE_LOSSES[cfg.loss](pc, pr, *refs, beta=cfg.beta)


def reference_scorer(model, tokenizer, device, precision):
    """Log-probs under the reference for evaluation KL: the policy with adapters off (LoRA), else the
    starting weights reloaded only for the duration of the call (never kept next to the policy)."""
    def score(prompts, completions):
        if hasattr(model, "disable_adapter"):
            with reference_disabled(model):
                return completion_logps(model, tokenizer, prompts, completions, device, precision)
        ref = initial()
        lp = completion_logps(ref, tokenizer, prompts, completions, device, precision)
        del ref
        return lp

    initial = None
    if not hasattr(model, "disable_adapter"):
        path = getattr(model.config, "_name_or_path", "")
        if not path:
            return None
        from transformers import AutoModelForCausalLM

        def initial():
            return AutoModelForCausalLM.from_pretrained(path).to(device)
    return score


def policy_evaluator(model, tokenizer, task, cfg, device):
    """The `evaluate` callback of a policy-optimisation run: gold reward and KL to the reference."""
    scorer = reference_scorer(model, tokenizer, device, cfg.train.precision)

    def evaluate():
        if task is None:
            return {}
        return policy_eval(model, tokenizer, task, cfg.eval, device, cfg.seed, cfg.data.seed,
                           cfg.train.precision, scorer)
    return evaluate


def run_preference(cfg: PreferenceConfig) -> dict:
    start = begin_run(cfg, "pair")
    if isinstance(start, dict):
        return start
    run, device, task, pairs = start.run, start.device, start.task, start.train
    model, tokenizer = build_model(cfg.model, task_corpus(task, cfg.data.seed), seed=cfg.seed)
    model = add_lora(model, cfg.lora).to(device)

    stats = TruncationStats()
    prompts = [p.prompt for p in pairs]
    chosen = encode(tokenizer, prompts, [p.chosen for p in pairs], cfg.data.max_length, stats)
    rejected = encode(tokenizer, prompts, [p.rejected for p in pairs], cfg.data.max_length, stats)
    t_ref = time.time()
    if cfg.loss in L.REFERENCE_FREE:
        ref_chosen = ref_rejected = torch.zeros(len(pairs))
    else:
        key = model_fingerprint(model)
        ref_chosen, _ = reference_logps(model, chosen, tokenizer.pad_token_id, device, cfg.train.precision,
                                        cfg.ref_cache_dir, model_key=key)
        ref_rejected, _ = reference_logps(model, rejected, tokenizer.pad_token_id, device,
                                          cfg.train.precision, cfg.ref_cache_dir, model_key=key)
    t_ref = time.time() - t_ref
    lengths = [max(len(a[0]) + len(a[1]), len(b[0]) + len(b[1])) for a, b in zip(chosen, rejected)]
    plan = BatchPlan(lengths, cfg.train.batch_size, cfg.seed)

    def make_batch(idx):
        batch = pad([chosen[i] for i in idx] + [rejected[i] for i in idx], tokenizer.pad_token_id)
        batch["ref_chosen"], batch["ref_rejected"] = ref_chosen[idx], ref_rejected[idx]
        return batch

    def loss_fn(batch):
        tok = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        counts = batch["completion_mask"][:, 1:].sum(-1).clamp(min=1)  # (2B,)
        losses, metrics = _loss(cfg, batch, tok.sum(-1), counts)
        return losses.mean(), metrics

    evaluate = policy_evaluator(model, tokenizer, task, cfg, device)
    summary = fit(run, model, cfg.train, plan, device, make_batch, loss_fn, evaluate,
                  stop_after=cfg.train.stop_after, desc=cfg.loss)
    if summary["finished"]:
        save_hf(model, tokenizer, run.final, merge_lora=cfg.lora.merge or not cfg.lora.enabled)
    summary.update(**start.data_metrics, **stats.as_metrics(), reference_seconds=t_ref,
                   wall_seconds=time.time() - start.t_start, device=str(device), loss=cfg.loss)
    run.write_summary(summary)
    return summary
