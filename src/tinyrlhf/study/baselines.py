"""The baselines a trained method has to beat, on the same held-out prompts as the methods (compare's stage
"baselines"): what no learning gets, what sharpening the SFT model gets, and what reranking it gets.

- **heuristic**: the best of the task's battery of constant / rule-based answers (tinyrlhf.tasks.baselines),
  picked on the validation prompts and scored on the evaluation prompts;
- **SFT at temperatures** 1 (the methods' sampling temperature), 0.7, 0.3 and greedy; the "sharpened" SFT is the
  temperature that is best on the validation prompts. A method whose gain is no larger than this one's has
  learned lower entropy, not preferences;
- **best-of-n** against the reward model: n samples of the SFT model at T=1, the one the reward model scores
  highest (Stiennon et al. 2020; Gao et al. 2022). Its KL to the SFT model is at most log n - (n-1)/n. Also at
  every sampling temperature of --temperatures, and the **oracle best-of-n**: the same T=1 samples picked by
  the gold reward, the upper bound of what better labels could give a reranker.

Everything is written to OUT/seedS/baselines.json with the per-prompt gold, so the report can pair each method
with each baseline prompt by prompt.
"""
from __future__ import annotations

import math
import os

import torch

from ..tasks import answer_tokens
from .spec import CompareSpec, paths, read_json, seed_task

TEMPERATURES = (1.0, 0.7, 0.3, 0.0)
BATCH = 64


def best_of_n_kl(n: int) -> float:
    """Upper bound on KL(best-of-n || base) for distinct samples: log n - (n - 1)/n (Stiennon et al. 2020, App. G)."""
    return math.log(n) - (n - 1) / n


def _gold(task, prompts, completions) -> list[float]:
    return [task.gold_reward(p, c) for p, c in zip(prompts, completions)]


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _settings(spec: CompareSpec, seed: int) -> dict:
    return {"eval_prompts": spec.eval_prompts, "val_prompts": spec.val_prompts, "best_of": list(spec.best_of),
            "temperatures": list(TEMPERATURES), "seed": seed, "max_new_tokens": answer_tokens(spec.task),
            "best_of_temperatures": list(spec.temperatures)}


def run_baselines(spec: CompareSpec, seed: int) -> dict:
    p = paths(spec, seed)
    if os.path.isfile(p["baselines"]):
        cached = read_json(p["baselines"])
        if cached.get("settings") == _settings(spec, seed):
            return cached
    from ..sampling import sample
    from ..tasks.baselines import baseline_policies
    from ..train.engine import autocast
    from ..eval.evaluate import load_eval_model

    task = seed_task(spec, seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split_prompts = {"eval": task.prompts("eval", spec.eval_prompts, seed),
                     "val": task.prompts("val", spec.val_prompts, seed)}
    out: dict = {"settings": _settings(spec, seed), "temperature": {}, "best_of": {}, "battery": {},
                 "best_of_by_temperature": {}}

    # 1. the battery of constant and rule-based answers: pick the best on val, score it on eval
    battery = baseline_policies(task)
    golds = {split: {name: _gold(task, ps, [fn(x) for x in ps]) for name, fn in battery.items()}
             for split, ps in split_prompts.items()}
    best = max(battery, key=lambda name: _mean(golds["val"][name]))
    out["battery"] = {name: _mean(g) for name, g in golds["eval"].items()}
    out["heuristic"] = {"name": best, "gold": _mean(golds["eval"][best]), "per_prompt": golds["eval"][best],
                        "val_gold": _mean(golds["val"][best])}

    # 2. the SFT model at several temperatures (same sampling call as `tinyrlhf eval`, so T=1 is its samples)
    model, tok = load_eval_model(p["sft_final"], device)
    for t in TEMPERATURES:
        row = {}
        for split, ps in split_prompts.items():
            with autocast(device, "auto"):
                texts = sample(model, tok, ps, max_new_tokens=answer_tokens(spec.task), temperature=t, batch_size=BATCH,
                               seed=seed, device=device)
            row[split] = _gold(task, ps, texts)
        out["temperature"][f"{t:g}"] = {"gold": _mean(row["eval"]), "per_prompt": row["eval"],
                                        "val_gold": _mean(row["val"])}
    sharp = max(out["temperature"], key=lambda t: out["temperature"][t]["val_gold"])
    out["sharpened"] = {"temperature": float(sharp), **out["temperature"][sharp]}
    del model

    # 3. best-of-n against the reward model, at T=1 ("best_of") and at every sampling temperature of
    #    --temperatures ("best_of_by_temperature": compared at its best temperature on validation, as the methods)
    if spec.best_of and os.path.isdir(os.path.join(p["reward"], "final")):
        from .policy_data import sample_k
        from ..train.rl import reward_source
        score, _ = reward_source(p["reward"], task, device, "auto")
        n_max = max(spec.best_of)
        temps = sorted({1.0, *(t for t in spec.temperatures if t > 0)}, reverse=True)
        for t in temps:
            by_n: dict = {}
            for split, ps in split_prompts.items():
                # T=1 keeps the seeds it always had, so "best_of" is the same whatever --temperatures says
                groups = sample_k(p["sft_final"], ps, n_max, temperature=t, max_new_tokens=answer_tokens(spec.task),
                                  seed=seed * 7919 + (split == "val") + (0 if t == 1.0 else round(t * 1000) * 2))
                flat_p = [x for x, g in zip(ps, groups) for _ in g]
                scores = score(flat_p, [c for g in groups for c in g]).view(len(ps), n_max)  # (P, n_max)
                for n in spec.best_of:
                    pick = scores[:, :n].argmax(1).tolist()
                    chosen = [g[i] for g, i in zip(groups, pick)]
                    row = by_n.setdefault(str(n), {"kl_bound": best_of_n_kl(n)})
                    gold = _gold(task, ps, chosen)
                    if split == "eval":
                        row.update(gold=_mean(gold), per_prompt=gold,
                                   proxy=scores[:, :n].max(1).values.mean().item(),
                                   proxy_first=scores[:, 0].mean().item())
                    else:
                        row["val_gold"] = _mean(gold)
                        row["val_per_prompt"] = gold
                if t == 1.0 and split == "eval":
                    # the oracle: the same n samples reranked by the GOLD reward, the ceiling of any reward
                    # model's best-of-n (what perfect labels would give), with the same KL bound
                    golds = [_gold(task, [x] * len(g), g) for x, g in zip(ps, groups)]
                    out["oracle_best_of"] = {str(n): {"gold": _mean([max(g[:n]) for g in golds]),
                                                      "per_prompt": [max(g[:n]) for g in golds],
                                                      "kl_bound": best_of_n_kl(n)} for n in spec.best_of}
            out["best_of_by_temperature"][f"{t:g}"] = by_n
            if t == 1.0:
                out["best_of"] = {n: {k: v for k, v in row.items() if k != "val_per_prompt"}
                                  for n, row in by_n.items()}
    tmp = p["baselines"] + ".tmp"
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    import json
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, p["baselines"])
    return out
