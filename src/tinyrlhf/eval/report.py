"""Results of a `tinyrlhf compare` run: one row per method x seed, pooled statistics per method, PNG plots
and a Markdown report that says in words which differences are significant.

Pooled statistics: the gold difference to SFT is taken per held-out prompt within each seed (the method's
sample minus the same seed's SFT sample on the same prompt), the differences of all seeds are pooled and
a paired bootstrap gives the 95 % CI. "Significant" means that CI excludes 0. Win rates pool the gold
judge's verdicts of all seeds the same way. With few seeds this CI covers prompt noise and sampling noise,
not the full seed-to-seed variance: the per-seed means are listed next to it so both can be seen.
"""
from __future__ import annotations

import csv
import json
import os

from . import metrics as M

ROW_KEYS = ("method", "seed", "gold", "gold_low", "gold_high", "gold_greedy", "kl", "win_rate", "win_low",
            "win_high", "rm_score", "length_words", "distinct_1", "distinct_2", "rouge_l", "bleu", "budget",
            "train_seconds", "run_dir")


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _curve(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "objective/gold" in r or "objective/scores" in r]


def collect(spec) -> dict:
    rows, per_prompt, verdict_pool, curves, golds = [], {}, {}, {}, {}
    for seed in range(spec.seeds):
        root = os.path.join(spec.out, f"seed{seed}")
        sft_gold = _read_json(os.path.join(root, "sft", f"eval-{spec.task}.json"))["per_prompt"]["gold"]
        for method in spec.methods:
            run_dir = os.path.join(root, method)
            ev = _read_json(os.path.join(run_dir, f"eval-{spec.task}.json"))
            summary = _read_json(os.path.join(run_dir, "summary.json"))
            gold = ev["per_prompt"]["gold"]
            golds[(seed, method)] = gold
            per_prompt.setdefault(method, []).extend(g - s for g, s in zip(gold, sft_gold))
            win = ev.get("win_rate", {})
            rows.append({"method": method, "seed": seed, "gold": ev["gold"]["mean"], "gold_low": ev["gold"]["low"],
                         "gold_high": ev["gold"]["high"], "gold_greedy": ev["gold_greedy"],
                         "kl": ev.get("kl_ref", {}).get("mean", 0.0), "win_rate": win.get("rate"),
                         "win_low": win.get("low"), "win_high": win.get("high"),
                         "rm_score": ev.get("rm_score", {}).get("mean"), "length_words": ev["length"]["words"],
                         "distinct_1": ev["distinct_1"], "distinct_2": ev["distinct_2"],
                         "rouge_l": ev.get("rouge_l"), "bleu": ev.get("bleu"),
                         "budget": None if method == "sft" else spec.budget,
                         "train_seconds": summary.get("train_seconds"), "run_dir": run_dir})
            if "win" in ev["per_prompt"]:
                verdict_pool.setdefault(method, []).extend(ev["per_prompt"]["win"])
            if curve := _curve(run_dir):
                curves.setdefault(method, []).append(curve)
    methods = {}
    for method in spec.methods:
        mine = [r for r in rows if r["method"] == method]
        d, lo, hi = M.bootstrap_ci(per_prompt[method], seed=0) if method != "sft" else (0.0, 0.0, 0.0)
        entry = {"gold": sum(r["gold"] for r in mine) / len(mine), "gold_per_seed": [r["gold"] for r in mine],
                 "kl": sum(r["kl"] for r in mine) / len(mine), "delta": d, "delta_low": lo, "delta_high": hi,
                 "significant": method != "sft" and (lo > 0 or hi < 0)}
        if rm := [r["rm_score"] for r in mine if r["rm_score"] is not None]:
            entry["rm_score"] = sum(rm) / len(rm)
        if method in verdict_pool:
            entry["win_rate"], entry["win_low"], entry["win_high"] = M.win_rate(verdict_pool[method], seed=0)
        entry["overoptimised"] = _overoptimised(curves.get(method, []))
        methods[method] = entry
    results = {"rows": rows, "methods": methods, "curves": curves, "ratings": _ratings(spec, golds),
               "stages": _stages(spec)}
    with open(os.path.join(spec.out, "results.json"), "w") as f:
        json.dump({"rows": rows, "methods": methods, "ratings": results["ratings"], "budget": spec.budget,
                   "seeds": spec.seeds}, f, indent=2)
    with open(os.path.join(spec.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_KEYS)
        w.writeheader()
        w.writerows(rows)
    return results


def _stages(spec) -> dict:
    """What SFT, the reward model and the on-policy pairs measured for each seed (for the report)."""
    out = {}
    for seed in range(spec.seeds):
        st, root = {}, os.path.join(spec.out, f"seed{seed}")
        sft = os.path.join(root, "sft", "summary.json")
        if os.path.isfile(sft) and "gold/mean" in (s := _read_json(sft)):
            st["sft"] = f"{s.get('before/gold/mean', float('nan')):.3f} -> {s['gold/mean']:.3f} ({s.get('gold/greedy', float('nan')):.3f})"
        rm = os.path.join(root, "reward", "summary.json")
        if os.path.isfile(rm) and "eval/accuracy_gold" in (s := _read_json(rm)):
            st["reward"] = f"{s['eval/accuracy_gold']:.3f} / {s.get('eval/accuracy_labels', float('nan')):.3f}"
        pairs = os.path.join(spec.out, f"pairs-seed{seed}", "manifest.json")
        if os.path.isfile(pairs):
            p = _read_json(pairs)["policy_data"]
            st["pairs"] = (f"{p['pairs']} pairs from {p['prompts']} prompts, {p['zero_gap_pairs']} with equal gold, "
                           f"annotator agreement {p['agreement_measured']:.3f}" if p.get("agreement_measured") else
                           f"{p['pairs']} pairs")
        out[seed] = st
    return out


def _ratings(spec, golds: dict) -> dict | None:
    """Bradley-Terry and Elo ratings (SFT = 1000) from every pair of methods judged by the gold reward on
    the same held-out prompt and seed: one match per (pair of methods, prompt, seed), ties counted half."""
    from .ratings import bradley_terry_ratings, elo_ratings
    if len(spec.methods) < 2:
        return None
    matches = []
    for seed in range(spec.seeds):
        for i, a in enumerate(spec.methods):
            for b in spec.methods[i + 1:]:
                for ga, gb in zip(golds[(seed, a)], golds[(seed, b)]):
                    matches.append((a, b, 1.0 if ga > gb else 0.0 if ga < gb else 0.5))
    return {"matches": len(matches), "bradley_terry": bradley_terry_ratings(matches, anchor="sft"),
            "elo": elo_ratings(matches)}


def _overoptimised(curves: list[list[dict]]) -> dict | None:
    """Proxy up and gold down between the first and last fifth of training, averaged over seeds."""
    if not curves or not all("objective/gold" in c[0] for c in curves):
        return None
    def fifth(c, key, last):
        n = max(1, len(c) // 5)
        part = c[-n:] if last else c[:n]
        return sum(r[key] for r in part) / n
    proxy = sum(fifth(c, "objective/scores", True) - fifth(c, "objective/scores", False) for c in curves) / len(curves)
    gold = sum(fifth(c, "objective/gold", True) - fifth(c, "objective/gold", False) for c in curves) / len(curves)
    return {"proxy_change": proxy, "gold_change": gold, "flag": proxy > 0 and gold < 0}


def _smooth(ys: list[float], window: int = 5) -> list[float]:
    """Trailing moving average, so the trend of noisy per-batch rewards is visible."""
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - window + 1):i + 1]
        out.append(sum(part) / len(part))
    return out


