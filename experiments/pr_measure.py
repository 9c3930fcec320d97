"""positive_review's numbers: the no-learning answers, and what an SFT model gets by temperature alone versus
what picking among its samples by gold gets (how far a signal about what the reader asked for can move it).

    .venv/bin/python -m tinyrlhf data positive_review --out /tmp/pr-data seed=0
    .venv/bin/python -m tinyrlhf sft --config configs/positive_review/sft.yaml out_dir=/tmp/pr-sft \\
        data.dir=/tmp/pr-data data.task=positive_review
    .venv/bin/python experiments/pr_measure.py --sft /tmp/pr-sft/final

1. On 400 eval prompts (seed 0): the demonstrations' mean gold (rng seed 0, as tests/test_degenerate.py),
   the best degenerate trick and the best prompt-reading rule of tasks/baselines.py, and a hand-written good
   answer per aspect (three fluent sentences, three distinct relevant praise words: 1 - e^-2 = 0.865 each).
2. With --sft, on the first 200 of them: the model sampled at T = 1, 0.7, 0.3 and greedy (tinyrlhf.sampling,
   seed 0, as study/baselines.py), and the oracle best-of-8: 8 samples at T=1 per prompt
   (study.policy_data.sample_k), the one with the highest gold. max_new_tokens 40, as the task's configs.
Prints a Markdown table; --out writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.baselines import degenerate_policies, heuristic_rules, score_policies
from tinyrlhf.tasks.positive_review import parse_review_prompt

HAND_WRITTEN = {"looks": " Great {p}. It looks elegant in the room. I love it.",
                "build": " Great {p}. It feels smooth and well made. I love it.",
                "ease": " Great {p}. Very easy to use. I love it.",
                "price": " Great {p}. Worth every penny. I love it.",
                "delivery": " Great {p}. It arrived early. I love it."}
TEMPERATURES = (1.0, 0.7, 0.3, 0.0)


def hand_written(prompt: str) -> str:
    _, product, aspect = parse_review_prompt(prompt)
    return HAND_WRITTEN[aspect].format(p=product)


def mean_gold(task, prompts, texts) -> float:
    return statistics.fmean(task.gold_reward(p, t) for p, t in zip(prompts, texts))


def no_learning(task, prompts) -> dict:
    rng = random.Random(0)
    demos = [task.demonstration(p, rng) for p in prompts]
    tricks = score_policies(task, prompts, degenerate_policies(task))
    rules = score_policies(task, prompts, heuristic_rules(task))
    best_trick, best_rule = max(tricks, key=tricks.get), max(rules, key=rules.get)
    return {"demonstrations": mean_gold(task, prompts, demos),
            "best_trick": {"name": best_trick, "gold": tricks[best_trick]},
            "best_rule": {"name": best_rule, "gold": rules[best_rule]}, "rules": rules,
            "hand_written": mean_gold(task, prompts, [hand_written(p) for p in prompts])}


def sft_numbers(task, prompts, model_dir: str, max_new_tokens: int) -> dict:
    import torch

    from tinyrlhf.eval.evaluate import load_eval_model
    from tinyrlhf.sampling import sample
    from tinyrlhf.study.policy_data import sample_k

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_eval_model(model_dir, device)
    out: dict = {"temperature": {}, "greedy_examples": []}
    for t in TEMPERATURES:
        texts = sample(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=t, seed=0, device=device)
        out["temperature"][f"{t:g}"] = mean_gold(task, prompts, texts)
        if t == 0.0:
            out["greedy_examples"] = [[p, c, task.gold_reward(p, c)] for p, c in zip(prompts[:5], texts)]
    groups = sample_k(model_dir, prompts, 8, temperature=1.0, max_new_tokens=max_new_tokens, seed=0)
    golds = [[task.gold_reward(p, c) for c in g] for p, g in zip(prompts, groups)]
    out["best_of_8"] = statistics.fmean(max(g) for g in golds)
    out["mean_of_8"] = statistics.fmean(x for g in golds for x in g)
    out["margin_best_of_8_minus_greedy"] = out["best_of_8"] - out["temperature"]["0"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft", default="", help="an SFT final/ directory (left out: only the no-learning numbers)")
    ap.add_argument("--n", type=int, default=400, help="eval prompts for the no-learning numbers (seed 0)")
    ap.add_argument("--n-model", type=int, default=200, help="eval prompts for the model numbers")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    task = get_task("positive_review")
    prompts = task.prompts("eval", args.n, seed=0)
    start_cpu, start_wall = time.process_time(), time.time()
    res = {"no_learning": no_learning(task, prompts)}
    nl = res["no_learning"]
    rows = [("demonstrations", nl["demonstrations"]),
            (f"best trick ({nl['best_trick']['name']})", nl["best_trick"]["gold"]),
            (f"best rule ({nl['best_rule']['name']})", nl["best_rule"]["gold"]),
            ("hand-written good answer", nl["hand_written"])]
    if args.sft:
        res["sft"] = sft_numbers(task, prompts[:args.n_model], args.sft, args.max_new_tokens)
        rows += [(f"SFT T={t}", g) for t, g in res["sft"]["temperature"].items()]
        rows += [("SFT oracle best-of-8 (T=1)", res["sft"]["best_of_8"]),
                 ("best-of-8 minus greedy", res["sft"]["margin_best_of_8_minus_greedy"])]
    res["cpu_s"], res["wall_s"] = time.process_time() - start_cpu, time.time() - start_wall
    print(f"| positive_review, eval prompts seed 0 ({args.n}; model rows {args.n_model}) | mean gold |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    for p, c, g in res.get("sft", {}).get("greedy_examples", []):
        print(f"greedy {g:.3f} {p}{c}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
