"""KTO on unpaired good/bad feedback (Ethayarajh et al. 2024).

    tinyrlhf kto --config configs/family_tree/kto.yaml desirable_weight=1.33

Each example's reference point z0 comes from MISMATCHED pairs: the prompts of the micro-batch paired
with other examples' completions (a fixed random pairing per example, drawn once from the seed), scored
by the policy and by the reference; z0 = max(0, mean(policy - ref)), detached (KTO paper, §4.1). Each
prompt runs once, with its matched and mismatched completions on its key/value cache (train.share_prompt).
Reference log-probs of matched and mismatched pairs are computed once and cached, like for DPO.

Held-out examples (data.eval_file or data.eval_split, else the task data directory's eval_pairs.jsonl; pairs count as a
desirable chosen and an undesirable rejected example) are scored at eval_every and at the end:
`eval/loss` (KTO's loss, z0 from the held-out mismatched pairs), `eval/reward_desirable` /
`eval/reward_undesirable` (mean implicit reward β·log π/π_ref), `eval/margin` (their difference),
`eval/label_accuracy` (share of examples on their label's side of z0: log π/π_ref > z0 for desirable
ones) and, when the held-out data are pairs, `eval/accuracy` (share of pairs whose chosen completion
gets the higher implicit reward) with `eval/margin` the mean paired margin.
"""
from __future__ import annotations

import random
import time

import torch

from .. import losses as L
from ..config import KTOConfig
from ..data.collate import BatchPlan, TruncationStats, encode_groups, group_slot, pad_groups
from ..data import PairRecord, load_preferences, pair_to_binary
from ..errors import DataError
from ..logprobs import grouped_token_logps
from .. import dist
from ..loading import unwrap
from ..models import save_hf
from .data import begin_run, eval_source, prompt_format, sized_sampling
from .engine import fit
from .parallel import save_final
from .moved import check_offline
from .preference import EVAL_MAX, offline_policy, policy_evaluator, reference_scorer
from .reference import group_logps, model_fingerprint, reference_logps


def mismatch(n: int, seed: int) -> list[int]:
    """For each example i, another example j != i whose completion is paired with i's prompt."""
    if n < 2:
        raise DataError("KTO needs at least 2 examples to form mismatched pairs for its reference point")
    rng = random.Random(seed * 7919 + 1)
    shift = [rng.randrange(1, n) for _ in range(n)]
    return [(i + s) % n for i, s in enumerate(shift)]


