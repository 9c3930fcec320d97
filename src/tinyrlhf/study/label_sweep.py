"""Label-budget curves (`tinyrlhf compare ... --label-sweep 640,2560,10240`): what limits a task. For each label
budget L and seed, the SFT model's samples are labelled again (L prompts, the same annotators), a reward model
is trained on those labels and PPO on it, and DPO on the same labels; every run from the same seed's SFT model
as the main comparison (its data and SFT are reused), each method at the setting the main comparison chose on
validation. Gold (T=1, the same held-out prompts) and the reward model's accuracy against gold are drawn
against L, next to the oracle PPO trained on the gold reward (`ppo-gold`, when the comparison ran it) and the
oracle best-of-8 of the SFT model's samples (its coverage).

Effort per label is held constant across budgets: DPO makes the passes over its labels that the main
comparison's chosen DPO made, the reward model the passes the main reward model made. Reading the curves
(Gao et al. 2022 draw the same kind for reward-model size and data): gold still rising at the largest budget
means labels limit the task; a reward model near chance with an oracle far above means its quality does; an
oracle best-of-8 barely above SFT means the base model's coverage does.
Layout: OUT/labels-L/ (compare.json, pairs-seedS/, seedS/<run>/), OUT/label_sweep.{json,md,png}.
"""
from __future__ import annotations

import dataclasses
import os

from .report import interval, passes
from .spec import CompareSpec, read_json, run_dir, runs_of, write_json

SWEEP_METHODS = ("ppo", "dpo")


def parse_budgets(text: str) -> tuple[int, ...]:
    from ..errors import ConfigError
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--label-sweep '{text}': expected comma-separated label counts, e.g. 640,2560,10240") from None
    if len(out) < 2 or any(n < 2 for n in out) or len(set(out)) != len(out):
        raise ConfigError(f"--label-sweep '{text}': at least two distinct label counts >= 2")
    return tuple(sorted(out))


def _chosen(spec: CompareSpec, method: str) -> dict:
    """The main comparison's chosen setting of `method` (its only one without trials), with the passes over
    the labels it made when the setting does not fix them (offline methods)."""
    results = os.path.join(spec.out, "results.json")
    chosen = read_json(results).get("chosen", {}) if os.path.isfile(results) else {}
    run = chosen.get(method) or runs_of(spec, method)[0][0]
    setting = dict(dict(runs_of(spec, method)).get(run, {}))
    if method != "ppo" and "train.epochs" not in setting:
        made = [passes(run_dir(spec, s, run)) for s in range(spec.seeds)]
        made = [x for x in made if x]
        setting["train.epochs"] = round(sum(made) / len(made), 1) if made else 1.0
    return setting


def sweep_spec(spec: CompareSpec, labels: int, methods=SWEEP_METHODS) -> CompareSpec:
    """The comparison at one label budget: the main one's data and SFT, its chosen settings, T=1 only."""
    rm = [passes(os.path.join(spec.out, f"seed{s}", "reward")) for s in range(spec.seeds)]
    rm = [x for x in rm if x]
    extra = ("reward.train.max_steps=0", f"reward.train.epochs={round(sum(rm) / len(rm), 1)}") if rm else ()
    grids = tuple((m, (tuple(_chosen(spec, m).items()),)) for m in methods)
    return dataclasses.replace(spec, methods=("sft", *methods), out=os.path.join(spec.out, f"labels-{labels}"),
                               labels=labels, shared=spec.out, trials=1, grids=tuple(g for g in grids if g[1][0]),
                               best_of=(), temperatures=(), overrides=spec.overrides + extra)


def run_label_sweep(spec: CompareSpec, budgets: tuple[int, ...], log=print) -> dict:
    """Every missing stage of every budget (reused when finished), then OUT/label_sweep.{json,md,png}."""
    from . import stages as S
    from .compare import write_spec
    for labels in budgets:
        sub = sweep_spec(spec, labels)
        write_spec(sub)
        runs = [r for m in sub.methods if m != "sft" for r, _ in runs_of(sub, m)]
        for seed in range(spec.seeds):
            for stage in ["pairs", "reward", *runs, *(f"eval:{r}" for r in ["sft", *runs])]:
                S.run_stage(sub, seed, stage)
            log(f"label sweep: {labels} labels, seed {seed} done")
    result = collect_sweep(spec, budgets)
    write_json(os.path.join(spec.out, "label_sweep.json"), result)
    with open(os.path.join(spec.out, "label_sweep.md"), "w") as f:
        f.write(sweep_markdown(result))
    _plot(result, os.path.join(spec.out, "label_sweep.png"))
    return result