def _plots(spec, results: dict) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(spec.methods)}
    # 1. reward-KL frontier: every run, gold against KL to its SFT model
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in spec.methods:
        pts = [(r["kl"], r["gold"]) for r in results["rows"] if r["method"] == m]
        ax.scatter(*zip(*pts), label=m, color=colors[m], s=40)
    ax.set_xlabel("KL to the SFT model (nats per response)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title(f"{spec.task}: gold reward vs KL, every run ({spec.seeds} seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    files["frontier"] = "frontier.png"
    fig.tight_layout()
    fig.savefig(os.path.join(spec.out, files["frontier"]), dpi=120)
    plt.close(fig)
    # 2. gold difference to SFT with the paired 95 % CI, and the win rate against SFT
    others = [m for m in spec.methods if m != "sft"]
    if others:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        ms = results["methods"]
        d = [ms[m]["delta"] for m in others]
        err = [[ms[m]["delta"] - ms[m]["delta_low"] for m in others], [ms[m]["delta_high"] - ms[m]["delta"] for m in others]]
        axes[0].bar(others, d, yerr=err, color=[colors[m] for m in others], capsize=4)
        axes[0].axhline(0, color="k", lw=0.8)
        axes[0].set_title("gold minus SFT (95% CI)")
        w = [ms[m].get("win_rate", float("nan")) for m in others]
        werr = [[ms[m].get("win_rate", 0) - ms[m].get("win_low", 0) for m in others],
                [ms[m].get("win_high", 0) - ms[m].get("win_rate", 0) for m in others]]
        axes[1].bar(others, w, yerr=werr, color=[colors[m] for m in others], capsize=4)
        axes[1].axhline(0.5, color="k", lw=0.8, ls="--")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("win rate against SFT (gold judge, ties 1/2)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        files["vs_sft"] = "vs_sft.png"
        fig.savefig(os.path.join(spec.out, files["vs_sft"]), dpi=120)
        plt.close(fig)
    # 3. learning curves of the online methods: proxy (reward model) and gold of the training samples
    if results["curves"]:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
        for m, runs in results["curves"].items():
            for j, c in enumerate(runs):
                steps = [r["step"] for r in c]
                for ax, key in ((axes[0], "objective/scores"), (axes[1], "objective/gold")):
                    ys = [r.get(key, float("nan")) for r in c]
                    ax.plot(steps, ys, color=colors[m], alpha=0.25, lw=0.8)  # raw: one rollout batch per point
                    ax.plot(steps, _smooth(ys), color=colors[m], lw=2, label=m if j == 0 else None)
        axes[0].set_title("proxy reward (reward model) of rollouts")
        axes[1].set_title("gold of the same rollouts (thick: 5-step mean)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        files["curves"] = "curves.png"
        fig.savefig(os.path.join(spec.out, files["curves"]), dpi=120)
        plt.close(fig)
    return files


def _sentence(m: str, e: dict) -> str:
    ci = f"{e['delta']:+.3f} gold (95% CI {e['delta_low']:+.3f} to {e['delta_high']:+.3f})"
    if not e["significant"]:
        return f"- **{m}** vs SFT: {ci}. Not significant: the CI includes 0."
    word = "beats" if e["delta"] > 0 else "is worse than"
    return f"- **{m}** {word} SFT by {ci}: significant."


def write_report(spec, results: dict) -> str:
    files = _plots(spec, results)
    ms = results["methods"]
    lines = [f"# Method comparison on `{spec.task}`", "",
             f"Seeds: {spec.seeds}. Budget: **{spec.budget} training prompts per method** (preference pairs or "
             f"binary examples for offline methods; rollout prompts for online ones; RLOO/GRPO sample several "
             f"completions per prompt and online DPO two). Offline methods learn from "
             + ("the SFT model's own samples judged by the simulated annotators" if spec.offline_data == "policy"
                else "the task's scripted candidate pairs") + "; the reward model from the task's annotated pairs. "
             f"Evaluation: {spec.eval_prompts} held-out prompts per "
             "seed, one sample each at T=1, gold judge, against the same seed's SFT model.", "",
             "| method | gold (mean of seeds) | per seed | Δ vs SFT [95% CI] | KL to SFT | win rate vs SFT [95% CI] | RM score |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in spec.methods:
        e = ms[m]
        delta = "–" if m == "sft" else f"{e['delta']:+.3f} [{e['delta_low']:+.3f}, {e['delta_high']:+.3f}]" \
            + (" *" if e["significant"] else "")
        win = f"{e['win_rate']:.3f} [{e['win_low']:.3f}, {e['win_high']:.3f}]" if "win_rate" in e else "–"
        rm = f"{e['rm_score']:.3f}" if "rm_score" in e else "–"
        per_seed = ", ".join(f"{g:.3f}" for g in e["gold_per_seed"])
        lines.append(f"| {m} | {e['gold']:.3f} | {per_seed} | {delta} | {e['kl']:.3f} | {win} | {rm} |")
    lines += ["", "\\* the paired 95 % CI of the gold difference excludes 0. The CIs resample held-out prompts "
              "(pooled over seeds); they do not contain the seed-to-seed spread, which the per-seed column shows.",
              "", "## What the numbers say", ""]
    lines += [_sentence(m, ms[m]) for m in spec.methods if m != "sft"]
    flagged = [m for m in spec.methods if (ms[m].get("overoptimised") or {}).get("flag")]
    for m in spec.methods:
        o = ms[m].get("overoptimised")
        if o:
            lines.append(f"- {m} training: proxy reward {o['proxy_change']:+.3f} and gold {o['gold_change']:+.3f} "
                         "from the first to the last fifth of training"
                         + (" — **reward-model over-optimisation** (proxy up, gold down)." if o["flag"] else "."))
    if not flagged:
        lines.append("- No run shows proxy up while gold goes down over training.")
    if results.get("stages"):
        lines += ["", "## The shared stages, per seed", "",
                  "| seed | SFT gold: untrained -> trained (greedy) | reward model accuracy vs gold / vs labels | "
                  "preference pairs on SFT samples |", "| --- | --- | --- | --- |"]
        for seed, st in sorted(results["stages"].items()):
            lines.append(f"| {seed} | {st.get('sft', '–')} | {st.get('reward', '–')} | {st.get('pairs', '–')} |")
    if results.get("ratings"):
        r = results["ratings"]
        lines += ["", f"## Ratings from all pairwise judgments ({r['matches']} matches: every pair of methods on "
                  "every held-out prompt and seed, gold judge, ties half)", "",
                  "SFT anchors the Bradley–Terry scale (so its interval has no width). The intervals resample "
                  "matches as if independent, though each sample plays against every other method: read them "
                  "as a lower bound on the uncertainty.", "",
                  "| method | Bradley–Terry (SFT = 1000) [95% CI] | Elo [95% CI] |", "| --- | --- | --- |"]
        bt, elo = r["bradley_terry"], r["elo"]
        for m in sorted(spec.methods, key=lambda m: -bt[m]["rating"]):
            lines.append(f"| {m} | {bt[m]['rating']:.0f} [{bt[m]['low']:.0f}, {bt[m]['high']:.0f}] | "
                         f"{elo[m]['rating']:.0f} [{elo[m]['low']:.0f}, {elo[m]['high']:.0f}] |")
    lines += ["", "## Plots", ""]
    captions = {"frontier": "Gold reward against KL to the SFT model, one point per run.",
                "vs_sft": "Gold difference to SFT and win rate against SFT, with 95 % CIs.",
                "curves": "Online methods: proxy reward and gold reward of the training rollouts."}
    for key, name in files.items():
        lines += [f"![{key}]({name})", "", captions[key], ""]
    lines += ["Per-run numbers: `results.csv` / `results.json`. Each run directory holds its config, metrics and "
              f"`eval-{spec.task}.json` (samples in `eval-{spec.task}.samples.jsonl`)."]
    path = os.path.join(spec.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def format_table(spec, results: dict) -> str:
    ms = results["methods"]
    out = [f"{'method':12s} {'gold':>7s} {'Δ vs SFT [95% CI]':>28s} {'KL':>7s} {'win vs SFT':>11s}"]
    for m in spec.methods:
        e = ms[m]
        delta = "" if m == "sft" else f"{e['delta']:+.3f} [{e['delta_low']:+.3f},{e['delta_high']:+.3f}]" \
            + ("*" if e["significant"] else " ")
        win = f"{e['win_rate']:.3f}" if "win_rate" in e else ""
        out.append(f"{m:12s} {e['gold']:7.3f} {delta:>28s} {e['kl']:7.3f} {win:>11s}")
    return "\n".join(out)
