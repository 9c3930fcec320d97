"""PPO for RLHF with the details that matter (Ziegler et al. 2019; Ouyang et al. 2022; Huang et al. 2022,
"The N implementation details of RLHF with PPO" = lm-human-preference-details, cited as [details]).

    tinyrlhf ppo --config configs/family_tree/ppo.yaml reward=runs/family_tree/reward kl.target=1.5

One step = one rollout batch, in numbered stages below. Models in memory: the policy; the reference (a
frozen copy, or nothing with LoRA: adapters disabled); the reward model (unless reward=gold or a callable);
the value function as a head on the policy's trunk (ppo.value_model=shared) or its own critic (separate).
"""
from __future__ import annotations

import torch

from .. import losses as L
from ..config import PPOConfig
from .. import dist
from .online import micro_batches, open_online, online_fit, rank_share, sample_and_score, select, step_optimizer
from .rl import KLController, build_value, check_finite, policy_forward, prompts_for_step, reference_token_logps


def run_ppo(cfg: PPOConfig) -> dict:
    S = open_online(cfg)
    if isinstance(S, dict):
        return S
    P, R, K = cfg.ppo, cfg.rollout, cfg.kl
    value = build_value(S.policy, P.value_model, P.value_init, S.reward_model, S.device)
    params = [p for p in S.policy.parameters() if p.requires_grad] + list(value.parameters())
    kl_ctl = KLController(K.coef, K.adaptive, K.target, K.horizon)
    n_minibatches = -(-R.prompts_per_step // P.minibatch_size)
    for value_, what in ((R.prompts_per_step, "rollout.prompts_per_step"), (P.minibatch_size, "ppo.minibatch_size"),
                         (cfg.train.batch_size, "train.batch_size")):
        dist.check_divisible(value_, what)  # global counts: every micro-batch splits evenly over the ranks
    temperature = R.temperature if R.temperature > 0 else 1.0

    def update(step: int, kl: KLController) -> dict:
        # 1. Rollout: sample responses from the current policy (dropout is off everywhere [details]).
        S.policy.eval()
        prompts = prompts_for_step(S.prompts, step, R.prompts_per_step, cfg.seed)
        ro, prompts, texts, scores, raw_scores = sample_and_score(S, prompts, step)
        seqs, plen = ro.sequences(), ro.prompt_ids.shape[1]
        seqs = {k: v.to(S.device) for k, v in seqs.items()}
        mask = ro.response_mask.to(S.device).float()                            # (B, R)
        # 2. Old log-probs and values (recomputed at the sampling temperature [details]) and the reference.
        #    Under torchrun each rank scores its own rows and the results are gathered (dist.cat_rows).
        mine = select(seqs, dist.shard(torch.arange(len(mask), device=S.device)))
        with torch.no_grad(), S.autocast():
            old_logprobs, old_values = map(dist.cat_rows, policy_forward(S.policy, value, mine, plen, temperature))
            ref_logprobs = dist.cat_rows(reference_token_logps(S.policy, S.reference, mine, temperature)[:, plen - 1:])
        old_values = old_values * mask
        check_finite("values", old_values, step, S.run)
        # 3. Per-token reward: −β·KL on every token, plus the score on the last one (Ziegler et al. eq. 2).
        kl_tokens = L.kl_per_token(old_logprobs, ref_logprobs, K.estimator) * mask
        rewards = -kl.value * kl_tokens
        last = mask.sum(1).long().clamp(min=1) - 1
        rewards[torch.arange(len(last)), last] += scores
        if P.whiten_rewards:  # [details] "reward whitening" (mean kept so the sign of the reward survives)
            rewards = L.masked_whiten(rewards, mask, shift_mean=False)
        # 4. Advantages by GAE; whitened over the batch [details].
        advantages, returns = L.gae(rewards, old_values, mask, gamma=P.gamma, lam=P.lam)
        if P.whiten_advantages:
            advantages = L.masked_whiten(advantages, mask)
        # 5. PPO epochs over shuffled minibatches, stopping early when the policy has moved too far
        #    from the rollout policy (approximate KL above ppo.early_stop_kl).
        S.policy.train()
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        stats: dict[str, list[float]] = {}
        stopped = False
        for _epoch in range(P.epochs):
            order = torch.randperm(len(last), generator=g)
            for mb in order.split(P.minibatch_size):
                mb_kl = 0.0
                parts = list(micro_batches(mb, cfg.train.batch_size))
                for i, (rows, weight) in enumerate(parts):
                    # under torchrun this rank trains on its share of the micro-batch (token means over
                    # the whole micro-batch: rank_share); the gradient all-reduce runs on the last one
                    own = dist.shard(rows)
                    m_all, m = mask[rows], mask[own]
                    with S.trainer.accumulating(last=i == len(parts) - 1):
                        with S.autocast():
                            logprobs, values = S.trainer.run(policy_forward, S.policy, value, select(seqs, own),
                                                             plen, temperature)
                        pg, pg_m = L.ppo_policy_loss(logprobs, old_logprobs[own], advantages[own], m, clip=P.clip)
                        vf, vf_m = L.ppo_value_loss(values, old_values[own], returns[own], m, clip=P.value_clip)
                        pg_loss = rank_share(L.masked_mean(pg, m), m, m_all)
                        vf_loss = rank_share(L.masked_mean(vf, m), m, m_all)
                        loss = pg_loss + P.vf_coef * vf_loss
                        check_finite("the PPO loss", loss.detach(), step, S.run)
                        (loss * weight).backward()
                    got = dist.mean_metrics({"loss/policy": pg_loss.detach(), "loss/value": vf_loss.detach(),
                                             "policy/clipfrac": rank_share(pg_m["clipfrac"], m, m_all),
                                             "val/clipfrac": rank_share(vf_m["value_clipfrac"], m, m_all),
                                             "approx_kl": rank_share(pg_m["approx_kl"], m, m_all)})
                    mb_kl += weight * got.pop("approx_kl")  # the same on every rank: they stop together
                    for k, v in got.items():
                        stats.setdefault(k, []).append(v)
                stats.setdefault("grad_norm", []).append(step_optimizer(S, params, step))
                stats.setdefault("policy/approx_kl", []).append(mb_kl)
                if P.early_stop_kl and mb_kl > P.early_stop_kl:
                    stopped = True
                    break
            if stopped:
                break
        # 6. Adapt β towards the target KL (Ziegler et al. 2019, eq. 2), counting this batch's episodes.
        seq_kl = L.kl_per_token(old_logprobs, ref_logprobs, "k1").mul(mask).sum(1)  # (B,) nats
        kl.update(seq_kl.mean().item(), len(last))
        out = {"episodes": len(last),
               "objective/scores": raw_scores.mean().item(),
               "objective/rlhf_reward": (scores - kl.value * kl_tokens.sum(1)).mean().item(),
               "kl/seq": seq_kl.mean().item(),
               "policy/entropy_est": -L.masked_mean(old_logprobs, mask).item(),
               "val/mean": L.masked_mean(old_values, mask).item(),
               "response/length": mask.sum(1).mean().item(),
               "response/ended": ro.finished.float().mean().item(),
               "rollout/logprob_gap": ((ro.logprobs.to(S.device) - old_logprobs).abs() * mask).max().item(),
               "ppo/minibatches": len(stats["grad_norm"]), "ppo/early_stopped": float(stopped),
               **{k: sum(v) / len(v) for k, v in stats.items()}}
        if S.task is not None:  # the gold reward of the very samples trained on: over-optimisation shows here
            out["objective/gold"] = sum(S.task.gold_reward(p, c) for p, c in zip(prompts, texts)) / len(texts)
        return out

    return online_fit(S, params, P.epochs * n_minibatches, update, kl_ctl,
                      modules={"value": value}, desc="ppo")

