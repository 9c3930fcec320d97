"""The table "degenerate policies vs SFT": each degenerate policy's mean gold on held-out eval prompts,
next to the task's demonstrations (what SFT imitates) and trained SFT models sampled at T=1 and greedy.

    .venv/bin/python experiments/degenerate_table.py --task family_tree --n 400 \\
        --model "SFT 1,500 steps=runs/family_tree/sft/final" --model "SFT 800 steps=runs/ft-800/final"

Models are scored exactly as `tinyrlhf eval` scores them (tinyrlhf.sampling.sample, sampling seed 0,
max_new_tokens as in the task's sft.yaml). Prints a Markdown table, best first.
"""
from __future__ import annotations

import argparse
import random
import statistics

from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.baselines import score_policies

MAX_NEW_TOKENS = {"family_tree": 24, "positive_review": 40, "summarize": 32}


def model_scores(task, prompts: list[str], path: str, seed: int) -> tuple[float, float]:
    import torch

    from tinyrlhf.config import ModelConfig
    from tinyrlhf.models import build_model
    from tinyrlhf.sampling import sample

    model, tok = build_model(ModelConfig(path=path))
    out = []
    for temperature in (1.0, 0.0):
        texts = sample(model, tok, prompts, max_new_tokens=MAX_NEW_TOKENS[task.name], temperature=temperature,
                       seed=seed, device=torch.device("cpu"))
        out.append(statistics.fmean(task.gold_reward(p, c) for p, c in zip(prompts, texts)))
    return out[0], out[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--n", type=int, default=400, help="eval prompts (data seed 0)")
    ap.add_argument("--model", action="append", default=[], help="LABEL=PATH of a final/ model directory")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--set", action="append", default=[], help="task setting KEY=VALUE (e.g. max_children=2)")
    args = ap.parse_args()
    from tinyrlhf.config import parse_overrides
    task = get_task(args.task, **dict(parse_overrides(args.set)))
    prompts = task.prompts("eval", args.n, 0)
    from tinyrlhf.tasks.baselines import heuristic_rules
    rules = heuristic_rules(task)
    rows = [(f"{'rule' if k in rules else 'degenerate'}: {k}", v) for k, v in score_policies(task, prompts).items()]
    rng = random.Random(0)
    rows.append(("demonstrations (what SFT imitates)",
                 statistics.fmean(task.gold_reward(p, task.demonstration(p, rng)) for p in prompts)))
    for spec in args.model:
        label, path = spec.split("=", 1)
        t1, greedy = model_scores(task, prompts, path, args.seed)
        rows += [(f"{label}, T=1", t1), (f"{label}, greedy", greedy)]
    print(f"| {args.task}: policy ({args.n} eval prompts) | mean gold (max {task.max_gold:g}) |\n| --- | --- |")
    for name, value in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main()
