"""The PNG plots of a compare report: the reward-KL frontier (the headline figure), gold differences to SFT,
proxy and gold against KL (over-optimisation), and the online methods' training curves."""
from __future__ import annotations

import os

from .spec import runs_of


def _smooth(ys: list[float], window: int = 5) -> list[float]:
    """Trailing moving average, so the trend of noisy per-batch rewards is visible."""
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - window + 1):i + 1]
        out.append(sum(part) / len(part))
    return out


def _err(e: dict) -> list[list[float]]:
    return [[e["mean"] - e["low"]], [e["high"] - e["mean"]]]


def plots(spec, results: dict) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    runs, chosen, base = results["runs"], results["chosen"], results["baselines"]
    others = [m for m in spec.methods if m != "sft"]
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(spec.methods)}

    def save(fig, key):
        fig.tight_layout()
        files[key] = f"{key}.png"
        fig.savefig(os.path.join(spec.out, files[key]), dpi=120)
        plt.close(fig)

    # 1. reward-KL frontier: one curve per method over its trials, best-of-n at its KL bound, baseline levels
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    sft = runs[chosen["sft"]]["gold"]
    ax.errorbar([0], [sft["mean"]], yerr=_err(sft), fmt="s", color="k", label="SFT (T=1)", capsize=3)
    for m in others:
        trial = sorted((runs[r] for r, _ in runs_of(spec, m)), key=lambda e: e["kl"]["mean"])
        xs, ys = [e["kl"]["mean"] for e in trial], [e["gold"]["mean"] for e in trial]
        ax.plot(xs, ys, "-", color=colors[m], alpha=0.6)
        for e in trial:
            ax.errorbar(e["kl"]["mean"], e["gold"]["mean"], xerr=_err(e["kl"]), yerr=_err(e["gold"]), fmt="o",
                        color=colors[m], ms=7 if e is runs[chosen[m]] else 4, capsize=2,
                        label=m if e is trial[0] else None)
    bon = [(b, e) for b, e in base.items() if b.startswith("best-of-")]
    if bon:
        ax.errorbar([e["kl_bound"] for _, e in bon], [e["gold"]["mean"] for _, e in bon],
                    yerr=[[e["gold"]["mean"] - e["gold"]["low"] for _, e in bon],
                          [e["gold"]["high"] - e["gold"]["mean"] for _, e in bon]],
                    fmt="x--", color="grey", capsize=2, label="best-of-n (KL bound)")
    for b, style in (("sft (sharpened)", ":"), ("heuristic", "-.")):
        ax.axhline(base[b]["gold"]["mean"], color="grey", ls=style, lw=1, label=b)
    ax.set_xlabel("KL to the SFT model (nats per response)")
    ax.set_ylabel("gold reward, held-out prompts")
    ax.set_title(f"{spec.task}: reward–KL frontier ({spec.seeds} seeds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    save(fig, "frontier")

    # 1b. the decoding frontier: every run at every temperature, against KL and sqrt(KL) (Gao et al. 2022),
    #     with tempered SFT as the curve a method must lie above to have learnt more than a lower temperature
    dm = results.get("decoding")
    if dm:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
        for ax, tf, label in ((axes[0], lambda k: k, "KL to the SFT model (nats per response)"),
                              (axes[1], lambda k: max(k, 0.0) ** 0.5, "√KL")):
            sft_pts = sorted(dm["sft_curve"])
            ax.plot([tf(k) for k, _ in sft_pts], [g for _, g in sft_pts], "s-", color="k", label="tempered SFT")
            for m in others:
                for run, _ in runs_of(spec, m):
                    pts = sorted(dm["points"][run], key=lambda p: p[1])
                    chosen_run = dm["rows"][m]["run"] == run
                    ax.plot([tf(k) for _, k, _ in pts], [g for *_, g in pts], "o-" if chosen_run else "o:",
                            color=colors[m], alpha=1.0 if chosen_run else 0.35, ms=4,
                            label=m if chosen_run else None)
                e = dm["rows"][m]
                ax.errorbar(tf(e["kl"]["mean"]), e["gold"]["mean"], yerr=_err(e["gold"]), fmt="*", ms=12,
                            color=colors[m], capsize=3)
            for b, e in dm["best_of"].items():
                ax.errorbar(tf(e["kl_bound"]), e["gold"]["mean"], yerr=_err(e["gold"]), fmt="x", color="grey",
                            capsize=2, label=f"{b} (T={e['temperature']:g}, KL bound)")
            ax.axhline(base["heuristic"]["gold"]["mean"], color="grey", ls="-.", lw=1, label="heuristic")
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("gold reward, held-out prompts")
        axes[0].legend(fontsize=7, ncol=2)
        fig.suptitle(f"{spec.task}: gold against KL at T ∈ {{{', '.join(dm['temperatures'])}}} "
                     f"(stars: each method at its chosen temperature, 95% CI; {spec.seeds} seeds)", fontsize=9)
        save(fig, "frontier_decoding")

    # 2. gold difference to SFT with the cluster intervals, and the win rate against SFT
    if others:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        names = others + [b for b in base if b != "sft"]
        ds = [runs[chosen[m]]["vs"]["sft"] if m in others else base[m]["vs_sft"] for m in names]
        axes[0].bar(range(len(names)), [d["mean"] for d in ds],
                    yerr=[[d["mean"] - d["low"] for d in ds], [d["high"] - d["mean"] for d in ds]],
                    color=[colors[m] if m in others else "lightgrey" for m in names], capsize=4)
        axes[0].set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        axes[0].axhline(0, color="k", lw=0.8)
        axes[0].set_title("gold minus SFT (95% cluster CI)")
        ws = [runs[chosen[m]]["win_rate"] for m in others]
        axes[1].bar(others, [w["mean"] for w in ws], yerr=[[w["mean"] - w["low"] for w in ws],
                                                          [w["high"] - w["mean"] for w in ws]],
                    color=[colors[m] for m in others], capsize=4)
        axes[1].axhline(0.5, color="k", lw=0.8, ls="--")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("win rate against SFT (gold judge, ties 1/2)")
        axes[1].tick_params(axis="x", rotation=30)
        save(fig, "vs_sft")

    # 3. over-optimisation: proxy and gold against KL
    if any("rm_score" in runs[r] for r in runs if r != "sft"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
        for m in others:
            for r, _ in runs_of(spec, m):
                e = runs[r]
                for c in e["curves"]:
                    kl = _smooth([row.get("kl/seq", float("nan")) for row in c])
                    for ax, key in ((axes[0], "objective/scores"), (axes[1], "objective/gold")):
                        ax.plot(kl, _smooth([row.get(key, float("nan")) for row in c]), color=colors[m], alpha=0.35)
                if "rm_score" in e:
                    axes[0].plot(e["kl"]["mean"], e["rm_score"], "o", color=colors[m], label=m if r == chosen[m] else None)
                axes[1].plot(e["kl"]["mean"], e["gold"]["mean"], "o", color=colors[m])
        if bon:
            axes[0].plot([e["kl_bound"] for _, e in bon], [e["proxy"] for _, e in bon], "x--", color="grey",
                         label="best-of-n")
            axes[1].plot([e["kl_bound"] for _, e in bon], [e["gold"]["mean"] for _, e in bon], "x--", color="grey")
        axes[0].set_title("proxy: reward-model score")
        axes[1].set_title("gold reward")
        for ax in axes:
            ax.set_xlabel("KL to the SFT model (nats)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        save(fig, "overopt")

    # 4. learning curves of the online methods: proxy and gold of the training samples over steps
    curves = {m: runs[chosen[m]]["curves"] for m in others if runs[chosen[m]]["curves"]}
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
        for m, seeds in curves.items():
            for j, c in enumerate(seeds):
                steps = [r["step"] for r in c]
                for ax, key in ((axes[0], "objective/scores"), (axes[1], "objective/gold")):
                    ys = [r.get(key, float("nan")) for r in c]
                    ax.plot(steps, ys, color=colors[m], alpha=0.25, lw=0.8)
                    ax.plot(steps, _smooth(ys), color=colors[m], lw=2, label=m if j == 0 else None)
        axes[0].set_title("proxy reward (reward model) of rollouts")
        axes[1].set_title("gold of the same rollouts (thick: 5-step mean)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        save(fig, "curves")
    return files