def _gold(spec: CompareSpec, run: str) -> list[list[float]]:
    return [read_json(os.path.join(run_dir(spec, s, run), f"eval-{spec.task}.json"))["per_prompt"]["gold"]
            for s in range(spec.seeds)]


def collect_sweep(spec: CompareSpec, budgets: tuple[int, ...]) -> dict:
    """Per budget: each method's gold and gain over SFT (cluster CIs), the labels it had (pairs after ties)
    and the reward model's accuracy against gold on held-out task pairs; the oracles of the main comparison."""
    sft = _gold(spec, "sft")
    out = {"task": spec.task, "seeds": spec.seeds, "sft": interval(sft), "budgets": {}}
    for labels in budgets:
        sub = sweep_spec(spec, labels)
        row = {}
        for m in sub.methods[1:]:
            run = runs_of(sub, m)[0][0]
            g = _gold(sub, run)
            row[m] = {"run": run, "gold": interval(g), "vs_sft": interval([[a - b for a, b in zip(x, y)] for x, y in zip(g, sft)])}
        rms = [read_json(os.path.join(sub.out, f"seed{s}", "reward", "summary.json")) for s in range(spec.seeds)]
        row["reward_model"] = {"accuracy_gold": sum(r.get("eval/accuracy_gold", float("nan")) for r in rms) / len(rms),
                               "pairs": [r.get("data/train_records", 0) for r in rms]}
        out["budgets"][str(labels)] = row
    if "ppo-gold" in spec.methods:
        results = read_json(os.path.join(spec.out, "results.json"))
        run = results["chosen"]["ppo-gold"]
        out["oracle_ppo"] = {"run": run, "gold": interval(_gold(spec, run))}
    cards = [read_json(os.path.join(spec.out, f"seed{s}", "sft", "summary.json")) for s in range(spec.seeds)]
    bo = [c["learn/oracle_best_of_8"] for c in cards if "learn/oracle_best_of_8" in c]
    if bo:
        out["oracle_best_of_8"] = sum(bo) / len(bo)
    out["verdict"] = verdict(out)
    return out


def verdict(r: dict) -> list[str]:
    """What limits the task, in words the curves support (each clause names its numbers)."""
    budgets = sorted(r["budgets"], key=int)
    lo, hi, sft = budgets[0], budgets[-1], r["sft"]["mean"]
    lines = []
    if "oracle_best_of_8" in r:
        gap = r["oracle_best_of_8"] - sft
        lines.append(f"Coverage: the SFT model's oracle best-of-8 is {r['oracle_best_of_8']:.3f} vs its T=1 gold "
                     f"{sft:.3f} (+{gap:.3f})" + (": its samples hold little better to prefer, so the base model limits "
                                                  "the task." if gap < 0.05 else "."))
    prev = budgets[-2]
    for m in [k for k in r["budgets"][hi] if k != "reward_model"]:
        a, p, b = (r["budgets"][x][m]["gold"]["mean"] for x in (lo, prev, hi))
        gain = r["budgets"][hi][m]["vs_sft"]
        noise = max(0.02, (gain["high"] - gain["low"]) / 2)  # a change smaller than this is not told from noise
        trend = ("still rising at the largest budget, so more labels would help" if b - p > noise else
                 f"most of it came by {int(prev):,} labels (then {b - p:+.3f}), so more labels alone would add little"
                 if b - a > noise and p - a > b - p else
                 f"rising in steps each within the noise ({p - a:+.3f}, then {b - p:+.3f}; ±{noise:.3f}), so whether "
                 "more labels would help cannot be told" if b - a > noise else
                 "flat across budgets, so labels are not what limits it")
        lines.append(f"{m}: gold {a:.3f} at {int(lo):,} labels -> {p:.3f} at {int(prev):,} -> {b:.3f} at {int(hi):,} "
                     f"(vs SFT at {int(hi):,}: {gain['mean']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]); {trend}.")
    acc = [r["budgets"][b]["reward_model"]["accuracy_gold"] for b in budgets]
    lines.append(f"Reward model accuracy against gold: {acc[0]:.3f} at {int(lo):,} labels -> {acc[-1]:.3f} at "
                 f"{int(hi):,}.")
    if "oracle_ppo" in r and "ppo" in r["budgets"][hi]:
        o, p = r["oracle_ppo"]["gold"]["mean"], r["budgets"][hi]["ppo"]["gold"]["mean"]
        share = (p - sft) / (o - sft) if o - sft > 1e-9 else float("nan")
        lines.append(f"PPO on the gold reward reaches {o:.3f}; PPO on the reward model at {int(hi):,} labels "
                     f"{p:.3f}, {share:.0%} of the oracle's gain over SFT"
                     + (": the reward model's quality limits RLHF here." if share < 0.5 else "."))
    return lines


