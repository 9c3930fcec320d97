"""Each round's evaluation in `tinyrlhf loop` and the per-condition report (report-COND.md / .json / .png).

Per round and seed: gold reward of one sample per held-out prompt (95 % bootstrap CI), the proxy reward
(the reward model the policy was trained against, on those samples), KL to the SFT model, the win rate
against SFT (gold judge), the reward model's accuracy on fresh samples (the round's policy answer against
the SFT answer to the same held-out prompt, ordered as the gold reward orders them: the pairs the policy
actually produces, which that reward model never saw), its held-out accuracy on the task's scripted pairs,
and the Elo rating of every round's policy from gold-judged games on the held-out prompts (eval/ratings.py).
"""
from __future__ import annotations

import json
import os

import torch

from ..diskio import write_text
from ..errors import DataError
from ..eval.evaluate import EvalSettings, evaluate_model, write_result
from ..eval.metrics import cluster_bootstrap_ci
from ..eval.ratings import elo_ratings
from .loop_spec import reward_dir, round_dir
from .run_eval import rm_accuracy_on_samples
from .spec import paths, read_json, write_json

EVAL_FILE = "eval-loop.json"


def _run_dir(spec, seed: int, r: int) -> str:
    return paths(spec.compare, seed)["sft"] if r == 0 else os.path.join(round_dir(spec, seed, r), "policy")


def evaluate_round(spec, seed: int, r: int) -> dict:
    """RUN/eval-loop.json of round r's policy (r = 0: the SFT model), cached while its settings match."""
    run = _run_dir(spec, seed, r)
    out = os.path.join(run, EVAL_FILE)
    settings = EvalSettings(n_prompts=spec.loop.eval_prompts, max_new_tokens=spec.loop.max_new_tokens,
                            seed=seed, data_seed=seed)
    rm = reward_dir(spec, seed, r) if r > 0 and spec.needs_rm else ""
    if os.path.isfile(out):
        cached = read_json(out)
        if cached.get("settings") == settings.__dict__ and cached.get("rm_score", {}).get("reward", "") == rm:
            return cached
    sft = paths(spec.compare, seed)["sft"]
    result = evaluate_model(run, spec.task, reward=rm, reference="" if r == 0 else sft, settings=settings)
    if rm:
        from ..tasks import get_task
        from ..train.rl import reward_source
        base = read_json(os.path.join(sft, EVAL_FILE))
        samples = os.path.join(sft, EVAL_FILE.removesuffix(".json") + ".samples.jsonl")
        try:
            with open(samples, encoding="utf-8") as f:
                sft_samples = [json.loads(line)["completion"] for line in f]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"not the samples of an evaluation (truncated or corrupt): delete it and "
                            f"{os.path.join(sft, EVAL_FILE)}, then run the same command again", path=samples) from None
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        score, _ = reward_source(rm, get_task(spec.task), device, settings.precision, check_scale=False)
        result["rm_accuracy_fresh"] = rm_accuracy_on_samples(
            score, [s["prompt"] for s in result["samples"]], [s["completion"] for s in result["samples"]],
            sft_samples, result["per_prompt"]["gold"], base["per_prompt"]["gold"])
    write_result(result, out)
    return {k: v for k, v in result.items() if k != "samples"}


def note(stage: str, summary) -> str:
    if not isinstance(summary, dict):
        return ""
    if stage == "labels" and "pairs" in summary:
        agree = summary.get("agreement_with_gold")
        return f"   {summary['pairs']} pairs" + (f", {agree:.1%} agree with gold" if agree is not None else "") + \
            (" (reused)" if summary.get("reused") else "")
    if stage == "reward" and "eval/accuracy_gold" in summary:
        return f"   held-out accuracy vs gold {summary['eval/accuracy_gold']:.3f}"
    if stage == "eval" and "gold" in summary:
        g = summary["gold"]
        extra = f", KL {summary['kl_ref']['mean']:.2f}" if "kl_ref" in summary else ""
        extra += f", proxy {summary['rm_score']['mean']:.2f}" if "rm_score" in summary else ""
        return f"   gold {g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}]{extra}"
    return ""


