"""Supervised fine-tuning: next-token loss on completion tokens only (in a conversation: every assistant turn,
data/conversation.py), length-bucketed batches.

    tinyrlhf sft --config configs/family_tree/sft.yaml train.max_steps=300
"""
from __future__ import annotations

import sys
import time

import torch

from ..config import SFTConfig
from ..data import packing
from ..data.collate import BatchPlan, TruncationStats, pad
from ..data.conversation import encode_sft
from ..logprobs import token_logps
from .. import dist
from ..loading import unwrap
from ..models import add_lora, build_model, save_hf
from .data import begin_run, prompt_format, sized_sampling
from .engine import RunDir, autocast, fit, packing_on
from .parallel import save_final


def gold_eval(model, tokenizer, task, cfg, device, seed: int, data_seed: int) -> dict:
    """Mean gold reward of completions sampled on held-out prompts (temperature from config) and greedy.
    eval.n_prompts=0 turns it off (e.g. when `tinyrlhf compare` evaluates the final model itself)."""
    from .policy_eval import policy_eval
    return policy_eval(model, tokenizer, task, cfg, device, seed, data_seed)


@torch.no_grad()
def eval_loss(model, examples, pad_id, device, precision, batch_size=64) -> float:
    """Mean completion-token NLL on held-out examples."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in pad(examples[i:i + batch_size], pad_id).items()}
        with autocast(device, precision):
            logps = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        total += -logps.sum().item()
        count += int(batch["completion_mask"][:, 1:].sum())
    return total / max(count, 1)


def sft_loss(model, batch, prompt_loss_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """(loss, metrics) of one micro-batch, padded (collate.pad) or packed (packing.pack): the mean NLL of
    the completion tokens, or with `prompt_loss_weight` > 0 the weighted mean over all tokens (OpenAI's
    fine-tuning `prompt_loss_weight`). Token means over the GLOBAL micro-batch (all ranks' tokens;
    dist.global_count), so that a run on several processes optimises exactly what one process would."""
    w_prompt = prompt_loss_weight
    scored = packing.token_mask(batch) if w_prompt > 0 else batch["completion_mask"]
    logps = token_logps(model, batch["input_ids"], batch.get("attention_mask"), scored,
                        seq_ids=batch.get("seq_ids"))  # (B, T-1)
    completion = packing.targets(batch, batch["completion_mask"])  # targets that are completion tokens
    prompt = (packing.targets(batch, scored) - completion).clamp(min=0)
    completion_nll = -(logps * completion).sum() / dist.global_count(completion.sum())
    if w_prompt == 0:
        return completion_nll, {}
    weights = completion + w_prompt * prompt
    loss = -(logps * weights).sum() / dist.global_count(weights.sum())
    return loss, {"completion_nll": completion_nll.detach()}


def _logged_step0(run: RunDir) -> dict:
    """The before-training scores of an interrupted run (so a resume does not recompute them)."""
    import json, os
    if os.path.isfile(run.metrics_file):
        with open(run.metrics_file) as f:
            for line in f:
                row = json.loads(line)
                if row.get("step") == 0:
                    return {k: v for k, v in row.items() if k.startswith("before/")}
    return {}


def learnability_report(model, tokenizer, task, cfg: SFTConfig, device) -> dict:
    """policy_eval.learnability of the final model on the eval prompts, printed with a warning when a
    preference method would have little to learn from it (few right samples, mostly coin-flip pairs)."""
    from .policy_eval import learnability, sample_groups
    k = cfg.learnability_k
    prompts = task.prompts("eval", cfg.eval.n_prompts, cfg.data.seed)
    groups = sample_groups(model, tokenizer, prompts, k, temperature=1.0, max_new_tokens=cfg.eval.max_new_tokens,
                           seed=cfg.seed, device=device, precision=cfg.train.precision)
    out = learnability(task, prompts, groups)
    if dist.is_main():
        print(f"learnability ({len(prompts)} eval prompts, {k} samples each at T=1): oracle best-of-{k} gold "
              f"{out[f'learn/oracle_best_of_{k}']:.3f} (max {task.max_gold:g}), coverage@{k} "
              f"{out[f'learn/coverage@{k}']:.0%} (a sample with gold >= {task.max_gold / 2:g}), coin-flip pairs "
              f"{out['learn/coin_flips']:.0%}")
        if out[f"learn/coverage@{k}"] < 0.5 or out["learn/coin_flips"] > 0.6:
            print(f"warning: few prompts have a right answer among {k} samples, or most pairs tie on gold: "
                  "preference labels on this model's samples will carry little signal; train SFT longer or "
                  "use a bigger model.preset before RL", file=sys.stderr)
    return out


def run_sft(cfg: SFTConfig) -> dict:
    start = begin_run(cfg, "sft")
    if isinstance(start, dict):
        return start
    run, device, task, t_start = start.run, start.device, start.task, start.t_start
    train_records, eval_records, data_metrics = start.train, start.evals, start.data_metrics

    model, tokenizer = build_model(cfg.model, start.corpus(cfg.data.seed), seed=cfg.seed)
    model = add_lora(model, cfg.lora).to(device)
    # one prompt format per run: the model's template, or (a preset, a base model) the data's, kept in final/
    named = {"the training data": train_records, "the held-out data": eval_records}
    formatted, template = prompt_format(tokenizer, named, cfg)
    train_records, eval_records = formatted["the training data"], formatted["the held-out data"]
    if task is not None:  # SFT samples only for the gold evaluation and its learnability report
        cfg = sized_sampling(cfg, tokenizer, train_records, unwrap(model).config.max_position_embeddings)

    stats = TruncationStats()
    # (prompt_ids, completion_ids[, loss mask over the prompt: a conversation's earlier assistant turns])
    turns = cfg.data.assistant_turns
    examples = encode_sft(tokenizer, train_records, template, cfg.data.max_length, stats, turns)
    eval_examples = encode_sft(tokenizer, eval_records[:512], template, cfg.data.max_length, None, turns,
                               "the held-out data")
    plan = BatchPlan([len(e[0]) + len(e[1]) for e in examples], cfg.train.batch_size, cfg.seed)

    packs = packing_on(cfg.train, device)

    def make_batch(idx):
        batch = pad([examples[i] for i in idx], tokenizer.pad_token_id)
        return packing.pack(batch, tokenizer.pad_token_id) if packs else batch

    def loss_fn(batch):
        return sft_loss(model, batch, cfg.train.prompt_loss_weight)

    def evaluate():
        out = {}
        if eval_examples:
            out["eval/loss"] = eval_loss(model, eval_examples, tokenizer.pad_token_id, device, cfg.train.precision)
        if task is not None:
            out.update(gold_eval(model, tokenizer, task, cfg.eval, device, cfg.seed, cfg.data.seed))
        return out

    before = _logged_step0(run)
    if task is not None and not before and cfg.eval.n_prompts > 0:
        before = {f"before/{k}": v for k, v in gold_eval(model, tokenizer, task, cfg.eval, device,
                                                          cfg.seed, cfg.data.seed).items()}
        run.log({"step": 0, **before})
    summary = fit(run, model, cfg.train, plan, device, make_batch, loss_fn, evaluate,
                  stop_after=cfg.train.stop_after, desc="sft")
    summary.update(before, **data_metrics, **stats.as_metrics(),
                   wall_seconds=time.time() - t_start, device=str(device))
    if summary["finished"] and task is not None and cfg.eval.n_prompts > 0 and cfg.learnability_k:
        summary.update(learnability_report(model, tokenizer, task, cfg, device))
    if summary["finished"]:
        # SFT's final/ is the base of every later stage: plain weights, or with LoRA and lora.merge=false an
        # adapter directory naming its base (every stage's model.path, eval, serve and export load it)
        save_final(run, model, tokenizer, merge_lora=cfg.lora.merge or not cfg.lora.enabled, save_hf=save_hf)
    run.write_summary(summary)
    return summary
