"""Results of a `tinyrlhf compare` run: one row per run x seed, statistics per run and per baseline, PNG plots and
a Markdown report that says in words what beat what and how sure that is.

Statistics. Every comparison is paired by prompt: the method's gold on a held-out prompt minus the baseline's gold
on the same prompt (same seed). Its 95 % interval is a two-stage cluster bootstrap over training seeds and, inside
each, prompts (metrics.cluster_bootstrap_ci), so the seed-to-seed spread is in it. "Significant" means that interval
excludes 0, and nothing else is called significant. With trials, each method is compared at the setting with the
best gold on the validation prompts (mean over seeds), never at the one that looks best on the evaluation prompts.
"""
from __future__ import annotations

import csv
import json
import os

from ..eval import metrics as M
from .report_decoding import decoding_matched
from .spec import METHODS, method_of, needs_rm, paths, read_json, run_dir, runs_of

ROW_KEYS = ("method", "run", "seed", "gold", "gold_greedy", "kl", "win_rate", "rm_score", "rm_accuracy_own",
            "val_gold", "labels", "label_kind", "passes", "sft_samples", "rollouts", "length_words", "distinct_1",
            "distinct_2", "rouge_l", "bleu", "train_seconds", "run_dir")


def _curve(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "objective/gold" in r or "objective/scores" in r]


def budget(spec, seed: int, run: str) -> dict:
    """Preference labels a run consumed (its reward model's, for RM-based methods) and the samples generated for
    it: SFT samples that were labelled, and rollouts of the policy during training."""
    p = paths(spec, seed)
    if run == "sft":
        return {"labels": 0, "label_kind": "", "sft_samples": 0, "rollouts": 0, "passes": None}
    method = method_of(run)
    if METHODS[method][4] == "gold":  # an oracle: the gold reward, no labels
        own = os.path.join(p["root"], run, "summary.json")
        rollouts = read_json(own).get("episodes", 0) if os.path.isfile(own) else 0
        return {"labels": 0, "label_kind": "", "sft_samples": 0, "rollouts": rollouts, "passes": None}
    rm = needs_rm(method)
    labels = labels_used(p["reward"] if rm else os.path.join(p["root"], run))
    kind = "binary" if method == "kto" else "pairs"
    uses_policy_pairs = (spec.rm_data if rm else spec.offline_data) == "policy"
    sft_samples = 0
    pairs_manifest = os.path.join(p["pairs"], "manifest.json")
    if uses_policy_pairs and os.path.isfile(pairs_manifest):
        pd = read_json(pairs_manifest)["policy_data"]
        sft_samples = pd["prompts"] * pd["k"]
    rollouts = 0
    if rm:
        own = os.path.join(p["root"], run, "summary.json")
        rollouts = read_json(own).get("episodes", 0) if os.path.isfile(own) else 0
    return {"labels": labels, "label_kind": kind, "sft_samples": sft_samples, "rollouts": rollouts,
            "passes": passes(p["reward"] if rm else os.path.join(p["root"], run))}


def passes(run_dir: str) -> float | None:
    """Passes over its labels a run made (steps x examples per step / training records): the reward model's for
    RM-based methods, the run's own for offline ones, so the two are compared at equal effort in substance."""
    path = os.path.join(run_dir, "summary.json")
    s = read_json(path) if os.path.isfile(path) else {}
    records, batch = s.get("data/train_records", 0), _batch(run_dir)
    return s.get("steps", 0) * batch / records if records and batch else None


def labels_used(run_dir: str) -> int:
    """Distinct training records a run saw: its data's records, or fewer when its steps x batch did not reach
    them all."""
    path = os.path.join(run_dir, "summary.json")
    s = read_json(path) if os.path.isfile(path) else {}
    records, batch = s.get("data/train_records", 0), _batch(run_dir)
    return min(records, s.get("steps", 0) * batch) if batch else records


def _batch(run_dir: str) -> int:
    import yaml
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        train = (yaml.safe_load(f) or {}).get("train", {})
    return int(train.get("batch_size", 0)) * int(train.get("grad_accum", 1))


def interval(groups: list[list[float]]) -> dict:
    """Mean and 95 % two-stage cluster-bootstrap interval (seed 0), with whether it excludes 0."""
    mean, low, high = M.cluster_bootstrap_ci(groups, seed=0)
    return {"mean": mean, "low": low, "high": high, "significant": low > 0 or high < 0}


def _delta(a: list[list[float]], b: list[list[float]]) -> dict:
    return interval([[x - y for x, y in zip(ga, gb)] for ga, gb in zip(a, b)])


