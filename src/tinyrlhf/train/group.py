"""RLOO, GRPO and REINFORCE++: k samples per prompt, a baseline without a critic.

    tinyrlhf rloo --config configs/family_tree/rloo.yaml reward=runs/family_tree/reward k=4
    tinyrlhf grpo --config configs/family_tree/grpo.yaml reward=gold loss_type=dr_grpo
    tinyrlhf reinforce-pp --config configs/family_tree/reinforce_pp.yaml reward=gold

RLOO (Ahmadian et al. 2024): sequence reward s − β·KL_seq, advantage = reward − mean of the other k−1.
GRPO (Shao et al. 2024): advantage = (s − group mean) / group std, and the KL to the reference as a per-token
k3 term in the loss (kl_in=loss). Either choice of KL placement works with either advantage.
REINFORCE++ (Hu et al. 2025): token advantage s − β·(KL to go), less the prompt's mean score when k ≥ 2,
normalised over the whole batch instead of per prompt.
`loss_type` picks how the token losses are summed (losses.POLICY_LOSS_WEIGHTS): PPO's token mean, GRPO's mean
per response, Dr. GRPO's constant length (and no std division), DAPO's token mean with clip-higher.
With epochs=1 every update is on-policy (ratio 1: plain REINFORCE with a baseline); more epochs use the
clipped ratio as PPO does.
"""
from __future__ import annotations

import torch

from .. import losses as L
from ..config import GroupConfig
from ..errors import ConfigError
from .. import dist
from .online import micro_batches, open_online, online_fit, rank_share, sample_and_score, step_optimizer
from ..logprobs import grouped_token_logps
from .rl import KLController, check_finite, prompts_for_step, reference_model, select_groups


