"""Reward model: LM trunk + scalar head, pairwise Bradley–Terry loss (rankings expand to pairs),
optional reward centring, then normalisation so rewards on SFT samples have mean 0 and std 1.

    tinyrlhf reward --config configs/family_tree/reward.yaml model.path=runs/sft/final
"""
from __future__ import annotations

import time

import torch

from ..config import RewardConfig
from ..errors import ConfigError
from ..data import packing
from ..data.collate import BatchPlan, TruncationStats, encode, pad
from ..losses import bradley_terry_loss
from ..loading import check_model_dir
from ..models import RewardModel, add_lora, build_model, load_tokenizer, save_reward_model
from ..sampling import sample
from .data import begin_run, prompt_format, sized_sampling
from .engine import autocast, fit, packing_on


@torch.no_grad()
def score(rm: RewardModel, examples, pad_id, device, precision, batch_size=64, raw=False) -> torch.Tensor:
    """Rewards for encoded (prompt, completion) examples, (N,)."""
    rm.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        b = {k: v.to(device) for k, v in pad(examples[i:i + batch_size], pad_id).items()}
        with autocast(device, precision):
            args = (b["input_ids"], b["attention_mask"], b["completion_mask"])
            r = rm.raw(*args) if raw else rm(*args)
        out.append(r.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def reward_loss(rm: RewardModel, batch, has_margin: bool = False, center_coef: float = 0.0):
    """(loss, metrics) of a micro-batch of B pairs, padded or packed: rows (sequences) [0, B) chosen,
    [B, 2B) rejected; the mean Bradley-Terry loss over pairs, plus reward centring (Eisenstein et al.
    2023, "auxiliary loss": keeps raw rewards near zero) when `center_coef` > 0."""
    rewards = rm.raw(batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"],
                     seq_ids=batch.get("seq_ids"))  # (2B,)
    r_chosen, r_rejected = rewards.chunk(2)
    losses, metrics = bradley_terry_loss(r_chosen, r_rejected, margin=batch["margin"] if has_margin else None)
    loss = losses.mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss, metrics


def pair_accuracy(rm, pairs, tokenizer, task, cfg, device) -> dict:
    """Held-out accuracy against the annotator labels and against the gold ordering."""
    ml = cfg.data.max_length
    rc = score(rm, encode(tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], ml),
               tokenizer.pad_token_id, device, cfg.train.precision)
    rr = score(rm, encode(tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs], ml),
               tokenizer.pad_token_id, device, cfg.train.precision)
    out = {"eval/accuracy_labels": (rc > rr).float().mean().item(), "eval/pairs": len(pairs)}
    agree, n = 0, 0
    for p, a, b in zip(pairs, rc.tolist(), rr.tolist()):
        if task is not None:
            gc, gr = task.gold_reward(p.prompt, p.chosen), task.gold_reward(p.prompt, p.rejected)
        elif "gold_chosen" in p.meta:
            gc, gr = p.meta["gold_chosen"], p.meta["gold_rejected"]
        else:
            continue
        if gc != gr:  # ties in gold have no ordering to agree with
            agree += (a > b) == (gc > gr)
            n += 1
    if n:
        out["eval/accuracy_gold"] = agree / n
    return out


def ranking_pairs(cfg: RewardConfig) -> list:
    """The pairs of the task data directory's rankings.jsonl (cfg.rankings), truncated like the pairs."""
    import os

    from ..data.records import pairs_from, read_records
    from .data import task_data_dir
    if cfg.data.train_file or cfg.data.dataset:
        raise ConfigError("rankings=true reads the task data directory's rankings.jsonl; with data.train_file "
                          "or data.dataset give the rankings in that file or dataset instead")
    path = os.path.join(task_data_dir(cfg.data), "rankings.jsonl")
    if not os.path.isfile(path):
        raise ConfigError(f"rankings=true but there is no {path}")
    pairs = pairs_from(read_records(path, "ranking", skip_bad=cfg.data.skip_bad))
    return pairs[:cfg.data.max_train] if cfg.data.max_train else pairs


