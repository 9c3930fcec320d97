"""Decoding as part of the method: every policy of a comparison (SFT, each method, each trial) sampled at
several temperatures on the validation and the evaluation prompts, with the per-prompt gold and KL to the SFT
model at each, so a method is compared at its own best temperature with SFT at its own (issue: "the study that
tells learning from sharpening"). Lowering the temperature alone moves a policy along the tempered-SFT curve;
a method has learnt from preferences only where it lies above that curve at the same KL.

KL to the SFT model of a policy pi sampled at temperature T, from the samples y ~ pi_T of each prompt:
    KL(pi_T || pi_SFT) ~= log pi_T(y|x) - log pi_SFT(y|x),   pi_T = softmax(logits / T) token by token,
and for greedy decoding (T = 0, a point mass on y*) exactly -log pi_SFT(y*|x). One sample per prompt, so the
per-prompt values are noisy but unbiased; their mean over prompts (with a cluster interval) is what the report
and the frontier plot use. Written to RUN/decoding-TASK.json (cached while its settings are the same).
"""
from __future__ import annotations

import json
import os

import torch

from ..tasks import answer_tokens
from .spec import CompareSpec, paths, read_json, seed_task
from .spec import run_dir as spec_run_dir



def decoding_settings(spec: CompareSpec, seed: int) -> dict:
    return {"temperatures": list(spec.temperatures), "val_prompts": spec.val_prompts,
            "eval_prompts": spec.eval_prompts, "seed": seed, "max_new_tokens": answer_tokens(spec.task)}


def tempered_kl(policy_lp_t: torch.Tensor, sft_lp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample KL estimate to SFT: log pi_T(y) - log pi_SFT(y); greedy (T=0) is deterministic, log pi_0 = 0."""
    return (policy_lp_t if temperature > 0 else torch.zeros_like(sft_lp)) - sft_lp


def decode_run(spec: CompareSpec, seed: int, run: str) -> dict:
    """RUN/decoding-TASK.json: {"settings", "temperatures": {"T": {"val": [gold], "eval": [gold], "kl": [KL]}}}."""
    from ..eval.evaluate import load_eval_model, resolve_model
    from ..sampling import sample
    from ..train.engine import autocast
    from ..train.policy_eval import completion_logps

    p = paths(spec, seed)
    run_dir = spec_run_dir(spec, seed, run)
    out_path = os.path.join(run_dir, f"decoding-{spec.task}.json")
    settings = decoding_settings(spec, seed)
    if os.path.isfile(out_path) and (cached := read_json(out_path)).get("settings") == settings:
        return cached
    task = seed_task(spec, seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_eval_model(resolve_model(run_dir, spec.task)[0], device)
    sft, sft_tok = (model, tok) if run == "sft" else load_eval_model(p["sft_final"], device)
    prompts = {"val": task.prompts("val", spec.val_prompts, seed), "eval": task.prompts("eval", spec.eval_prompts, seed)}
    result: dict = {"settings": settings, "temperatures": {}}
    for t in spec.temperatures:
        row = {}
        for split, ps in prompts.items():
            with autocast(device, "auto"):
                texts = sample(model, tok, ps, max_new_tokens=answer_tokens(spec.task), temperature=t, seed=seed, device=device)
            row[split] = [task.gold_reward(x, c) for x, c in zip(ps, texts)]
            if split == "eval":
                own = (completion_logps(model, tok, ps, texts, device, "auto", temperature=t) if t > 0
                       else torch.zeros(len(ps)))
                ref = completion_logps(sft, sft_tok, ps, texts, device, "auto")
                row["kl"] = tempered_kl(own, ref, t).tolist()
        result["temperatures"][f"{t:g}"] = row
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)
    return result


def best_temperature(val_gold_by_t: dict[str, list[list[float]]]) -> str:
    """The temperature with the best mean validation gold over seeds (first in the given order on a tie).
    Chosen on validation prompts only: the evaluation prompts never pick anything."""
    def mean(groups):
        return sum(sum(g) / len(g) for g in groups) / len(groups)
    return max(val_gold_by_t, key=lambda t: mean(val_gold_by_t[t]))
