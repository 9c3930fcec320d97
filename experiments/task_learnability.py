"""Can a task's SFT model answer? For each setting (preset, SFT steps, task knobs), train SFT on the task's
demonstrations and measure on 200 eval prompts: gold at T = 1, 0.7, 0.3 and greedy, and from 8 samples per
prompt at T=1 the oracle best-of-8 gold, coverage@8 and the coin-flip rate of pairs (train/policy_eval.py's
`learnability`). One JSON line per setting in OUT/results.jsonl; a finished setting is skipped on a rerun.

    python experiments/task_learnability.py --task family_tree --out runs/learnability \\
        --setting "tiny-1500:model.preset=gpt2-tiny,train.max_steps=1500" \\
        --setting "tiny-3000-small:model.preset=gpt2-tiny,train.max_steps=3000|max_children=2"

A setting is NAME:SFT_OVERRIDES[|DATA_OVERRIDES] (comma-separated key=value). Numbers in docs/tasks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import time

import torch

from tinyrlhf.config import SFTConfig, load_config, parse_overrides
from tinyrlhf.eval.evaluate import load_eval_model
from tinyrlhf.sampling import sample
from tinyrlhf.tasks import get_task, task_config_keys
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.sft import run_sft

TEMPERATURES = (0.7, 0.3)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def split_args(text: str) -> list[str]:
    """key=value,key=[a,b] -> ['key=value', 'key=[a,b]'] (commas inside brackets belong to a list value)."""
    return [a for a in re.split(r",(?![^\[]*\])", text) if a]


def run_setting(task_name: str, out: str, name: str, sft_args: list[str], data_args: list[str], n_prompts: int,
                config_dir: str) -> dict:
    t0, c0 = time.time(), cpu_seconds()
    data_kw = dict(parse_overrides(data_args))
    data = os.path.join(out, name, "data")
    if not os.path.isfile(os.path.join(data, "manifest.json")):
        write_task_data(task_name, data, seed=0, **{"n_pairs": 200, "n_rankings": 0, "n_binary": 0, **data_kw})
    task_kw = {k: v for k, v in data_kw.items() if k in task_config_keys(task_name)}
    sft_dir = os.path.join(out, name, "sft")
    cfg = load_config(SFTConfig, os.path.join(config_dir, "sft.yaml"),
                      [f"out_dir={sft_dir}", f"data.dir={data}", f"data.task={task_name}", "train.progress=false",
                       f"eval.n_prompts={n_prompts}", "train.eval_every=0", *sft_args])
    summary = run_sft(cfg)
    task = get_task(task_name, **task_kw)
    prompts = task.prompts("eval", n_prompts, cfg.data.seed)
    model, tok = load_eval_model(os.path.join(sft_dir, "final"), torch.device("cpu"))
    golds = {"1": summary["gold/mean"], "0": summary["gold/greedy"]}
    for t in TEMPERATURES:
        texts = sample(model, tok, prompts, max_new_tokens=cfg.eval.max_new_tokens, temperature=t, seed=cfg.seed)
        golds[f"{t:g}"] = sum(task.gold_reward(p, c) for p, c in zip(prompts, texts)) / len(prompts)
    refs = [task.reference_answer(p) for p in prompts]
    ref_gold = (sum(task.gold_reward(p, r) for p, r in zip(prompts, refs)) / len(prompts)
                if all(r is not None for r in refs) else None)
    return {"setting": name, "sft": sft_args, "data": data_args, "gold_by_temperature": golds,
            **{k: v for k, v in summary.items() if k.startswith("learn/")}, "reference_gold": ref_gold,
            "demonstrations_gold": json.load(open(os.path.join(data, "manifest.json")))["gold"]["sft_mean"],
            "sft_steps": summary.get("steps"), "wall_s": round(time.time() - t0, 1),
            "cpu_s": round(cpu_seconds() - c0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--config-dir", default="")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.jsonl")
    done = {json.loads(line)["setting"] for line in open(results)} if os.path.isfile(results) else set()
    for spec in args.setting:
        name, _, rest = spec.partition(":")
        sft_part, _, data_part = rest.partition("|")
        if name in done:
            continue
        row = run_setting(args.task, args.out, name, split_args(sft_part), split_args(data_part), args.eval_prompts,
                          args.config_dir or os.path.join("configs", args.task))
        print(json.dumps(row), flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