def run_reward(cfg: RewardConfig) -> dict:
    start = begin_run(cfg, "pair")
    if isinstance(start, dict):
        return start
    run, device, task, t_start = start.run, start.device, start.task, start.t_start
    pairs, eval_pairs, data_metrics = start.train, start.evals[:1000], start.data_metrics
    if cfg.normalize_on:  # checked now, not after training, where it is first loaded
        check_model_dir(cfg.normalize_on, "normalize_on")
    if cfg.rankings:
        pairs = pairs + ranking_pairs(cfg)
        data_metrics = {**data_metrics, "data/train_pairs": len(pairs)}

    lm, tokenizer = build_model(cfg.model, start.corpus(cfg.data.seed), seed=cfg.seed)
    named = {"the training pairs": pairs, "the held-out pairs": eval_pairs}
    formatted, _ = prompt_format(tokenizer, named, cfg)
    pairs, eval_pairs = formatted["the training pairs"], formatted["the held-out pairs"]
    cfg = sized_sampling(cfg, tokenizer, pairs, lm.config.max_position_embeddings)
    rm = RewardModel(add_lora(lm, cfg.lora), pool=cfg.pool, logp_feature=cfg.logp_feature).to(device)

    stats = TruncationStats()
    prompts = [p.prompt for p in pairs]
    chosen = encode(tokenizer, prompts, [p.chosen for p in pairs], cfg.data.max_length, stats)
    rejected = encode(tokenizer, prompts, [p.rejected for p in pairs], cfg.data.max_length, stats)
    margins = torch.tensor([p.margin or 0.0 for p in pairs])
    has_margin = any(p.margin is not None for p in pairs)
    lengths = [max(len(a[0]) + len(a[1]), len(b[0]) + len(b[1])) for a, b in zip(chosen, rejected)]
    plan = BatchPlan(lengths, cfg.train.batch_size, cfg.seed)

    packs = packing_on(cfg.train, device)

    def make_batch(idx):
        # chosen and rejected in one forward: rows [0, B) chosen, [B, 2B) rejected (packed: sequences)
        batch = pad([chosen[i] for i in idx] + [rejected[i] for i in idx], tokenizer.pad_token_id)
        batch["margin"] = margins[idx]
        return packing.pack(batch, tokenizer.pad_token_id) if packs else batch

    def loss_fn(batch):
        return reward_loss(rm, batch, has_margin, cfg.center_coef)

    def evaluate():
        return pair_accuracy(rm, eval_pairs, tokenizer, task, cfg, device) if eval_pairs else {}

    summary = fit(run, rm, cfg.train, plan, device, make_batch, loss_fn, evaluate,
                  stop_after=cfg.train.stop_after, desc="reward")
    if summary["finished"] and run.writes:  # rank 0 of a torchrun job normalises and saves
        summary.update(normalise(rm, tokenizer, cfg, pairs, device))
        summary.update(evaluate())  # accuracy is unchanged by a positive gain; reported after it anyway
        with run.disk_errors("could not write the final model in", run.final, cleanup=[run.final]):
            save_reward_model(rm, tokenizer, run.final)
    summary.update(**data_metrics, **stats.as_metrics(), wall_seconds=time.time() - t_start,
                   device=str(device))
    run.write_summary(summary)
    return summary


def normalise(rm: RewardModel, tokenizer, cfg: RewardConfig, pairs, device) -> dict:
    """Set gain and bias so rewards on SFT samples have mean 0, std 1 (Ziegler et al. 2019, §2.2: the
    policy's own samples, so that PPO's KL coefficient and clipping see rewards of unit scale).
    SFT samples: completions drawn from `normalize_on` (the SFT model), else the chosen completions,
    which may be written quite differently (human replies in hh-rlhf) and then give the policy's
    samples rewards of another scale: `scale_warning` says so when PPO first scores them."""
    n = cfg.normalize_samples
    prompts = [p.prompt for p in pairs[:n]]
    if cfg.normalize_on:
        from ..loading import load_causal_lm
        policy = load_causal_lm(cfg.normalize_on).to(device)
        completions = sample(policy, load_tokenizer(cfg.normalize_on), prompts,
                             max_new_tokens=cfg.eval.max_new_tokens, temperature=1.0, seed=cfg.seed,
                             device=device)
        del policy
    else:
        completions = [p.chosen for p in pairs[:n]]
    raw = score(rm, encode(tokenizer, prompts, completions, cfg.data.max_length), tokenizer.pad_token_id,
                device, cfg.train.precision, raw=True)
    mean, std = raw.mean().item(), raw.std().clamp(min=1e-6).item()
    rm.gain.fill_(1.0 / std)
    rm.bias.fill_(-mean / std)
    rm.normalized_on = f"samples of {cfg.normalize_on}" if cfg.normalize_on else "the chosen completions"
    if not cfg.normalize_on:
        print("note: reward normalised on the chosen completions of the training pairs; normalize_on=<the SFT "
              "model's final/> normalises on the policy's own samples (Ziegler et al. 2019)", flush=True)
    return {"norm/raw_mean": mean, "norm/raw_std": std, "norm/samples": len(prompts)}


SCALE_MEAN, SCALE_STD = 3.0, (1 / 3, 3.0)  # far from the N(0, 1) that normalisation targets


def scale_warning(scores: torch.Tensor, source: str, normalized_on: str | None = None) -> str | None:
    """One line when a normalised reward model scores a policy's samples far from mean 0 / std 1
    (|mean| > 3 or std outside [1/3, 3], over at least 8 samples), else None. PPO's KL coefficient,
    clipping and value loss assume rewards of about unit scale; an hh-rlhf reward model normalised on
    human replies once gave PPO's samples scores of -175."""
    if scores.numel() < 8:
        return None
    mean, std = scores.float().mean().item(), scores.float().std().item()
    if abs(mean) <= SCALE_MEAN and SCALE_STD[0] <= std <= SCALE_STD[1]:
        return None
    how = f" (it was normalised on {normalized_on})" if normalized_on else ""
    return (f"warning: reward model {source} scores the policy's first {scores.numel()} samples at mean {mean:.2f}, "
            f"std {std:.2f}, far from mean 0 / std 1{how}; retrain it with normalize_on=<the policy's starting "
            "model> so that rewards are normalised on the policy's own samples")
