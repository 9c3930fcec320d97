"""Offline preference optimisation on pairs: DPO, IPO, cDPO, hinge (SLiC), SimPO, ORPO.

    tinyrlhf dpo --config configs/family_tree/dpo.yaml loss=ipo beta=0.5

Chosen and rejected go through the policy together: their shared prompt once, then both completions as
one 2B batch on its key/value cache (train.share_prompt; logprobs.grouped_token_logps). Reference
log-probs are computed once and cached (train/reference.py); reference-free losses (SimPO, ORPO)
compute none for training.

Held-out pairs (data.eval_file or data.eval_split, else the task data directory's eval_pairs.jsonl; the first 1,000) are
scored at eval_every and at the end: `eval/loss` (the run's loss), `eval/accuracy` (share of pairs whose
chosen completion gets the higher implicit reward), `eval/margin` (mean implicit-reward margin) and
`eval/reward_chosen` / `eval/reward_rejected`. The implicit reward is β·(log π(y|x) − log π_ref(y|x))
summed over the completion, with the run's β, for every loss (SimPO and ORPO included, whose training
metrics use their own rewards); the reference log-probs of the held-out pairs are cached like the
training ones.
"""
from __future__ import annotations

import time

import torch

from .. import losses as L
from ..config import PreferenceConfig
from ..data.collate import BatchPlan, TruncationStats, encode_groups, pad_groups
from .policy_eval import completion_logps, policy_eval
from ..logprobs import grouped_token_logps, scored_tokens
from ..loading import unwrap
from ..models import add_lora, build_model, save_hf, store_frozen_base
from .data import begin_run, prompt_format, sized_sampling
from .engine import compute_dtype, fit
from .moved import check_offline
from .parallel import save_final
from .reference import group_logps, model_fingerprint, reference_disabled, reference_logps

EVAL_MAX = 1000  # held-out pairs (or KTO examples) scored at each evaluation


def _loss(cfg: PreferenceConfig, batch, policy_sums, policy_counts):
    """Per-example losses and metrics of `cfg.loss`, from the (2B,) policy sums/counts of a batch (each
    pair's chosen row, then its rejected row)."""
    pc, pr = policy_sums.view(-1, 2).unbind(1)
    nc, nr = policy_counts.view(-1, 2).unbind(1)
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
    if hasattr(model, "disable_adapter"):
        def score(prompts, completions):
            with reference_disabled(model):
                return completion_logps(model, tokenizer, prompts, completions, device, precision)
        return score
    path = getattr(model.config, "_name_or_path", "")
    if not path:
        return None

    def score_reloaded(prompts, completions):
        from ..loading import load_causal_lm
        ref = load_causal_lm(path).to(device)
        lp = completion_logps(ref, tokenizer, prompts, completions, device, precision)
        del ref
        return lp
    return score_reloaded


def policy_evaluator(model, tokenizer, task, cfg, device):
    """The `evaluate` callback of a policy-optimisation run: gold reward and KL to the reference."""
    scorer = reference_scorer(model, tokenizer, device, cfg.train.precision)

    def evaluate():
        if task is None:
            return {}
        return policy_eval(model, tokenizer, task, cfg.eval, device, cfg.seed, cfg.data.seed,
                           cfg.train.precision, scorer)
    return evaluate


def heldout_pairs(cfg: PreferenceConfig, model, tokenizer, pairs, device, share: bool, model_key: str):
    """The held-out pair metrics of the module docstring, as a function of the current policy. The
    reference log-probs are computed (or read from the cache) now, before any training step."""
    pairs = pairs[:EVAL_MAX]
    if not pairs:
        return lambda: {}
    groups = encode_groups(tokenizer, [p.prompt for p in pairs], [[p.chosen, p.rejected] for p in pairs],
                           cfg.data.max_length)
    args = (groups, tokenizer.pad_token_id, device, cfg.train.precision)
    ref, _ = reference_logps(model, *args, cfg.ref_cache_dir, share_prompt=share, model_key=model_key)  # (2, N)

    def evaluate() -> dict:
        policy, counts = group_logps(model, *args, share_prompt=share)  # (2, N): chosen, rejected
        losses, _ = _loss(cfg, {"ref_chosen": ref[0], "ref_rejected": ref[1]}, policy.T.reshape(-1),
                          counts.T.reshape(-1).clamp(min=1))
        # implicit rewards (Rafailov et al. 2023, §5); ORPO has no beta: its own preference weight scales them
        # (accuracy and the margin's sign do not depend on the scale)
        scale = cfg.beta if cfg.beta is not None else cfg.orpo_lambda
        chosen, rejected = scale * (policy - ref)
        return {"eval/loss": losses.mean().item(), "eval/accuracy": (chosen > rejected).float().mean().item(),
                "eval/margin": (chosen - rejected).mean().item(), "eval/reward_chosen": chosen.mean().item(),
                "eval/reward_rejected": rejected.mean().item(), "eval/pairs": len(pairs)}
    return evaluate


