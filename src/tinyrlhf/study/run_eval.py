"""Compare's evaluation of one run: `tinyrlhf eval` against the seed's SFT model, plus what the comparison needs
on top -- the reward model's accuracy on the run's own samples and, when trials are compared, the gold on the
validation prompts that picks each method's best trial."""
from __future__ import annotations

import json
import os

import torch

from ..tasks import answer_tokens
from .spec import CompareSpec, paths, read_json, seed_task
from .spec import run_dir as spec_run_dir


def rm_accuracy_on_samples(score, prompts, a: list[str], b: list[str], gold_a: list[float],
                           gold_b: list[float]) -> dict:
    """How often the reward model orders two samples of the same prompt as the gold reward does (pairs with equal
    gold left out). Here a = the run's own samples, b = the SFT model's: the pairs a policy optimised against the
    reward model actually produces, not the scripted pairs of the task data (Gao et al. 2022 measure the same drift)."""
    ra, rb = score(prompts, a).tolist(), score(prompts, b).tolist()
    n = agree = 0
    for x, y, gx, gy in zip(ra, rb, gold_a, gold_b):
        if gx != gy:
            n += 1
            agree += (x > y) == (gx > gy)
    return {"accuracy": agree / n if n else None, "pairs": n}


def val_gold(run_dir: str, task, n: int, seed: int, max_new_tokens: int = 24) -> float:
    """Mean gold of one T=1 sample per validation prompt (kept apart from the evaluation prompts)."""
    from ..sampling import sample
    from ..train.engine import autocast
    from ..eval.evaluate import load_eval_model, resolve_model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_eval_model(resolve_model(run_dir, task.name)[0], device)
    prompts = task.prompts("val", n, seed)
    with autocast(device, "auto"):
        texts = sample(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, device=device)
    return sum(task.gold_reward(p, c) for p, c in zip(prompts, texts)) / len(prompts)


def evaluate_run(spec: CompareSpec, seed: int, run: str) -> dict:
    """eval-TASK.json of one run (cached in the run directory while its settings and extras are complete)."""
    from ..eval.evaluate import EvalSettings, evaluate_model, write_result
    p = paths(spec, seed)
    run_dir = spec_run_dir(spec, seed, run)
    out = os.path.join(run_dir, f"eval-{spec.task}.json")
    settings = EvalSettings(n_prompts=spec.eval_prompts, seed=seed, data_seed=seed,
                            max_new_tokens=answer_tokens(spec.task))
    has_rm = os.path.isdir(os.path.join(p["reward"], "final"))
    need = set()
    if run != "sft":
        need |= {"rm_accuracy_own"} if has_rm else set()
        need |= {"val_gold"} if spec.trials > 1 else set()
    if os.path.isfile(out):
        cached = read_json(out)
        if cached.get("settings") == settings.__dict__ and need <= set(cached):
            return cached
    reference = "" if run == "sft" else p["sft"]
    result = evaluate_model(run_dir, spec.task, reward=p["reward"] if has_rm else "", reference=reference,
                            settings=settings, task=seed_task(spec, seed))
    if "rm_accuracy_own" in need:
        from ..train.rl import reward_source
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        score, _ = reward_source(p["reward"], seed_task(spec, seed), device, settings.precision)
        with open(os.path.join(p["sft"], f"eval-{spec.task}.samples.jsonl")) as f:
            sft_samples = [json.loads(line)["completion"] for line in f]
        sft_gold = read_json(os.path.join(p["sft"], f"eval-{spec.task}.json"))["per_prompt"]["gold"]
        prompts = [s["prompt"] for s in result["samples"]]
        mine = [s["completion"] for s in result["samples"]]
        result["rm_accuracy_own"] = rm_accuracy_on_samples(score, prompts, mine, sft_samples,
                                                           result["per_prompt"]["gold"], sft_gold)
    if "val_gold" in need:
        result["val_gold"] = val_gold(run_dir, seed_task(spec, seed), spec.val_prompts, seed,
                                      answer_tokens(spec.task))
    write_result(result, out)
    return {k: v for k, v in result.items() if k != "samples"}
