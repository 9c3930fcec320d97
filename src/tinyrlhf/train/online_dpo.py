"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"): each step
samples two responses per prompt from the current policy, lets the reward source pick the better one, and
takes a DPO (or IPO) step on these fresh pairs against the frozen reference.

    tinyrlhf online-dpo --config configs/family_tree/online_dpo.yaml reward=runs/family_tree/reward
"""
from __future__ import annotations

import torch

from .. import losses as L
from ..config import OnlineDPOConfig
from .. import dist
from .online import micro_batches, open_online, online_fit, sample_and_score, step_optimizer
from ..logprobs import grouped_token_logps
from .rl import KLController, check_finite, prompts_for_step, reference_model, select_groups


def run_online_dpo(cfg: OnlineDPOConfig) -> dict:
    S = open_online(cfg)
    if isinstance(S, dict):
        return S
    params = [p for p in S.policy.parameters() if p.requires_grad]
    n_minibatches = -(-cfg.rollout.prompts_per_step // cfg.minibatch_size)
    share = cfg.train.share_prompt and not cfg.model.gradient_checkpointing
    dist.check_divisible(cfg.rollout.prompts_per_step, "rollout.prompts_per_step")
    zero = torch.zeros(1)
    metric_keys = ["loss/dpo", *(L.dpo_loss if cfg.loss == "dpo" else L.ipo_loss)(zero, zero, zero, zero,
                                                                                  beta=cfg.beta)[1]]

    def update(step: int, kl: KLController) -> dict:
        # 1. Two samples per prompt (rows 2i and 2i+1), scored by the reward source.
        S.policy.eval()
        prompts = prompts_for_step(S.prompts, step, cfg.rollout.prompts_per_step, cfg.seed)
        ro, prompts, texts, scores, raw_scores = sample_and_score(S, prompts, step, n_per_prompt=2)
        groups = {k: v.to(S.device) for k, v in ro.groups(2).items()}  # each prompt once, its two responses
        mask = ro.response_mask.to(S.device).float()
        # 2. Chosen = the higher score. A tie carries no preference: that pair is dropped this step.
        pair_scores = scores.view(-1, 2)
        keep = pair_scores[:, 0] != pair_scores[:, 1]
        first_wins = (pair_scores[:, 0] > pair_scores[:, 1]).to(S.device)
        # 3. Reference log-probs (the model's own distribution, temperature 1: DPO's π_ref).
        #    Under torchrun each rank scores its own prompts' pairs; the rows are gathered.
        mine, _ = select_groups(groups, dist.shard(torch.arange(groups["prompt_ids"].shape[0], device=S.device)))
        with torch.no_grad(), S.autocast():
            with reference_model(S.policy, S.reference) as ref:
                ref_logprobs = dist.cat_rows(grouped_token_logps(ref, mine, share_prompt=share, temperature=1.0))
        ref_pairs = (ref_logprobs * mask).sum(1).view(-1, 2)  # (prompts, 2)
        # 4. DPO/IPO steps over the kept pairs, both responses of a prompt in one pass over that prompt.
        S.policy.train()
        stats: dict[str, list[float]] = {}
        loss_fn = L.dpo_loss if cfg.loss == "dpo" else L.ipo_loss
        pairs = torch.nonzero(keep).flatten().to(S.device)
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        for mb in pairs[torch.randperm(len(pairs), generator=g).to(S.device)].split(cfg.minibatch_size):
            parts = list(micro_batches(mb, cfg.train.batch_size))
            for i, (part, weight) in enumerate(parts):
                # under torchrun: this rank's pairs of the micro-batch (kept pairs vary, so a share may be
                # uneven or empty); its loss is its part of the micro-batch mean, as DDP averages over ranks
                own = dist.shard(part)
                with S.trainer.accumulating(last=i == len(parts) - 1):
                    if len(own):
                        sub, rows = select_groups(groups, own)
                        with S.autocast():
                            logprobs = S.trainer.run(grouped_token_logps, S.policy, sub, share_prompt=share,
                                                     temperature=1.0)
                        sums = (logprobs * mask[rows]).sum(1).view(-1, 2)
                        pc, pr, rc, rr = _order(sums, first_wins[own]) + _order(ref_pairs[own], first_wins[own])
                        losses, metrics = loss_fn(pc, pr, rc, rr, beta=cfg.beta)
                        loss = losses.mean()
                        got = {"loss/dpo": loss.detach(), **metrics}
                    else:  # nothing here this micro-step: a zero loss still joins DDP's gradient all-reduce
                        loss = S.trainer.run(lambda: sum(p.sum() for p in params) * 0.0)
                        got = dict.fromkeys(metric_keys, 0.0)
                    if dist.active():
                        scale = len(own) / len(part) * dist.world()
                        loss, got = loss * scale, {k: float(v) * scale for k, v in got.items()}
                    check_finite("the DPO loss", loss.detach(), step, S.run)
                    (loss * weight).backward()
                for k, v in dist.mean_metrics(got).items():
                    stats.setdefault(k, []).append(v)
            stats.setdefault("grad_norm", []).append(step_optimizer(S, params, step))
        out = {"episodes": len(texts),
               "objective/scores": raw_scores.mean().item(),
               "pairs/kept": int(keep.sum()), "pairs/tied": int((~keep).sum()),
               "kl/seq": _sample_kl(ro, ref_logprobs, mask),
               "response/length": mask.sum(1).mean().item(),
               "response/ended": ro.finished.float().mean().item(),
               **{k: sum(v) / len(v) for k, v in stats.items()}}
        if S.task is not None:
            out["objective/gold"] = sum(S.task.gold_reward(p, c) for p, c in zip(prompts, texts)) / len(texts)
        return out

    return online_fit(S, params, n_minibatches, update, desc=f"online-{cfg.loss}")


def _order(pair_values: torch.Tensor, first_wins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) from (n, 2) values of each prompt's two responses."""
    first, second = pair_values.unbind(1)
    return torch.where(first_wins, first, second), torch.where(first_wins, second, first)


def _sample_kl(ro, ref_logprobs, mask) -> float:
    """KL(π‖π_ref) per response, k1 from the rollout's own log-probs (exact for rollout.temperature=1;
    at another temperature it measures the tempered sampler against the reference)."""
    return ((ro.logprobs.to(mask.device) - ref_logprobs) * mask).sum(1).mean().item()