def sweep_markdown(r: dict) -> str:
    budgets = sorted(r["budgets"], key=int)
    methods = [k for k in r["budgets"][budgets[0]] if k != "reward_model"]
    lines = [f"# Label-budget curves on `{r['task']}`", "",
             f"{r['seeds']} seeds; T=1 gold on the same held-out prompts as the comparison; 95 % two-stage cluster "
             "bootstrap intervals. SFT: " + f"{r['sft']['mean']:.3f} [{r['sft']['low']:.3f}, {r['sft']['high']:.3f}].", "",
             "| labels | " + " | ".join(f"{m} gold | {m} Δ vs SFT" for m in methods) + " | RM accuracy vs gold | RM pairs |",
             "| --- |" + " --- | --- |" * len(methods) + " --- | --- |"]
    for b in budgets:
        row = r["budgets"][b]
        cells = [f"{int(b):,}"]
        for m in methods:
            g, d = row[m]["gold"], row[m]["vs_sft"]
            cells += [f"{g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}]",
                      f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"]
        pairs = row["reward_model"]["pairs"]
        cells += [f"{row['reward_model']['accuracy_gold']:.3f}", f"{min(pairs):,}-{max(pairs):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    if "oracle_ppo" in r:
        g = r["oracle_ppo"]["gold"]
        lines += ["", f"Oracle PPO (gold reward, `{r['oracle_ppo']['run']}`): {g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}]."]
    if "oracle_best_of_8" in r:
        lines += ["", f"Oracle best-of-8 of the SFT model's samples: {r['oracle_best_of_8']:.3f}."]
    lines += ["", "## What limits this task", ""] + [f"- {v}" for v in r["verdict"]] + ["", "![](label_sweep.png)", ""]
    return "\n".join(lines)


def _plot(r: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    budgets = sorted(r["budgets"], key=int)
    xs = [int(b) for b in budgets]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in [k for k in r["budgets"][budgets[0]] if k != "reward_model"]:
        g = [r["budgets"][b][m]["gold"] for b in budgets]
        ax.errorbar(xs, [e["mean"] for e in g], yerr=[[e["mean"] - e["low"] for e in g], [e["high"] - e["mean"] for e in g]],
                    marker="o", capsize=3, label=m)
    ax.axhline(r["sft"]["mean"], color="grey", ls="--", label="SFT (T=1)")
    if "oracle_ppo" in r:
        ax.axhline(r["oracle_ppo"]["gold"]["mean"], color="black", ls=":", label="PPO on gold (oracle)")
    if "oracle_best_of_8" in r:
        ax.axhline(r["oracle_best_of_8"], color="green", ls=":", label="oracle best-of-8")
    ax.set(xscale="log", xlabel="preference labels", ylabel="gold (T=1)", title=f"{r['task']}: gold vs labels")
    ax.legend(fontsize=8)
    ax2.plot(xs, [r["budgets"][b]["reward_model"]["accuracy_gold"] for b in budgets], marker="o")
    ax2.axhline(0.5, color="grey", ls="--")
    ax2.set(xscale="log", xlabel="preference labels", ylabel="accuracy vs gold", title="reward model")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