def offline_policy(cfg, task, device, corpus: list[str] | None = None):
    """(policy, tokenizer) of a DPO / KTO run: the model with LoRA added, on `device`. With LoRA under bf16
    from a model directory, the adapted layers' frozen weights are kept in bf16 (lora.bf16_base). `corpus`
    trains a preset's tokenizer (default: the task's text)."""
    if corpus is None and task is not None:
        corpus = task.corpus(4000, cfg.data.seed)
    model, tokenizer = build_model(cfg.model, corpus, seed=cfg.seed)
    model = add_lora(model, cfg.lora).to(device)
    if cfg.lora.enabled and cfg.lora.bf16_base and cfg.model.path \
            and compute_dtype(device, cfg.train.precision) == torch.bfloat16:
        store_frozen_base(model, torch.bfloat16)
    return model, tokenizer


def run_preference(cfg: PreferenceConfig) -> dict:
    start = begin_run(cfg, "pair")
    if isinstance(start, dict):
        return start
    run, device, task = start.run, start.device, start.task
    model, tokenizer = offline_policy(cfg, task, device, start.corpus(cfg.data.seed))
    named = {"the training pairs": start.train, "the held-out pairs": start.evals}
    formatted, _ = prompt_format(tokenizer, named, cfg)
    pairs, eval_pairs = formatted["the training pairs"], formatted["the held-out pairs"]
    cfg = sized_sampling(cfg, tokenizer, pairs, unwrap(model).config.max_position_embeddings)

    stats = TruncationStats()
    # one prompt, two completions: chosen and rejected keep the same (truncated) prompt
    groups = encode_groups(tokenizer, [p.prompt for p in pairs], [[p.chosen, p.rejected] for p in pairs],
                           cfg.data.max_length, stats)
    share = cfg.train.share_prompt and not cfg.model.gradient_checkpointing
    t_ref = time.time()
    model_key = model_fingerprint(model)
    if cfg.loss in L.REFERENCE_FREE:
        ref = torch.zeros(2, len(pairs))
    else:
        ref, _ = reference_logps(model, groups, tokenizer.pad_token_id, device, cfg.train.precision,
                                 cfg.ref_cache_dir, share_prompt=share, model_key=model_key)
    heldout = heldout_pairs(cfg, model, tokenizer, eval_pairs, device, share, model_key)
    t_ref = time.time() - t_ref
    plan = BatchPlan([len(p) + max(map(len, cs)) for p, cs in groups], cfg.train.batch_size, cfg.seed)

    def make_batch(idx):
        batch = pad_groups([groups[i] for i in idx], tokenizer.pad_token_id)
        batch["ref_chosen"], batch["ref_rejected"] = ref[0, idx], ref[1, idx]
        return batch

    def loss_fn(batch):  # chosen and rejected rows, in one pass over the shared prompts
        tok = grouped_token_logps(model, batch, share_prompt=share)
        losses, metrics = _loss(cfg, batch, tok.sum(-1), scored_tokens(batch).clamp(min=1))
        return losses.mean(), metrics

    gold = policy_evaluator(model, tokenizer, task, cfg, device)
    summary = fit(run, model, cfg.train, plan, device, make_batch, loss_fn, lambda: {**heldout(), **gold()},
                  stop_after=cfg.train.stop_after, desc=cfg.loss)
    if summary["finished"]:  # did the policy move at all? (one warning with the knob when not: train/moved.py)
        summary.update(check_offline(cfg, summary, cfg.loss, model, tokenizer, eval_pairs or pairs,
                                     reference_scorer(model, tokenizer, device, cfg.train.precision), device))
        save_final(run, model, tokenizer, merge_lora=cfg.lora.merge or not cfg.lora.enabled,
                   save_hf=save_hf)
    summary.update(**start.data_metrics, **stats.as_metrics(), reference_seconds=t_ref,
                   wall_seconds=time.time() - start.t_start, device=str(device), loss=cfg.loss)
    run.write_summary(summary)
    return summary
