"""The Markdown of a compare report (report.py computes the numbers; this only writes them down, so every word
below comes from a number in `results`)."""
from __future__ import annotations

from .report_decoding import lines as decoding_lines
from .spec import runs_of, setting_name


def _ci(e: dict, digits: int = 3) -> str:
    return f"{e['mean']:+.{digits}f} [{e['low']:+.{digits}f}, {e['high']:+.{digits}f}]" + (" *" if e["significant"] else "")


def _level(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _labels(budget: list[dict]) -> str:
    b = budget[0]
    if not b["labels"]:
        return "0"
    n = sorted({x["labels"] for x in budget})
    count = f"{n[0]:,}" if len(n) == 1 else f"{n[0]:,}-{n[-1]:,}"
    runs = [x["passes"] for x in budget if x.get("passes")]
    passes = f" ({sum(runs) / len(runs):.1f} passes)" if runs else ""
    return f"{count} {b['label_kind']}{passes}"


def _samples(budget: list[dict]) -> str:
    b = budget[0]
    return f"{b['sft_samples']:,} / {b['rollouts']:,}"


def _setting(setting: dict) -> str:
    return ", ".join(f"{setting_name(k)}={v:g}" for k, v in setting.items()) or "config"


def sentence(e: dict, baseline: str, what: str) -> str:
    """'vs X +0.012 [-0.023, +0.048]' with ' *' when the interval excludes 0."""
    return f"{what} {_ci(e['vs'][baseline])}"


def summary_lines(spec, runs: dict, chosen: dict, baselines: list[tuple[str, str]]) -> list[str]:
    """One line per baseline: which methods beat it, and which are worse, significantly."""
    out = []
    others = [m for m in spec.methods if m != "sft"]
    for key, what in baselines:
        up = [m for m in others if runs[chosen[m]]["vs"][key]["significant"] and runs[chosen[m]]["vs"][key]["mean"] > 0]
        down = [m for m in others if runs[chosen[m]]["vs"][key]["significant"] and runs[chosen[m]]["vs"][key]["mean"] < 0]
        out.append(f"- Significantly better than {what}: {', '.join(up) or 'none'}"
                   + (f"; significantly worse: {', '.join(down)}." if down else "."))
    return out


def markdown(spec, results: dict, files: dict) -> str:
    runs, chosen, base = results["runs"], results["chosen"], results["baselines"]
    bon = [b for b in base if b.startswith("best-of-")]
    lines = [f"# Method comparison on `{spec.task}`", "", *top_warnings(spec, results),
             f"Seeds: {spec.seeds} (each with its own data, SFT model, labels and reward model). Training budget: "
             f"**{spec.budget} prompts per method** (preference pairs or binary examples for offline methods, rollout "
             f"prompts for online ones). Label budget: **{spec.n_labels} preference labels per method**: the offline "
             "methods learn from " + ("the SFT model's own samples judged by the simulated annotators"
                                      if spec.offline_data == "policy" else "the task's scripted candidate pairs")
             + ", and the reward model behind PPO/RLOO/GRPO/online DPO/best-of-n learns from "
             + ("the same labels" if spec.rm_data == "policy" and spec.offline_data == "policy"
                else "the SFT samples' labels" if spec.rm_data == "policy" else "the task's scripted pairs")
             + (" with the SFT trunk's log-prob term added (`--rm-logp`: part of its score is the SFT model's own "
                "likelihood, so RM-based methods are also pushed to sharpen SFT)" if spec.rm_logp
                else " without the SFT log-prob term") + ". "
             f"Evaluation: {spec.eval_prompts} held-out prompts per seed, one sample each at T=1, gold reward. "
             "Intervals: 95 %, two-stage cluster bootstrap over seeds and prompts; `*` = the interval excludes 0, "
             "the only thing called significant here.", ""]
    if spec.trials > 1:
        tuned = {"key": "its own key hyper-parameter", "lr": "the learning rate (the config's / 3 to x 3)",
                 "epochs": "the passes over the labels (offline methods)"}
        lines += [f"Tuning: every method trained {spec.trials} times, varying "
                  + ", ".join(tuned[a] for a in spec.tune) + " (the same design for every method, study/spec.py), "
                  f"and is shown at the setting with the best mean gold on {spec.val_prompts} validation prompts per "
                  "seed, kept apart from the evaluation prompts (all trials: the table further down and the frontier "
                  "plot). The labels column gives the passes over the labels: the reward model's for RM-based "
                  "methods, the run's own for offline ones.", ""]
    if any(m.endswith("-gold") for m in spec.methods):
        lines += ["Oracle rows (`ppo-gold`): PPO trained on the task's gold reward instead of a reward model, at the "
                  "same rollout budget and no labels: what a perfect reward model would allow, the upper bound for "
                  "the label-trained methods.", ""]
    lines += task_lines(results.get("task_card") or {})
    lines += decoding_lines(results.get("decoding"))
    head = "| method | setting | gold [95% CI] | Δ vs SFT | Δ vs sharpened SFT | " + "".join(
        f"Δ vs {b} | " for b in bon[-1:]) + "Δ vs heuristic | KL to SFT | labels | labelled SFT samples / rollouts |"
    lines += ["## Results at T=1" + (" (the secondary view: every method sampled at T=1)" if results.get("decoding")
                                     else ""), "", head, "|" + " --- |" * (head.count("|") - 1)]
    for m in spec.methods:
        e = runs[chosen[m]]
        if m == "sft":
            lines.append(f"| sft | T=1 | {_level(e['gold'])} | – | – | " + "– | " * len(bon[-1:]) + "– | 0 | 0 | 0 / 0 |")
            continue
        cells = [m, _setting(e["setting"]), _level(e["gold"]), _ci(e["vs"]["sft"]), _ci(e["vs"]["sft (sharpened)"])]
        cells += [_ci(e["vs"][b]) for b in bon[-1:]]
        cells += [_ci(e["vs"]["heuristic"]), _level(e["kl"]), _labels(e["budget"]), _samples(e["budget"])]
        lines.append("| " + " | ".join(cells) + " |")
    temps = sorted(set(base["sft (sharpened)"]["temperatures"]))
    names = sorted(set(base["heuristic"]["names"]))
    for b, e in base.items():
        if b == "sft":
            continue
        what = {"sft (sharpened)": f"T={', '.join(f'{t:g}' for t in temps)} (best on validation)",
                "heuristic": f"{', '.join(names)} (best of the battery on validation)"}.get(b, "reranked by the RM")
        kl = f"≤ {e['kl_bound']:.3f}" if "kl_bound" in e else "–"
        lab = _labels(e["budget"]) if "budget" in e else "0"
        lines.append(f"| *{b}* | {what} | {_level(e['gold'])} | {_ci(e['vs_sft'])} | | " + "| " * len(bon[-1:])
                     + f"| {kl} | {lab} | |")
    lines += ["", "Baseline rows are in italics. Greedy decoding is T=0. The best-of-n KL is the bound log n − (n−1)/n.",
              "", "## What the numbers say", ""]
    compared = [("sft", "SFT"), ("sft (sharpened)", "the sharpened SFT")] + [(b, b) for b in bon] + \
        [("heuristic", "the best heuristic")]
    lines += summary_lines(spec, runs, chosen, compared)
    lines += ["", "Per method, the paired gold difference to each baseline [95% CI] (`*`: significant):", ""]
    for m in spec.methods:
        if m == "sft":
            continue
        e = runs[chosen[m]]
        lines.append(f"- **{m}** ({_setting(e['setting'])}): "
                     + "; ".join(sentence(e, key, f"vs {what}") for key, what in compared) + ".")
    for b, e in base.items():
        if b != "sft":
            lines.append(f"- baseline *{b}*: vs SFT {_ci(e['vs_sft'])}.")
    lines += _reward_model_section(spec, results) + _trials_section(spec, results) + _stages_section(results)
    lines += _ratings_section(spec, results)
    lines += ["", "## Plots", ""]
    captions = {"frontier_decoding": "Gold against KL to the SFT model (left) and √KL (right), every run at every "
                                     "sampling temperature; black: SFT itself at those temperatures (lowering the "
                                     "temperature moves along it); stars: each method at the temperature chosen on "
                                     "validation. A method has learnt more than sharpening where it lies above the "
                                     "black curve.",
                "frontier": "Reward–KL frontier: held-out gold against KL to the SFT model; one curve per method over "
                            "its trials (mean of seeds, bars: 95 % intervals), best-of-n at its KL bound, and the SFT, "
                            "sharpened-SFT and heuristic levels.",
                "vs_sft": "Gold difference to SFT (methods at their chosen setting, and baselines) with 95 % cluster "
                          "intervals, and the win rate against SFT.",
                "overopt": "Over-optimisation (Gao et al. 2022 style): the proxy (reward model) and gold reward against "
                           "KL. Lines: online methods' training rollouts; dots: final models; crosses: best-of-n.",
                "curves": "Online methods: proxy and gold reward of the training rollouts over steps."}
    for key, name in files.items():
        lines += [f"![{key}]({name})", "", captions[key], ""]
    lines += ["Per-run numbers: `results.csv` / `results.json`; baselines per seed: `seedS/baselines.json` (with "
              "the full battery of constant and heuristic answers). Each run directory holds its config, metrics and "
              f"`eval-{spec.task}.json` (samples in `eval-{spec.task}.samples.jsonl`)."]
    return "\n".join(lines) + "\n"


def top_warnings(spec, results: dict) -> list[str]:
    """What a reader must know before any number, at the top of the report: labels that are mostly coin flips
    (the task card below has the details), and a comparison in which no method's interval against SFT
    excludes 0 (the primary, decoding-matched table when there is one), each with what to raise."""
    out = []
    card = results.get("task_card") or {}
    flips = card.get("coin_flip_labels")
    if flips is not None and flips > 0.6:
        out += [f"**Warning: {flips:.0%} of the preference labels are coin flips**, so the methods can hardly be "
                "told apart; raise the SFT length or the model preset first (the task card below), then the label "
                "budget.", ""]
    dm, runs, chosen = results.get("decoding"), results["runs"], results["chosen"]
    if dm and "sft" in dm.get("compared", ()):
        deltas = [e["vs"]["sft"] for m, e in dm["rows"].items() if m != "sft" and "sft" in e.get("vs", {})]
    else:
        deltas = [runs[chosen[m]]["vs"]["sft"] for m in spec.methods if m != "sft"]
    if deltas and not any(d["significant"] for d in deltas):
        out += [f"**Warning: every method's 95 % interval against SFT includes 0**: at {spec.seeds} seed(s), "
                f"{spec.budget} prompts and {spec.n_labels} labels per method this comparison cannot tell the "
                "methods from SFT (nor, then, from each other). Raise `--seeds` (narrower intervals) and `--budget` "
                "/ `--labels` (more signal)" + (", after the SFT length (the labels are mostly coin flips)"
                                                if flips is not None and flips > 0.6 else "") + ".", ""]
    return out


def task_lines(card: dict) -> list[str]:
    """The task card (report.task_card) as a short table, with a warning first when the labels can hardly
    tell methods apart (most are coin flips, or few prompts have a right SFT sample)."""
    if not card:
        return []
    f = lambda x, pct=False: "–" if x is None else (f"{x:.0%}" if pct else f"{x:.3f}")  # noqa: E731
    out = []
    flips, cover = card.get("coin_flip_labels"), card.get("sft_coverage@8")
    if (flips is not None and flips > 0.6) or (cover is not None and cover < 0.5):
        out += [f"**Warning:** {f(flips, True)} of the preference labels are coin flips (the two samples have equal "
                f"gold) and {f(cover, True)} of the prompts have a right answer (gold ≥ half the maximum) among 8 SFT "
                "samples: the labels carry little signal, so the methods below can hardly be told apart. Raise the "
                "SFT length or the model preset (see `learn/*` in the SFT run's summary.json) before the label "
                "budget.", ""]
    temps = card.get("sft_by_temperature") or {}
    rows = [("demonstrations (what SFT imitates)", card.get("demonstrations")), ("best heuristic", card.get("heuristic"))]
    rows += [(f"SFT at T={t}", v) for t, v in sorted(temps.items(), key=lambda kv: -float(kv[0]))]
    rows += [("oracle best-of-8 of SFT (gold picks)", card.get("sft_oracle_best_of_8")),
             ("prompts with a right answer among 8 SFT samples", f(cover, True)),
             ("coin-flip pairs among SFT samples", f(card.get("sft_coin_flips"), True)),
             ("coin-flip labels in the label pool", f(flips, True)),
             ("annotators: agreement between two / with gold", f"{f(card.get('inter_annotator'))} / "
                                                               f"{f(card.get('agreement_with_gold'))}")]
    out += ["## The task as the methods see it (means over seeds)", "",
            f"| what | gold (max {card.get('max_gold') or '–'}) or share |", "| --- | --- |"]
    out += [f"| {what} | {v if isinstance(v, str) else f(v)} |" for what, v in rows]
    return out + [""]


def _reward_model_section(spec, results: dict) -> list[str]:
    runs, chosen = results["runs"], results["chosen"]
    rows = [(m, runs[chosen[m]]) for m in spec.methods if "rm_accuracy_own" in runs[chosen[m]]]
    if not rows:
        return []
    out = ["", "## The reward model on the policies' own samples", "",
           "How often the reward model orders a method's sample and the SFT sample of the same prompt as the gold "
           "reward does (pairs with equal gold left out, pooled over seeds), next to the method's mean RM score. "
           "Accuracy that falls as a method moves away from SFT is the reward model being exploited.", "",
           "| method | RM accuracy on (method, SFT) sample pairs (pairs) | mean RM score | training: proxy / gold change |",
           "| --- | --- | --- | --- |"]
    for m, e in rows:
        o = e.get("overoptimised")
        trend = (f"{o['proxy_change']:+.3f} / {o['gold_change']:+.3f}" + (" **over-optimised**" if o["flag"] else "")
                 if o else "–")
        out.append(f"| {m} | {e['rm_accuracy_own']:.3f} ({e['rm_accuracy_pairs']}) | {e.get('rm_score', float('nan')):.3f} "
                   f"| {trend} |")
    flagged = [m for m, e in rows if (e.get("overoptimised") or {}).get("flag")]
    out += ["", f"Proxy up while gold went down over training: {', '.join(flagged)}." if flagged else
            "", "No online run's training rollouts had the proxy rising while the gold fell." if not flagged else ""]
    return out


def _trials_section(spec, results: dict) -> list[str]:
    if spec.trials <= 1:
        return []
    runs, chosen = results["runs"], results["chosen"]
    out = ["", "## Every trial", "", "| method | setting | validation gold | held-out gold [95% CI] | Δ vs SFT | KL |",
           "| --- | --- | --- | --- | --- | --- |"]
    for m in spec.methods:
        if m == "sft":
            continue
        for run, _ in runs_of(spec, m):
            e = runs[run]
            mark = " (chosen)" if run == chosen[m] else ""
            out.append(f"| {m} | {_setting(e['setting'])}{mark} | {e.get('val_gold', float('nan')):.3f} | "
                       f"{_level(e['gold'])} | {_ci(e['vs']['sft'])} | {_level(e['kl'])} |")
    return out


def _stages_section(results: dict) -> list[str]:
    st = results.get("stages") or {}
    if not st:
        return []
    out = ["", "## The shared stages, per seed", "",
           "| seed | annotators (agreement) | SFT gold: untrained -> trained (greedy) | labels on SFT samples | "
           "reward model accuracy vs gold / vs labels (held-out task pairs) |", "| --- | --- | --- | --- | --- |"]
    for seed, s in sorted(st.items()):
        out.append(f"| {seed} | {s.get('annotators', '–')} | {s.get('sft', '–')} | {s.get('pairs', '–')} | "
                   f"{s.get('reward', '–')} |")
    return out


def _ratings_section(spec, results: dict) -> list[str]:
    r = results.get("ratings")
    if not r:
        return []
    lc = r.get("length_controlled")
    out = ["", f"## Ratings from all pairwise judgments ({r['matches']} matches: every pair of methods on every "
           "held-out prompt and seed, gold judge, ties half)", "",
           "SFT anchors the Bradley–Terry scale (its interval has no width). These intervals resample matches as if "
           "independent (each sample plays every other method): read them as a lower bound on the uncertainty; "
           "the cluster intervals above are the ones to trust."
           + (" The length-controlled column holds the two samples' lengths (words) fixed, as a covariate in the "
              "Bradley–Terry regression (Chatbot Arena's style control): a method that wins by writing longer "
              "drops there." if lc else ""), "",
           "| method | Bradley–Terry (SFT = 1000) [95% CI] | Elo [95% CI] |" + (" BT, length-controlled [95% CI] |"
                                                                             if lc else ""),
           "| --- | --- | --- |" + (" --- |" if lc else "")]
    bt, elo = r["bradley_terry"], r["elo"]
    for m in sorted(spec.methods, key=lambda m: -bt[m]["rating"]):
        out.append(f"| {m} | {bt[m]['rating']:.0f} [{bt[m]['low']:.0f}, {bt[m]['high']:.0f}] | "
                   f"{elo[m]['rating']:.0f} [{elo[m]['low']:.0f}, {elo[m]['high']:.0f}] |"
                   + (" {rating:.0f} [{low:.0f}, {high:.0f}] |".format(**lc["ratings"][m]) if lc else ""))
    if lc:
        g = lc["length"]
        out += ["", f"Length effect: {g['coef']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}] log-odds of winning per "
                "standard deviation of the normalised length difference (> 0: the gold judge favours the longer "
                "sample)."]
    return out