def token_advantages(cfg: GroupConfig, scores: torch.Tensor, kl_tokens: torch.Tensor, mask: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """(B, T) advantages of the rollout's rows (prompt-major, k per prompt); `beta` weighs the KL in the
    reward (0 when it goes into the loss). RLOO and GRPO give every token its sequence's advantage."""
    if cfg.algo == "reinforce-pp":  # Hu et al. 2025: with k >= 2, the group mean is the baseline (w/ baseline)
        base = L.dr_grpo_advantages(scores.view(-1, cfg.k)).reshape(-1) if cfg.k >= 2 else scores
        return L.reinforce_pp_advantages(base, kl_tokens, mask, beta=beta)
    rewards = (scores - beta * kl_tokens.sum(1)).view(-1, cfg.k)                               # (P, k)
    if cfg.algo == "rloo":
        seq = L.rloo_advantages(rewards)
    else:  # Dr. GRPO drops GRPO's division by the group std (Liu et al. 2025, §3.2)
        seq = (L.dr_grpo_advantages if cfg.loss_type == "dr_grpo" else L.grpo_advantages)(rewards)
    return seq.reshape(-1, 1) * mask


def run_group(cfg: GroupConfig) -> dict:
    if cfg.k < (1 if cfg.algo == "reinforce-pp" else 2):
        raise ConfigError(f"k must be >= 2 (samples per prompt), got {cfg.k}")
    S = open_online(cfg)
    if isinstance(S, dict):
        return S
    params = [p for p in S.policy.parameters() if p.requires_grad]
    n_episodes = cfg.rollout.prompts_per_step * cfg.k
    n_minibatches = -(-n_episodes // cfg.minibatch_size)
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
    loss_weights = L.POLICY_LOSS_WEIGHTS[cfg.loss_type]
    share = cfg.train.share_prompt and not cfg.model.gradient_checkpointing
    for value, what in ((cfg.rollout.prompts_per_step, "rollout.prompts_per_step"),
                        (max(1, cfg.minibatch_size // cfg.k), "minibatch_size // k (prompts per minibatch)"),
                        (max(1, cfg.train.batch_size // cfg.k), "train.batch_size // k (prompts per micro-batch)")):
        dist.check_divisible(value, what)  # prompts per rollout, minibatch and micro-batch split evenly

    def update(step: int, kl: KLController) -> dict:
        # 1. k responses for each prompt, scored.
        S.policy.eval()
        prompts = prompts_for_step(S.prompts, step, cfg.rollout.prompts_per_step, cfg.seed)
        ro, prompts, texts, scores, raw_scores = sample_and_score(S, prompts, step, n_per_prompt=cfg.k)
        groups = {k: v.to(S.device) for k, v in ro.groups(cfg.k).items()}  # each prompt once, k responses
        mask = ro.response_mask.to(S.device).float()
        # 2. Old and reference log-probs (same temperature as sampling).
        #    Under torchrun each rank scores the groups of its own prompts; the rows are gathered.
        mine, _ = select_groups(groups, dist.shard(torch.arange(groups["prompt_ids"].shape[0], device=S.device)))
        with torch.no_grad(), S.autocast():
            old_logprobs = dist.cat_rows(grouped_token_logps(S.policy, mine, share_prompt=share,
                                                             temperature=temperature))
            with reference_model(S.policy, S.reference) as ref:
                ref_logprobs = dist.cat_rows(grouped_token_logps(ref, mine, share_prompt=share,
                                                                 temperature=temperature))
        kl_tokens = L.kl_per_token(old_logprobs, ref_logprobs, cfg.kl.estimator) * mask          # (B, T)
        seq_kl = kl_tokens.sum(1)                                                                # (B,)
        # 3. Advantages from the rewards (rows are prompt-major, k consecutive per prompt), one per token.
        advantages = token_advantages(cfg, scores, kl_tokens, mask, kl.value if cfg.kl_in == "reward" else 0.0)
        # 4. Policy-gradient epochs on the clipped surrogate. Minibatches are made of whole groups
        # (minibatch_size and train.batch_size count episodes), so a prompt runs once per pass. The loss of a
        # minibatch is Σ w·loss over its tokens, w from loss_type over the WHOLE minibatch: each micro-batch
        # (and under torchrun each rank) adds its own rows' share, so the sum is exact however it is split.
        S.policy.train()
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        stats: dict[str, list[float]] = {}
        n_prompts = len(scores) // cfg.k
        scale = dist.world() if dist.active() else 1  # DDP averages the ranks' gradients: undo it for a sum
        for _epoch in range(cfg.epochs):
            for mb in torch.randperm(n_prompts, generator=g).split(max(1, cfg.minibatch_size // cfg.k)):
                mb_rows = select_groups(groups, mb.to(S.device))[1]
                weights = torch.zeros_like(mask)
                weights[mb_rows] = loss_weights(mask[mb_rows], cfg.rollout.max_new_tokens)
                parts = list(micro_batches(mb, max(1, cfg.train.batch_size // cfg.k)))
                totals: dict[str, float] = {}
                for i, (part, _) in enumerate(parts):
                    m_all = mask[select_groups(groups, part.to(S.device))[1]]
                    sub, rows = select_groups(groups, dist.shard(part).to(S.device))
                    m, w = mask[rows], weights[rows]
                    got = {}
                    with S.trainer.accumulating(last=i == len(parts) - 1):
                        with S.autocast():
                            logprobs = S.trainer.run(grouped_token_logps, S.policy, sub, share_prompt=share,
                                                     temperature=temperature)
                        pg, pg_m = L.ppo_policy_loss(logprobs, old_logprobs[rows], advantages[rows], m,
                                                     clip=cfg.clip, clip_high=cfg.clip_high)
                        loss = (pg * w).sum() * scale
                        got["loss/policy"] = loss.detach()
                        if cfg.kl_in == "loss":  # GRPO eq. 3: + β·k3(π, π_ref) per token, on the current policy
                            kl_term = (L.kl_per_token(logprobs, ref_logprobs[rows], "k3") * w).sum() * scale
                            loss = loss + kl.value * kl_term
                            got["loss/kl"] = kl_term.detach()
                        check_finite("the policy loss", loss.detach(), step, S.run)
                        loss.backward()
                    got["policy/clipfrac"] = rank_share(pg_m["clipfrac"], m, m_all)
                    for k, v in dist.mean_metrics(got).items():
                        if k == "policy/clipfrac":
                            stats.setdefault(k, []).append(v)
                        else:  # parts of the minibatch's sum
                            totals[k] = totals.get(k, 0.0) + v
                for k, v in totals.items():
                    stats.setdefault(k, []).append(v)
                stats.setdefault("grad_norm", []).append(step_optimizer(S, params, step))
        seq_kl1 = L.kl_per_token(old_logprobs, ref_logprobs, "k1").mul(mask).sum(1)
        kl.update(seq_kl1.mean().item(), len(scores))
        out = {"episodes": len(scores),
               "objective/scores": raw_scores.mean().item(),
               "objective/rlhf_reward": (scores - kl.value * seq_kl).mean().item(),
               "kl/seq": seq_kl1.mean().item(),
               "policy/entropy_est": -L.masked_mean(old_logprobs, mask).item(),
               "adv/abs_mean": L.masked_mean(advantages.abs(), mask).item(),
               "response/length": mask.sum(1).mean().item(),
               "response/ended": ro.finished.float().mean().item(),
               **{k: sum(v) / len(v) for k, v in stats.items()}}
        if cfg.k >= 2:  # share of prompts whose k samples all scored the same
            out["adv/zero_groups"] = (scores.view(-1, cfg.k).std(1) == 0).float().mean().item()
        if S.task is not None:
            out["objective/gold"] = sum(S.task.gold_reward(p, c) for p, c in zip(prompts, texts)) / len(texts)
        return out

    kl_ctl = KLController(cfg.kl.coef, cfg.kl.adaptive, cfg.kl.target, cfg.kl.horizon)
    return online_fit(S, params, cfg.epochs * n_minibatches, update, kl_ctl, desc=cfg.algo)
