"""Iterated RLHF on positive_review: does refreshing the reward model each round hold off over-optimisation,
compared with one static reward model trained on the same number of labels? (Bai et al. 2022, §4.5)

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python experiments/loop_positive_review.py --out runs/loop-exp
    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python experiments/loop_positive_review.py --out runs/loop-exp-akl \
        --setting adaptive-kl

Runs `tinyrlhf loop` twice into the same directory (so both conditions share each seed's data and SFT model):
  refresh  each round: 400 new labels on samples of the current policy (half the pairs against an earlier
           round's policy), a reward model retrained from SFT on all labels so far, 40 PPO steps from the
           previous round's policy;
  static   one reward model on 3 x 400 labels of SFT samples, the same PPO rounds against it.
Then prints and writes OUT/loop-compare.md (the README table) and OUT/loop-compare.png: per round the gold
reward with its seed-and-prompt CI, the proxy reward, KL to SFT and the reward model's accuracy on fresh
samples; the paired gold difference refresh - static; and Elo ratings of all policies of both conditions from
gold-judged games on the same held-out prompts. Running it again reuses every finished stage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tinyrlhf.cli import main
from tinyrlhf.eval.metrics import cluster_bootstrap_ci
from tinyrlhf.eval.ratings import elo_ratings

# A short SFT (500 steps instead of 800), a small task data set, a reward model trained for 4 passes over
# its labels, PPO with 32 prompts per step for 40 steps a round. The KL penalty (to the round's starting
# policy) is what the two settings differ in:
#   weak-kl      a fixed coefficient of 0.05;
#   adaptive-kl  configs/positive_review/ppo.yaml's controller (coefficient 0.1 adapted towards 3 nats).
COMMON = ["data.n_pairs=2000", "data.n_rankings=0", "data.n_binary=0", "data.n_eval_pairs=200",
          "sft.train.max_steps=500", "reward.train.max_steps=0", "reward.train.epochs=4",
          "ppo.rollout.prompts_per_step=32", "ppo.ppo.minibatch_size=16", "ppo.train.batch_size=32"]
SETTINGS = {"weak-kl": ["ppo.kl.adaptive=false", "ppo.kl.coef=0.05"], "adaptive-kl": []}
LOOP = ["train.threads=1", "loop.labels_per_round=400", "loop.policy_steps=40"]
CONDS = (("refresh", "ppo", []), ("static", "ppo-static-rm", ["--static-rm"]))


def _gold(out: str, cond: str, seed: int, r: int) -> list[float]:
    run = os.path.join(out, f"seed{seed}", "sft") if r == 0 else \
        os.path.join(out, f"seed{seed}", cond, f"round-{r}", "policy")
    with open(os.path.join(run, "eval-loop.json")) as f:
        return json.load(f)["per_prompt"]["gold"]


def combined(out: str, seeds: int, rounds: int) -> str:
    reps = {name: json.load(open(os.path.join(out, f"report-{cond}.json"))) for name, cond, _ in CONDS}
    lines = ["| round | condition | labels | gold [95% CI] | proxy | KL to SFT | RM acc. fresh | RM acc. held-out |",
             "|" + " --- |" * 8]
    for r in range(rounds + 1):
        for name, _, _ in CONDS:
            row = next(x for x in reps[name]["rounds"] if x["round"] == r)
            f = lambda x, fmt=".3f": "–" if x is None else format(x, fmt)  # noqa: E731
            g = row["gold"]
            lines.append(f"| {r} | {'SFT' if r == 0 else name} | {f(row['labels'], '.0f')} | {g['mean']:.3f} "
                         f"[{g['low']:.3f}, {g['high']:.3f}] | {f(row['proxy'], '.2f')} | {f(row['kl'], '.1f')} | "
                         f"{f(row['rm_acc_fresh'])} | {f(row['rm_acc_heldout'])} |")
            if r == 0:
                break
    lines += ["", "Gold difference refresh - static (same seeds, same held-out prompts; CI over seeds and prompts):", ""]
    for r in range(1, rounds + 1):
        diffs = [[a - b for a, b in zip(_gold(out, "ppo", s, r), _gold(out, "ppo-static-rm", s, r))]
                 for s in range(seeds)]
        mean, low, high = cluster_bootstrap_ci(diffs, seed=r)
        lines.append(f"- round {r}: {mean:+.3f} [{low:+.3f}, {high:+.3f}]")
    lines += ["", "Elo from gold-judged games between all policies of both conditions (per seed, on the same "
              "held-out prompts; mean over seeds, 1000 = the mean model):", ""]
    names = ["sft"] + [f"{n}-{r}" for n, _, _ in CONDS for r in range(1, rounds + 1)]
    per_seed = []
    for s in range(seeds):
        golds = {"sft": _gold(out, "ppo", s, 0)}
        golds.update({f"{n}-{r}": _gold(out, c, s, r) for n, c, _ in CONDS for r in range(1, rounds + 1)})
        matches = [(a, b, 1.0 if x > y else 0.5 if x == y else 0.0) for i, a in enumerate(names)
                   for b in names[i + 1:] for x, y in zip(golds[a], golds[b])]
        per_seed.append(elo_ratings(matches, seed=s))
    lines.append("| model | " + " | ".join(names) + " |")
    lines.append("|" + " --- |" * (len(names) + 1))
    lines.append("| Elo | " + " | ".join(f"{sum(e[m]['rating'] for e in per_seed) / seeds:.0f}" for m in names) + " |")
    _plot(out, reps)
    return "\n".join(lines) + "\n"


def _plot(out: str, reps: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
    for ax, key, title in zip(axes, ("gold", "proxy", "kl", "rm_acc_fresh"),
                              ("gold reward (95% CI)", "proxy reward", "KL to SFT (nats)", "RM accuracy, fresh samples")):
        for i, (name, rep) in enumerate(reps.items()):
            rows = [r for r in rep["rounds"] if key == "gold" or r[key] is not None]
            xs = [r["round"] for r in rows]
            ys = [r["gold"]["mean"] if key == "gold" else r[key] for r in rows]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
            if key == "gold":
                ax.fill_between(xs, [r["gold"]["low"] for r in rows], [r["gold"]["high"] for r in rows],
                                color=f"C{i}", alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("round")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loop-compare.png"), dpi=110)
    plt.close(fig)


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/loop-exp")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setting", choices=tuple(SETTINGS), default="weak-kl")
    args = ap.parse_args(argv)
    t0 = time.time()
    for name, _, flags in CONDS:
        code = main(["loop", "--task", "positive_review", "--rounds", str(args.rounds), "--seeds", str(args.seeds),
                     "--labels", "simulated", "--out", args.out, *flags, *COMMON, *SETTINGS[args.setting], *LOOP])
        if code:
            return code
    table = combined(args.out, args.seeds, args.rounds)
    with open(os.path.join(args.out, "loop-compare.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"total {(time.time() - t0) / 60:.1f} min; written {args.out}/loop-compare.md and loop-compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(run())
