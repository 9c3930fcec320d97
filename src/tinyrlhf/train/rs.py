"""Rejection-sampling fine-tuning: each round samples k completions per prompt from the current policy, scores
them with the reward source, keeps the best ones and fine-tunes on them with the SFT loss (RAFT, Dong et al.
2023; ReST's Grow/Improve steps, Gulcehre et al. 2023; Llama 2's rejection sampling, Touvron et al. 2023 §3.2.3).

    tinyrlhf rs --config configs/family_tree/rs.yaml reward=runs/family_tree/reward k=4

One step = one round: rollout.prompts_per_step prompts, k samples each, kept by `keep` (the best of each
prompt's k, or every sample at or above a quantile of the round's scores), then `epochs` passes of SFT over
the kept samples in minibatches. Rounds are resumable like every online loop's steps (online.py: checkpoints
every train.save_every rounds and on Ctrl-C; the round's prompts and samples are a function of its number).
No KL term: the distance from the start is set by the selection (best-of-k moves a policy by at most
log k − (k−1)/k nats per round; Beirami et al. 2024), the learning rate and the number of rounds.
"""
from __future__ import annotations

import torch

from ..config import RSConfig
from .. import dist
from .. import losses as L
from ..logprobs import grouped_token_logps
from .online import micro_batches, open_online, online_fit, sample_and_score, step_optimizer
from .rl import KLController, check_finite, prompts_for_step, reference_model, select_groups


def keep_best(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Rows (prompt-major, k per prompt) of each prompt's best sample: (P,); the first of equal bests."""
    best = scores.view(-1, k).argmax(1)                                          # (P,)
    return torch.arange(len(best), device=scores.device) * k + best


def keep_quantile(scores: torch.Tensor, q: float) -> torch.Tensor:
    """Rows whose score is at or above the q-quantile of all the round's scores (linear interpolation):
    one threshold for every prompt, as ReST's filter (a prompt whose samples all score low keeps none)."""
    return torch.nonzero(scores >= torch.quantile(scores.float(), q)).flatten()


def run_rs(cfg: RSConfig) -> dict:
    S = open_online(cfg)
    if isinstance(S, dict):
        return S
    params = [p for p in S.policy.parameters() if p.requires_grad]
    k, R = cfg.k, cfg.rollout
    share = cfg.train.share_prompt and not cfg.model.gradient_checkpointing
    # optimizer steps per round for the schedule: exact for keep=best; keep=quantile keeps about (1 − q)·P·k
    per_round = R.prompts_per_step if cfg.keep == "best" else max(1, round((1 - cfg.quantile) * R.prompts_per_step * k))
    n_minibatches = -(-per_round // cfg.minibatch_size)
    dist.check_divisible(R.prompts_per_step, "rollout.prompts_per_step")

    def update(step: int, kl: KLController) -> dict:
        # 1. k samples per prompt from the current policy, scored (the missing-EOS penalty included).
        S.policy.eval()
        prompts = prompts_for_step(S.prompts, step, R.prompts_per_step, cfg.seed)
        ro, prompts, texts, scores, raw_scores = sample_and_score(S, prompts, step, n_per_prompt=k)
        groups = {key: v.to(S.device) for key, v in ro.groups(k).items()}
        mask = ro.response_mask.to(S.device).float()                                          # (B, T)
        # 2. The KL of the samples to the reference, for the logs only (k1 from the sampler's own log-probs,
        #    as online DPO reports it): rejection sampling has no KL term.
        mine, _ = select_groups(groups, dist.shard(torch.arange(groups["prompt_ids"].shape[0], device=S.device)))
        with torch.no_grad(), S.autocast(), reference_model(S.policy, S.reference) as ref:
            ref_logprobs = dist.cat_rows(grouped_token_logps(ref, mine, share_prompt=share, temperature=1.0))
        seq_kl = ((ro.logprobs.to(S.device) - ref_logprobs) * mask).sum(1)                   # (B,)
        # 3. Rejection: keep the best of each prompt's k, or every sample above the round's quantile.
        kept = keep_best(scores, k) if cfg.keep == "best" else keep_quantile(scores, cfg.quantile)
        # each kept sample becomes a one-completion group, so grouped_token_logps runs it as SFT does
        data = {"prompt_ids": groups["prompt_ids"][kept // k], "prompt_mask": groups["prompt_mask"][kept // k],
                "completion_ids": groups["completion_ids"][kept], "completion_mask": groups["completion_mask"][kept]}
        kept_mask = mask[kept]
        # 4. SFT on the kept samples: the mean NLL over every completion token of a minibatch (EOS included),
        #    as weights over the whole minibatch so that micro-batches and ranks add up to it exactly.
        S.policy.train()
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        stats: dict[str, list[float]] = {}
        scale = dist.world() if dist.active() else 1  # DDP averages the ranks' gradients: undo it for a sum
        for _epoch in range(cfg.epochs):
            for mb in torch.randperm(len(kept), generator=g).to(S.device).split(cfg.minibatch_size):
                weights = torch.zeros_like(kept_mask)
                weights[mb] = L.token_mean_weights(kept_mask[mb], R.max_new_tokens)
                parts = list(micro_batches(mb, cfg.train.batch_size))
                nll = 0.0
                for i, (part, _) in enumerate(parts):
                    own = dist.shard(part).to(S.device)
                    with S.trainer.accumulating(last=i == len(parts) - 1):
                        if len(own):
                            sub = {key: v[own] for key, v in data.items()}
                            with S.autocast():
                                logprobs = S.trainer.run(grouped_token_logps, S.policy, sub, share_prompt=share)
                            loss = -(logprobs * weights[own]).sum() * scale
                        else:  # nothing here this micro-step: a zero loss still joins DDP's gradient all-reduce
                            loss = S.trainer.run(lambda: sum(p.sum() for p in params) * 0.0)
                        check_finite("the SFT loss", loss.detach(), step, S.run)
                        loss.backward()
                    nll += dist.mean_metrics({"nll": loss.detach()})["nll"]
                stats.setdefault("loss/sft", []).append(nll)
                stats.setdefault("grad_norm", []).append(step_optimizer(S, params, step))
        out = {"episodes": len(scores),  # every sample drawn counts as a rollout (compare's budget)
               "objective/scores": raw_scores.mean().item(),
               "kl/seq": seq_kl.mean().item(),
               "rs/kept": len(kept), "rs/kept_score": raw_scores[kept.cpu()].mean().item(),
               "rs/kept_kl": seq_kl[kept].mean().item(), "rs/kept_length": kept_mask.sum(1).mean().item(),
               "response/length": mask.sum(1).mean().item(),
               "response/ended": ro.finished.float().mean().item(),
               **{key: sum(v) / len(v) for key, v in stats.items()}}
        if S.task is not None:  # gold of all samples (the policy) and of the kept ones (what the selection found)
            gold = torch.tensor([S.task.gold_reward(p, c) for p, c in zip(prompts, texts)])
            out.update({"objective/gold": gold.mean().item(), "rs/kept_gold": gold[kept.cpu()].mean().item()})
        return out

    return online_fit(S, params, cfg.epochs * n_minibatches, update, desc="rs")