def _rows(spec) -> tuple[list[dict], dict]:
    """One row per evaluated (seed, round), and the evaluations' per-prompt gold by (seed, round)."""
    rows, gold = [], {}
    for s in range(spec.seeds):
        for r in range(0, spec.rounds + 1):
            path = os.path.join(_run_dir(spec, s, r), EVAL_FILE)
            if not os.path.isfile(path):
                continue
            e = read_json(path)
            gold[s, r] = e["per_prompt"]["gold"]
            row = {"seed": s, "round": r, "gold": e["gold"], "gold_greedy": e["gold_greedy"],
                   "kl": e.get("kl_ref", {}).get("mean", 0.0 if r == 0 else None),
                   "proxy": e.get("rm_score", {}).get("mean"),
                   "win_rate": e.get("win_rate", {}).get("rate"),
                   "rm_acc_fresh": e.get("rm_accuracy_fresh", {}).get("accuracy"),
                   "rm_acc_fresh_pairs": e.get("rm_accuracy_fresh", {}).get("pairs")}
            if r > 0:
                labels = [os.path.join(round_dir(spec, s, i), "labels", "manifest.json")
                          for i in range(1, (r if spec.loop.refresh_rm else 1) + 1)]
                row["labels"] = sum(read_json(p)["pairs"] for p in labels if os.path.isfile(p))
                row["label_agreement"] = read_json(labels[-1]).get("agreement_with_gold") \
                    if os.path.isfile(labels[-1]) else None
                human = os.path.join(round_dir(spec, s, r), "labels", "export_summary.json")
                if os.path.isfile(human):  # people's labels: who labelled, agreement, the models' Elo from votes
                    h = read_json(human)
                    row["human"] = {"labels": h.get("labels"), "per_labeller": h.get("per_labeller"),
                                    "agreement": h.get("agreement"), "elo": (h.get("ratings") or {}).get("elo")}
                rm_summary = os.path.join(reward_dir(spec, s, r), "summary.json")
                if spec.needs_rm and os.path.isfile(rm_summary):
                    row["rm_acc_heldout"] = read_json(rm_summary).get("eval/accuracy_gold")
            rows.append(row)
    return rows, gold


def _elo(spec, gold: dict) -> dict:
    """{seed: {"round-r" or "sft": rating}}: every pair of that seed's evaluated models plays one game per
    held-out prompt (the same prompts for all of them), won by the higher gold reward (equal: a draw)."""
    out = {}
    for s in range(spec.seeds):
        models = {("sft" if r == 0 else f"round-{r}"): gold[s, r] for r in range(spec.rounds + 1) if (s, r) in gold}
        names = list(models)
        matches = [(a, b, 1.0 if ga > gb else 0.5 if ga == gb else 0.0)
                   for i, a in enumerate(names) for b in names[i + 1:]
                   for ga, gb in zip(models[a], models[b])]
        if matches:
            out[s] = elo_ratings(matches, seed=s)
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def write_report(spec) -> dict:
    rows, gold = _rows(spec)
    elo = _elo(spec, gold)
    for row in rows:
        e = elo.get(row["seed"], {}).get("sft" if row["round"] == 0 else f"round-{row['round']}")
        row["elo"] = e
    per_round = []
    for r in range(spec.rounds + 1):
        mine = [row for row in rows if row["round"] == r]
        if not mine:
            continue
        mean, low, high = cluster_bootstrap_ci([gold[row["seed"], r] for row in mine], seed=r)
        per_round.append({"round": r, "seeds": len(mine), "gold": {"mean": mean, "low": low, "high": high},
                          **{k: _mean([row.get(k) for row in mine]) for k in (
                              "gold_greedy", "proxy", "kl", "win_rate", "rm_acc_fresh", "rm_acc_heldout", "labels")},
                          "elo": _mean([(row["elo"] or {}).get("rating") for row in mine])})
    report = {"task": spec.task, "method": spec.method, "condition": spec.cond, "labels": spec.labels,
              "loop": {k: getattr(spec.loop, k) for k in spec.loop.__dataclass_fields__},
              "rounds": per_round, "per_seed": rows}
    base = os.path.join(spec.out, f"report-{spec.cond}")
    report["plot"] = _plot(report, base + ".png") if per_round else None
    write_json(base + ".json", report)
    write_text(base + ".md", format_report(report))
    return {**report, "files": [base + ".md", base + ".json", base + ".png"]}


def _f(x, fmt=".3f"):
    return "–" if x is None else format(x, fmt)