def collect(spec) -> dict:
    seeds = range(spec.seeds)
    evals = {}
    for seed in seeds:
        for m in spec.methods:
            for run, _ in runs_of(spec, m):
                evals[(seed, run)] = read_json(os.path.join(run_dir(spec, seed, run), f"eval-{spec.task}.json"))
    base = {seed: read_json(paths(spec, seed)["baselines"]) for seed in seeds}
    gold = {k: e["per_prompt"]["gold"] for k, e in evals.items()}
    sft = [gold[(s, "sft")] for s in seeds]

    baselines = {"sft": [gold[(s, "sft")] for s in seeds],
                 "sft (sharpened)": [base[s]["sharpened"]["per_prompt"] for s in seeds],
                 "heuristic": [base[s]["heuristic"]["per_prompt"] for s in seeds]}
    for n in spec.best_of:
        if all(str(n) in base[s]["best_of"] for s in seeds):
            baselines[f"best-of-{n}"] = [base[s]["best_of"][str(n)]["per_prompt"] for s in seeds]
    rows, runs = [], {}
    for m in spec.methods:
        for run, setting in runs_of(spec, m):
            per_seed = [gold[(s, run)] for s in seeds]
            e = {"method": m, "setting": setting, "gold": interval(per_seed), "vs": {}}
            if run != "sft":
                e["vs"] = {b: _delta(per_seed, g) for b, g in baselines.items()}
                e["kl"] = interval([evals[(s, run)]["per_prompt"]["kl"] for s in seeds])
                e["win_rate"] = interval([evals[(s, run)]["per_prompt"]["win"] for s in seeds])
            accs = [a for s in seeds if (a := evals[(s, run)].get("rm_accuracy_own")) and a["pairs"]]
            if accs:
                e["rm_accuracy_pairs"] = sum(a["pairs"] for a in accs)
                e["rm_accuracy_own"] = sum(a["accuracy"] * a["pairs"] for a in accs) / e["rm_accuracy_pairs"]
            if all("rm_score" in evals[(s, run)] for s in seeds):
                e["rm_score"] = sum(evals[(s, run)]["rm_score"]["mean"] for s in seeds) / spec.seeds
            if all("val_gold" in evals[(s, run)] for s in seeds):
                e["val_gold"] = sum(evals[(s, run)]["val_gold"] for s in seeds) / spec.seeds
            e["gold_per_seed"] = [sum(g) / len(g) for g in per_seed]
            e["budget"] = [budget(spec, s, run) for s in seeds]
            e["curves"] = [c for s in seeds if (c := _curve(os.path.join(paths(spec, s)["root"], run)))]
            e["overoptimised"] = _overoptimised(e["curves"])
            runs[run] = e
            for s in seeds:
                ev = evals[(s, run)]
                rows.append({"method": m, "run": run, "seed": s, "gold": ev["gold"]["mean"],
                             "gold_greedy": ev["gold_greedy"], "kl": ev.get("kl_ref", {}).get("mean", 0.0),
                             "win_rate": ev.get("win_rate", {}).get("rate"),
                             "rm_score": ev.get("rm_score", {}).get("mean"),
                             "rm_accuracy_own": (ev.get("rm_accuracy_own") or {}).get("accuracy"),
                             "val_gold": ev.get("val_gold"), **budget(spec, s, run),
                             "length_words": ev["length"]["words"], "distinct_1": ev["distinct_1"],
                             "distinct_2": ev["distinct_2"], "rouge_l": ev.get("rouge_l"), "bleu": ev.get("bleu"),
                             "train_seconds": _train_seconds(spec, s, run),
                             "run_dir": os.path.join(paths(spec, s)["root"], run)})
    chosen = {m: _best_trial(spec, m, runs) for m in spec.methods}
    base_entries = {b: {"gold": interval(g), **({"vs_sft": _delta(g, sft)} if b != "sft" else {})}
                    for b, g in baselines.items()}
    base_entries["sft (sharpened)"]["temperatures"] = [base[s]["sharpened"]["temperature"] for s in seeds]
    base_entries["heuristic"]["names"] = [base[s]["heuristic"]["name"] for s in seeds]
    for n in spec.best_of:
        if f"best-of-{n}" in base_entries:
            base_entries[f"best-of-{n}"]["kl_bound"] = base[0]["best_of"][str(n)]["kl_bound"]
            base_entries[f"best-of-{n}"]["budget"] = [
                {"labels": labels_used(paths(spec, s)["reward"]), "label_kind": "pairs"} for s in seeds]
            base_entries[f"best-of-{n}"]["proxy"] = sum(base[s]["best_of"][str(n)]["proxy"] for s in seeds) / spec.seeds
    results = {"runs": runs, "chosen": chosen, "baselines": base_entries, "rows": rows,
               "battery": {s: base[s]["battery"] for s in seeds}, "stages": _stages(spec),
               "task_card": task_card(spec, [base[s] for s in seeds]),
               "decoding": decoding_matched(spec, base),
               "ratings": _ratings(spec, gold, chosen)}
    with open(os.path.join(spec.out, "results.json"), "w") as f:
        json.dump({k: v for k, v in results.items()} | {"runs": {r: {k: v for k, v in e.items() if k != "curves"}
                                                           for r, e in runs.items()}}, f, indent=1)
    with open(os.path.join(spec.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_KEYS)
        w.writeheader()
        w.writerows(rows)
    return results


def _train_seconds(spec, seed, run):
    path = os.path.join(paths(spec, seed)["root"], run, "summary.json")
    return read_json(path).get("train_seconds") if os.path.isfile(path) else None


def _best_trial(spec, method: str, runs: dict) -> str:
    """The method's trial with the best mean gold on the VALIDATION prompts (equal tuning effort, no peeking)."""
    names = [r for r, _ in runs_of(spec, method)]
    if len(names) == 1:
        return names[0]
    return max(names, key=lambda r: runs[r]["val_gold"])


def _stages(spec) -> dict:
    """What SFT, the labels and the reward model measured for each seed (for the report)."""
    out = {}
    for seed in range(spec.seeds):
        st, p = {}, paths(spec, seed)
        sft = os.path.join(p["sft"], "summary.json")
        if os.path.isfile(sft) and "gold/mean" in (s := read_json(sft)):
            st["sft"] = f"{s.get('before/gold/mean', float('nan')):.3f} -> {s['gold/mean']:.3f} ({s.get('gold/greedy', float('nan')):.3f})"
        rm = os.path.join(p["reward"], "summary.json")
        if os.path.isfile(rm) and "eval/accuracy_gold" in (s := read_json(rm)):
            st["reward"] = f"{s['eval/accuracy_gold']:.3f} / {s.get('eval/accuracy_labels', float('nan')):.3f}"
        data = os.path.join(p["data"], "manifest.json")
        if os.path.isfile(data):
            a = read_json(data)["annotators"]
            st["annotators"] = (f"{a.get('inter_annotator_measured', float('nan')):.3f} between annotators, "
                                f"{a.get('agreement_measured', float('nan')):.3f} with gold")
        pairs = os.path.join(p["pairs"], "manifest.json")
        if os.path.isfile(pairs):
            q = read_json(pairs)["policy_data"]
            st["pairs"] = (f"{q['pairs']} pairs from {q['prompts']} prompts, {q['zero_gap_pairs']} "
                           f"({q['zero_gap_pairs'] / max(1, q['pairs']):.0%}) with equal gold (coin-flip labels)"
                           + (f", label agreement with gold {q['agreement_measured']:.3f}" if q.get("agreement_measured")
                              else ""))
        out[seed] = st
    return out


def task_card(spec, base: list[dict]) -> dict:
    """What the task offers preference learning here, as means over seeds: the demonstrations' gold, the best
    heuristic, SFT at each temperature, what 8 SFT samples hold (oracle best-of-8, coverage, coin flips), the
    share of coin-flip labels in the label pool, and the annotators' agreement. Missing pieces are left out."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None
    card: dict = {"max_gold": None}
    data, sft, pairs = [], [], []
    for seed in range(spec.seeds):
        p = paths(spec, seed)
        for path, into in ((os.path.join(p["data"], "manifest.json"), data), (os.path.join(p["sft"], "summary.json"), sft),
                           (os.path.join(p["pairs"], "manifest.json"), pairs)):
            if os.path.isfile(path):
                into.append(read_json(path))
    if data:
        card["max_gold"] = data[0].get("max_gold")
        card["demonstrations"] = mean([d["gold"]["sft_mean"] for d in data])
        card["inter_annotator"] = mean([d["annotators"].get("inter_annotator_measured") for d in data])
        card["agreement_with_gold"] = mean([d["annotators"].get("agreement_measured") for d in data])
    if base:
        card["heuristic"] = mean([b["heuristic"]["gold"] for b in base])
        card["sft_by_temperature"] = {t: mean([b["temperature"][t]["gold"] for b in base])
                                      for t in base[0]["temperature"]}
    for key in ("oracle_best_of_8", "coverage@8", "coin_flips"):
        if sft and all(f"learn/{key}" in s for s in sft):
            card[f"sft_{key}"] = mean([s[f"learn/{key}"] for s in sft])
    if pairs:
        card["coin_flip_labels"] = mean([q["policy_data"]["zero_gap_pairs"] / max(1, q["policy_data"]["pairs"])
                                         for q in pairs])
    return card


def _sample_words(spec, seed: int, run: str) -> list[int] | None:
    """The words of each held-out sample of a run (eval-TASK.samples.jsonl), None when the file is not there."""
    path = os.path.join(run_dir(spec, seed, run), f"eval-{spec.task}.samples.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [len(json.loads(line)["completion"].split()) for line in f if line.strip()]


def _ratings(spec, golds: dict, chosen: dict) -> dict | None:
    """Bradley-Terry and Elo ratings (SFT = 1000) from every pair of methods (at their chosen trials) judged by
    the gold reward on the same held-out prompt and seed: one match per (pair, prompt, seed), ties half; and
    Bradley-Terry with the two samples' lengths (words) as a covariate where the samples are stored."""
    from ..eval.ratings import bradley_terry_ratings, elo_ratings, length_controlled_ratings
    methods = list(spec.methods)
    if len(methods) < 2:
        return None
    words = {(s, m): _sample_words(spec, s, chosen[m]) for s in range(spec.seeds) for m in methods}
    matches, lengths = [], []
    for seed in range(spec.seeds):
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                wa, wb = words[(seed, a)], words[(seed, b)]
                for k, (ga, gb) in enumerate(zip(golds[(seed, chosen[a])], golds[(seed, chosen[b])])):
                    matches.append((a, b, 1.0 if ga > gb else 0.0 if ga < gb else 0.5))
                    lengths.append((wa[k], wb[k]) if wa and wb and k < min(len(wa), len(wb)) else None)
    out = {"matches": len(matches), "bradley_terry": bradley_terry_ratings(matches, anchor="sft"),
           "elo": elo_ratings(matches)}
    if all(x is not None for x in lengths):
        out["length_controlled"] = length_controlled_ratings(matches, lengths, anchor="sft", n_bootstrap=100)
    return out


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


def write_report(spec, results: dict) -> str:
    from .report_md import markdown
    from .report_plots import plots
    files = plots(spec, results)
    path = os.path.join(spec.out, "report.md")
    with open(path, "w") as f:
        f.write(markdown(spec, results, files))
    return path


def format_table(spec, results: dict) -> str:
    """The terminal tables: the decoding-matched one (each policy at its best temperature on validation, Holm-
    corrected `*`) when there is one, then T=1: each method at its chosen setting, then the baselines."""
    return "\n\n".join(filter(None, [format_decoding(results.get("decoding")), format_t1(spec, results)]))


def format_decoding(dm: dict | None) -> str:
    if not dm:
        return ""
    comp = dm["compared"]
    out = ["Decoding-matched: each policy at its best temperature on validation (* = Holm-corrected, "
           f"{dm['family_size']} tests)",
           f"{'method':22s} {'T':>4s} {'gold':>6s} {'KL':>6s}" + "".join(f" {'Δ vs ' + b:>26s}" for b in comp)]
    for m, e in dm["rows"].items():
        line = f"{e['run']:22s} {e['temperature']:4g} {e['gold']['mean']:6.3f} {e['kl']['mean']:6.3f}"
        for b in comp if m != "sft" else ():
            d = e["vs"][b]
            line += f" {d['mean']:+.3f} [{d['low']:+.3f},{d['high']:+.3f}]{'*' if d['significant'] else ' '}"
        out.append(line)
    for b, e in dm["best_of"].items():
        out.append(f"{'(baseline) ' + b:22s} {e['temperature']:4g} {e['gold']['mean']:6.3f} {'':>6s}")
    return "\n".join(out)


def format_t1(spec, results: dict) -> str:
    runs, chosen = results["runs"], results["chosen"]
    big = f"best-of-{max(spec.best_of)}" if spec.best_of else None
    head = f"{'method':22s} {'gold':>6s} {'Δ vs SFT [95% CI]':>26s} {'KL':>6s}"
    head += f" {'Δ vs ' + big:>26s}" if big in results["baselines"] else ""
    out = (["At T=1 (every method sampled at T=1; * = the 95% interval excludes 0, uncorrected)"]
           if results.get("decoding") else []) + [head]
    for m in spec.methods:
        e = runs[chosen[m]]
        name = chosen[m] if chosen[m] != m else m
        if m == "sft":
            out.append(f"{name:22s} {e['gold']['mean']:6.3f}")
            continue
        d = e["vs"]["sft"]
        line = (f"{name:22s} {e['gold']['mean']:6.3f} {d['mean']:+.3f} [{d['low']:+.3f},{d['high']:+.3f}]"
                f"{'*' if d['significant'] else ' '}  {e['kl']['mean']:6.3f}")
        if big in e["vs"]:
            b = e["vs"][big]
            line += f" {b['mean']:+.3f} [{b['low']:+.3f},{b['high']:+.3f}]{'*' if b['significant'] else ' '}"
        out.append(line)
    for b, e in results["baselines"].items():
        if b == "sft":
            continue
        d = e["vs_sft"]
        out.append(f"{'(baseline) ' + b:22s} {e['gold']['mean']:6.3f} {d['mean']:+.3f} [{d['low']:+.3f},"
                   f"{d['high']:+.3f}]{'*' if d['significant'] else ' '}")
    return "\n".join(out)