def heldout_examples(cfg: KTOConfig, evals: list) -> tuple[list, int]:
    """(binary examples, n): held-out pairs become their chosen (desirable) and rejected (undesirable)
    completions, the first n*2 examples in pair order; an eval_file (or eval_split) of pairs (read as binary records by
    the loader) is re-read as pairs so that the pairwise accuracy can be reported."""
    pairs = [r for r in evals if isinstance(r, PairRecord)]
    if not pairs and (cfg.data.eval_file or cfg.data.eval_split):
        try:
            pairs = load_preferences(eval_source(cfg.data), cfg.data.format, columns=cfg.data.columns.mapping(),
                                     skip_bad=cfg.data.skip_bad)
        except DataError:  # binary records: no pairing to report
            pairs = []
    if pairs:
        pairs = pairs[:EVAL_MAX // 2]
        return [b for p in pairs for b in pair_to_binary(p)], len(pairs)
    return list(evals[:EVAL_MAX]), 0


def heldout_kto(cfg: KTOConfig, model, tokenizer, examples, n_pairs, device, share, model_key):
    """The held-out metrics of the module docstring, as a function of the current policy."""
    if len(examples) < 2:
        return lambda: {}
    other = mismatch(len(examples), cfg.seed)
    completions = [r.completion for r in examples]
    groups = encode_groups(tokenizer, [r.prompt for r in examples],
                           [[c, completions[j]] for c, j in zip(completions, other)], cfg.data.max_length,
                           anchor=0)
    desirable = torch.tensor([r.label for r in examples], dtype=torch.bool)
    args = (groups, tokenizer.pad_token_id, device, cfg.train.precision)
    ref, _ = reference_logps(model, *args, cfg.ref_cache_dir, share_prompt=share, model_key=model_key)

    def evaluate() -> dict:
        policy, _ = group_logps(model, *args, share_prompt=share)  # (2, N): matched, mismatched
        z0 = L.kto_reference_point(policy[1], ref[1])
        losses, _ = L.kto_loss(policy[0], ref[0], desirable, z0, beta=cfg.beta,
                               desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
        log_ratio = policy[0] - ref[0]
        rewards = cfg.beta * log_ratio
        out = {"eval/loss": losses.mean().item(), "eval/examples": len(examples),
               "eval/label_accuracy": ((log_ratio > z0) == desirable).float().mean().item()}
        if desirable.any():
            out["eval/reward_desirable"] = rewards[desirable].mean().item()
        if not desirable.all():
            out["eval/reward_undesirable"] = rewards[~desirable].mean().item()
        if desirable.any() and not desirable.all():
            out["eval/margin"] = out["eval/reward_desirable"] - out["eval/reward_undesirable"]
        if n_pairs:
            chosen, rejected = rewards[:2 * n_pairs].view(-1, 2).unbind(1)
            out.update({"eval/accuracy": (chosen > rejected).float().mean().item(),
                        "eval/margin": (chosen - rejected).mean().item(), "eval/pairs": n_pairs})
        return out
    return evaluate


def run_kto(cfg: KTOConfig) -> dict:
    start = begin_run(cfg, "binary")
    if isinstance(start, dict):
        return start
    run, device, task = start.run, start.device, start.task
    model, tokenizer = offline_policy(cfg, task, device, start.corpus(cfg.data.seed))
    examples, n_pairs = heldout_examples(cfg, start.evals)
    named = {"the training examples": start.train, "the held-out examples": examples}
    formatted, _ = prompt_format(tokenizer, named, cfg)
    records, examples = formatted["the training examples"], formatted["the held-out examples"]
    cfg = sized_sampling(cfg, tokenizer, records, unwrap(model).config.max_position_embeddings)
    n_good = sum(r.label for r in records)

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
    model_key = model_fingerprint(model)
    ref, _ = reference_logps(model, groups, tokenizer.pad_token_id, device, cfg.train.precision,
                             cfg.ref_cache_dir, share_prompt=share, model_key=model_key)
    heldout = heldout_kto(cfg, model, tokenizer, examples, n_pairs, device, share, model_key)
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
        if dist.active():  # z0 over the GLOBAL micro-batch: the mean of the ranks' (equal) shares, then max(0, .)
            kl = dist.all_reduce_mean((policy_mis.detach().float() - batch["ref_mis"].float()).mean()).clamp(min=0)
        else:
            kl = L.kto_reference_point(policy_mis, batch["ref_mis"])
        losses, metrics = L.kto_loss(policy, batch["ref"], batch["desirable"], kl, beta=cfg.beta,
                                     desirable_weight=cfg.desirable_weight,
                                     undesirable_weight=cfg.undesirable_weight)
        return losses.mean(), metrics

    gold = policy_evaluator(model, tokenizer, task, cfg, device)
    summary = fit(run, model, cfg.train, plan, device, make_batch, loss_fn, lambda: {**heldout(), **gold()},
                  stop_after=cfg.train.stop_after, desc="kto")
    if summary["finished"]:  # did the policy move at all? (train/moved.py)
        summary.update(check_offline(cfg, summary, "kto", model, tokenizer, examples or records,
                                     reference_scorer(model, tokenizer, device, cfg.train.precision), device))
        save_final(run, model, tokenizer, merge_lora=cfg.lora.merge or not cfg.lora.enabled,
                   save_hf=save_hf)
    summary.update(**start.data_metrics, **stats.as_metrics(), reference_seconds=t_ref,
                   desirable=n_good, undesirable=len(records) - n_good,
                   wall_seconds=time.time() - start.t_start, device=str(device))
    run.write_summary(summary)
    return summary
