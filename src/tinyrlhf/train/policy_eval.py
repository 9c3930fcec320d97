"""Scores of a policy on a task's held-out prompts: gold reward of sampled and greedy completions, and a
sequence-level KL estimate to a reference, E_{y~pi}[log pi(y|x) - log ref(y|x)], from the same samples."""
from __future__ import annotations

from typing import Callable

import torch

from ..data.collate import encode, pad
from ..logprobs import token_logps
from ..sampling import sample
from ..train.engine import autocast


@torch.no_grad()
def completion_logps(model, tokenizer, prompts, completions, device, precision, max_length=512,
                     batch_size=64) -> torch.Tensor:
    """Sum of log-probs of each completion (EOS included) given its prompt, (N,). Longer inputs are cut
    to max_length, or to the model's context when that is shorter (the project's truncation policy)."""
    from ..loading import unwrap
    max_length = min(max_length, unwrap(model).config.max_position_embeddings)
    was_training = model.training
    model.eval()
    examples = encode(tokenizer, prompts, completions, max_length)
    out = []
    for i in range(0, len(examples), batch_size):
        b = {k: v.to(device) for k, v in pad(examples[i:i + batch_size], tokenizer.pad_token_id).items()}
        with autocast(device, precision):
            out.append(token_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
                       .sum(-1).float().cpu())
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
