"""Scores of a policy on a task's held-out prompts: gold reward of sampled and greedy completions, a
sequence-level KL estimate to a reference, E_{y~pi}[log pi(y|x) - log ref(y|x)], from the same samples, and
what a preference signal could work with (`learnability`: k samples per prompt judged by the gold)."""
from __future__ import annotations

from typing import Callable

import torch

import statistics

from ..data.collate import encode, pad
from ..logprobs import token_logps
from ..rollout import encode_prompts, generate
from ..sampling import sample
from .engine import autocast


@torch.no_grad()
def completion_logps(model, tokenizer, prompts, completions, device, precision, max_length=512,
                     batch_size=64, temperature: float = 1.0) -> torch.Tensor:
    """Sum of log-probs of each completion (EOS included) given its prompt, (N,). Longer inputs are cut
    to max_length, or to the model's context when that is shorter (the project's truncation policy).
    `temperature`: the log-probs of the tempered policy softmax(logits / T) that sampling at T draws from."""
    from ..loading import unwrap
    max_length = min(max_length, unwrap(model).config.max_position_embeddings)
    was_training = model.training
    model.eval()
    examples = encode(tokenizer, prompts, completions, max_length)
    out = []
    for i in range(0, len(examples), batch_size):
        b = {k: v.to(device) for k, v in pad(examples[i:i + batch_size], tokenizer.pad_token_id).items()}
        with autocast(device, precision):
            out.append(token_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"],
                                   temperature=temperature).sum(-1).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def policy_eval(model, tokenizer, task, cfg, device, seed: int, data_seed: int, precision: str = "auto",
                reference: Callable | None = None) -> dict:
    """gold/mean (samples at cfg.temperature), gold/greedy, and kl/ref when `reference(prompts,
    completions) -> (N,) log-probs` is given (the reference's log-probs of the policy's samples)."""
    if cfg.n_prompts <= 0:  # evaluation off (tinyrlhf compare evaluates final models itself)
        return {}
    prompts = task.prompts("eval", cfg.n_prompts, data_seed)
    out = {"gold/max": task.max_gold}
    for name, temp in (("gold/mean", cfg.temperature), ("gold/greedy", 0.0)):
        completions = sample(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                             temperature=temp, batch_size=cfg.batch_size, seed=seed, device=device)
        out[name] = sum(task.gold_reward(p, c) for p, c in zip(prompts, completions)) / len(prompts)
        if temp > 0:
            sampled = completions
    out["eval/length"] = sum(len(c) for c in sampled) / len(sampled)
    if reference is not None and cfg.temperature == 1.0:
        policy_lp = completion_logps(model, tokenizer, prompts, sampled, device, precision)
        out["kl/ref"] = (policy_lp - reference(prompts, sampled)).mean().item()
    return out


@torch.no_grad()
def sample_groups(model, tokenizer, prompts: list[str], k: int, *, temperature: float, max_new_tokens: int,
                  seed: int, device, precision: str = "auto", batch_size: int = 64) -> list[list[str]]:
    """k sampled completions per prompt (the rollout engine; the chunk of prompts starting at index i draws
    with seed * 1_000_003 + i, so a prompt's samples do not depend on how many prompts follow it)."""
    from ..loading import unwrap
    limit = unwrap(model).config.max_position_embeddings - max_new_tokens
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    per_batch = max(1, batch_size // k)
    for i in range(0, len(prompts), per_batch):
        chunk = [p for p in prompts[i:i + per_batch] for _ in range(k)]
        ids, mask = encode_prompts(tokenizer, chunk, limit)
        ro = generate(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      temperature=temperature, seed=seed * 1_000_003 + i,
                      autocast=lambda: autocast(device, precision))
        texts = ro.texts(tokenizer)
        out += [texts[j:j + k] for j in range(0, len(texts), k)]
    model.train(was_training)
    return out


def learnability(task, prompts: list[str], groups: list[list[str]]) -> dict:
    """What preference learning can work with, from k samples per prompt (at T=1) judged by the gold:
    learn/oracle_best_of_k  mean over prompts of the best sample's gold: what a perfect reward model's
                            reranking of k samples reaches (the ceiling of best-of-k, and a bar for RL)
    learn/coverage@k        share of prompts with a sample of gold >= max_gold / 2: something right to prefer
    learn/coin_flips        share of pairs (the first two distinct samples of a prompt) with equal gold:
                            labels that are coin flips, whatever the annotator (zero-gap pairs)
    learn/identical         share of prompts whose k samples are all the same text (no pair at all)
    A task whose coverage is low or whose pairs are mostly coin flips gives preference methods little to
    learn from: train the SFT model longer, or use a bigger preset, before spending compute on RL."""
    k = len(groups[0]) if groups else 0
    golds = [[task.gold_reward(p, c) for c in g] for p, g in zip(prompts, groups)]
    pairs = flips = identical = 0
    for g, texts in zip(golds, groups):
        first = {}
        for text, value in zip(texts, g):
            first.setdefault(text, value)
        if len(first) < 2:
            identical += 1
            continue
        a, b = list(first.values())[:2]
        pairs += 1
        flips += abs(a - b) < 1e-9
    return {f"learn/oracle_best_of_{k}": statistics.fmean(max(g) for g in golds),
            f"learn/coverage@{k}": statistics.fmean(float(max(g) >= task.max_gold / 2) for g in golds),
            "learn/coin_flips": flips / pairs if pairs else float("nan"),
            "learn/identical": identical / len(golds),
            "learn/sample_gold": statistics.fmean(x for g in golds for x in g), "learn/k": k}