def format_report(report: dict) -> str:
    cfg = report["loop"]
    rm = "refreshed every round on all labels so far" if cfg["refresh_rm"] else \
        "static: trained once on all rounds' labels, drawn from SFT"
    lines = [f"# tinyrlhf loop: {report['task']}, {report['method']}, {report['labels']} labels",
             "", f"Reward model: {rm}. {cfg['labels_per_round']} labels per round, {cfg['policy_steps']} policy steps "
             f"per round, {cfg['eval_prompts']} held-out prompts per evaluation. Round 0 is the SFT model.", "",
             "| round | seeds | labels | gold [95% CI] | greedy gold | proxy | KL to SFT | win rate vs SFT | "
             "RM acc. fresh | RM acc. held-out | Elo |", "|" + " --- |" * 11]
    for r in report["rounds"]:
        g = r["gold"]
        lines.append(f"| {r['round']} | {r['seeds']} | {_f(r['labels'], '.0f')} | {g['mean']:.3f} "
                     f"[{g['low']:.3f}, {g['high']:.3f}] | {_f(r['gold_greedy'])} | {_f(r['proxy'], '.2f')} | "
                     f"{_f(r['kl'], '.2f')} | {_f(r['win_rate'])} | {_f(r['rm_acc_fresh'])} | "
                     f"{_f(r['rm_acc_heldout'])} | {_f(r['elo'], '.0f')} |")
    lines += ["", "Per seed:", "", "| seed | round | gold | proxy | KL | RM acc. fresh (pairs) | labels | "
              "label agreement with gold | Elo [95% CI] |", "|" + " --- |" * 9]
    for row in report["per_seed"]:
        e = row["elo"]
        elo = f"{e['rating']:.0f} [{e['low']:.0f}, {e['high']:.0f}]" if e else "–"
        lines.append(f"| {row['seed']} | {row['round']} | {row['gold']['mean']:.3f} | {_f(row['proxy'], '.2f')} | "
                     f"{_f(row['kl'], '.2f')} | {_f(row['rm_acc_fresh'])} ({row['rm_acc_fresh_pairs'] or 0}) | "
                     f"{_f(row.get('labels'), '.0f')} | {_f(row.get('label_agreement'))} | {elo} |")
    for row in report["per_seed"]:
        h = row.get("human")
        if h:
            elo = ", ".join(f"{m} {e['rating']:.0f} [{e['low']:.0f}, {e['high']:.0f}]" for m, e in (h["elo"] or {}).items())
            lines.append(f"\nSeed {row['seed']} round {row['round']}, people's labels: {h['labels']} "
                         f"({', '.join(f'{k} {v}' for k, v in (h['per_labeller'] or {}).items())}); "
                         f"Elo from their votes: {elo or 'none (fewer than two models compared)'}")
    lines += ["", "Gold: the task's gold reward of one sample (T=1) per held-out prompt; the interval resamples "
              "seeds and prompts. Proxy: the reward model the round's policy trained against, on the same samples. "
              "RM acc. fresh: how often that reward model orders the policy's sample and the SFT sample of a "
              "prompt as gold does. Elo: gold-judged games between all rounds' policies of a seed on the "
              "held-out prompts (1000 = the mean of the seed's models)."]
    if report.get("plot"):
        lines += ["", f"![rounds]({os.path.basename(report['plot'])})"]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    seeds = sorted({row["seed"] for row in report["per_seed"]})
    for ax, key, title in zip(axes, ("gold", "proxy", "kl", "rm_acc_fresh"),
                              ("gold reward", "proxy reward", "KL to SFT (nats)", "RM accuracy on fresh samples")):
        for s in seeds:
            pts = [(row["round"], row["gold"]["mean"] if key == "gold" else row[key])
                   for row in report["per_seed"] if row["seed"] == s]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", alpha=0.35, color="gray")
        pts = [(r["round"], r["gold"]["mean"] if key == "gold" else r[key]) for r in report["rounds"]]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color="C0", label="mean over seeds")
        if key == "gold":
            ax.fill_between([r["round"] for r in report["rounds"]], [r["gold"]["low"] for r in report["rounds"]],
                            [r["gold"]["high"] for r in report["rounds"]], alpha=0.2, color="C0")
        ax.set_title(title)
        ax.set_xlabel("round")
    fig.suptitle(f"{report['task']} {report['condition']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
