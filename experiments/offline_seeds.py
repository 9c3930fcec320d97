"""Methods against SFT on family_tree over several seeds: gold reward and KL to the SFT model.

    .venv/bin/python experiments/offline_seeds.py --seeds 0 1 2 --methods dpo ipo kto
    .venv/bin/python experiments/offline_seeds.py --methods ppo rloo --out runs/family_tree/online kl.target=2

Uses the SFT run, reward run and task data of the family_tree configs (runs/family_tree/sft,
runs/family_tree/reward, runs/data/family_tree-seed0); each method starts from the same SFT model (and
the same reward model) with its own seed (data order, sampling). Prints mean and spread (sample std) per
method and the per-seed difference to SFT, evaluated on the same prompts. Extra key=value arguments
override every method's config.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from tinyrlhf.study.spec import METHODS
from tinyrlhf.config import KTOConfig, ModelConfig, PreferenceConfig, SFTConfig, load_config
from tinyrlhf.train.policy_eval import policy_eval
from tinyrlhf.models import build_model
from tinyrlhf.tasks import get_task
from tinyrlhf.train.kto import run_kto
from tinyrlhf.train.preference import run_preference

SFT = "runs/family_tree/sft/final"
ONLINE = {m: v for m, v in METHODS.items() if v[4]}  # methods that sample from the policy


def sft_scores(seed: int) -> dict:
    """The SFT model scored exactly like the methods (same prompts, same sampling seed)."""
    import torch
    cfg = load_config(SFTConfig, "configs/family_tree/sft.yaml")
    model, tok = build_model(ModelConfig(path=SFT))
    return policy_eval(model, tok, get_task("family_tree"), cfg.eval, torch.device("cpu"), seed, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["dpo", "ipo", "kto"])
    ap.add_argument("--out", default="runs/family_tree/offline")
    args, overrides = ap.parse_known_args()
    rows = []
    for seed in args.seeds:
        base = sft_scores(seed)
        rows.append({"method": "sft", "seed": seed, **base})
        for m in args.methods:
            common = [f"seed={seed}", f"out_dir={args.out}/{m}-seed{seed}", "train.progress=false", *overrides]
            if m in ONLINE:
                import importlib
                config_name, cls, loop, extra, _ = ONLINE[m]
                module, fn = loop.split(":")
                run = getattr(importlib.import_module(f"tinyrlhf.train.{module}"), fn)
                s = run(load_config(cls, f"configs/family_tree/{config_name}.yaml", [*extra, *common]))
            elif m == "kto":
                s = run_kto(load_config(KTOConfig, "configs/family_tree/kto.yaml", common))
            else:
                s = run_preference(load_config(PreferenceConfig, f"configs/family_tree/{m}.yaml"
                                               if os.path.isfile(f"configs/family_tree/{m}.yaml")
                                               else "configs/family_tree/dpo.yaml", [f"loss={m}", *common]))
            rows.append({"method": m, "seed": seed, **{k: s[k] for k in ("gold/mean", "gold/greedy", "kl/ref")}})
            print(json.dumps(rows[-1]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"\n{'method':6s} {'gold (T=1)':>18s} {'gold (greedy)':>18s} {'KL to SFT':>16s} {'wins vs SFT':>11s}")
    sft = {r["seed"]: r for r in rows if r["method"] == "sft"}
    for m in ["sft", *args.methods]:
        rs = [r for r in rows if r["method"] == m]

        def ms(key):
            v = [r[key] for r in rs if key in r]
            if not v:
                return "-"
            return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"
        wins = sum(r["gold/mean"] > sft[r["seed"]]["gold/mean"] for r in rs) if m != "sft" else "-"
        print(f"{m:6s} {ms('gold/mean'):>18s} {ms('gold/greedy'):>18s} {ms('kl/ref'):>16s} "
              f"{str(wins) + '/' + str(len(rs)) if m != 'sft' else '-':>11s}")


if __name__ == "__main__":
    main()
