"""The decoding-matched comparison (the report's primary view): every policy at its own best temperature on the
validation prompts, compared on the evaluation prompts with two-stage cluster intervals and Holm-corrected
significance, plus where each method lies against the tempered-SFT curve of gold against KL.

Why: sampled at T=1, a method is held to a KL of ~0.4-1.6 nats while greedy SFT sits at ~5 (-log pi(y*)), so
"no method beats sharpened SFT" can come from the decoding alone. Here the temperature is part of each policy:
SFT, each method (its trial and temperature chosen together) and best-of-n all choose theirs on validation.
"""
from __future__ import annotations

import os

import numpy as np

from ..eval import metrics as M
from .decoding import best_temperature
from .spec import is_oracle, paths, read_json, runs_of

ALPHA = 0.05


def _ci(groups: list[list[float]]) -> dict:
    mean, draws = M.cluster_bootstrap_draws(groups, seed=0)
    low, high = np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2])
    return {"mean": mean, "low": float(low), "high": float(high), "p": M.bootstrap_p_value(draws)}


def _delta(a: list[list[float]], b: list[list[float]]) -> dict:
    return _ci([[x - y for x, y in zip(ga, gb)] for ga, gb in zip(a, b)])


def _mean(groups: list[list[float]]) -> float:
    return sum(sum(g) / len(g) for g in groups) / len(groups)


def curve_at(curve: list[tuple[float, float]], kl: float) -> float:
    """Gold of the tempered-SFT curve at `kl`, linear between its points (sorted by KL), flat beyond its ends."""
    pts = sorted(curve)
    if kl <= pts[0][0]:
        return pts[0][1]
    for (k0, g0), (k1, g1) in zip(pts, pts[1:]):
        if kl <= k1:
            return g0 + (g1 - g0) * (kl - k0) / (k1 - k0) if k1 > k0 else max(g0, g1)
    return pts[-1][1]


def decoding_matched(spec, base: dict) -> dict | None:
    """Chosen temperature, gold, KL and the Holm-corrected differences of every method, SFT and best-of-n."""
    if not spec.temperatures:
        return None
    seeds, temps = range(spec.seeds), [f"{t:g}" for t in spec.temperatures]
    dec = {}
    for s in seeds:
        for m in spec.methods:
            for run, _ in runs_of(spec, m):
                path = os.path.join(paths(spec, s)["root"], run, f"decoding-{spec.task}.json")
                dec[(s, run)] = read_json(path)["temperatures"]

    def split(run, t, part):
        return [dec[(s, run)][t][part] for s in seeds]

    sft_t = best_temperature({t: split("sft", t, "val") for t in temps})
    rows = {"sft": {"run": "sft", "temperature": float(sft_t), "gold": _ci(split("sft", sft_t, "eval")),
                    "kl": _ci(split("sft", sft_t, "kl")), "vs": {}}}
    bars = {"sft": split("sft", sft_t, "eval"), "heuristic": [base[s]["heuristic"]["per_prompt"] for s in seeds]}
    bon = {}
    for n in spec.best_of:
        by_t = {t: [base[s]["best_of_by_temperature"][t][str(n)]["val_per_prompt"] for s in seeds]
                for t in base[0].get("best_of_by_temperature", {})}
        if by_t:
            t = best_temperature(by_t)
            bars[f"best-of-{n}"] = [base[s]["best_of_by_temperature"][t][str(n)]["per_prompt"] for s in seeds]
            bon[f"best-of-{n}"] = {"temperature": float(t), "gold": _ci(bars[f"best-of-{n}"]),
                                   "kl_bound": base[0]["best_of_by_temperature"][t][str(n)]["kl_bound"]}
    oracle = {f"oracle best-of-{n}": {"temperature": 1.0, "kl_bound": base[0]["oracle_best_of"][str(n)]["kl_bound"],
                                      "gold": _ci([base[s]["oracle_best_of"][str(n)]["per_prompt"] for s in seeds])}
              for n in spec.best_of if all("oracle_best_of" in base[s] for s in seeds)}
    compared = ["sft", *[b for b in bars if b.startswith("best-of-")][-1:], "heuristic"]
    curve = [(_mean(split("sft", t, "kl")), _mean(split("sft", t, "eval"))) for t in temps]
    for m in spec.methods:
        if m == "sft":
            continue
        cands = [(run, t) for run, _ in runs_of(spec, m) for t in temps]
        run, t = max(cands, key=lambda c: _mean(split(c[0], c[1], "val")))  # first in order on a tie
        gold = split(run, t, "eval")
        kl = _ci(split(run, t, "kl"))
        rows[m] = {"run": run, "temperature": float(t), "gold": _ci(gold), "kl": kl,
                   "vs": {b: _delta(gold, bars[b]) for b in compared},
                   "vs_curve": _ci(gold) | {"curve": curve_at(curve, kl["mean"])},
                   "greedy_vs_sft_greedy": _delta(split(run, "0", "eval"), split("sft", "0", "eval"))
                   if "0" in temps else None}
    # one family: every method against every bar of this table (oracles are bounds, not tested: uncorrected)
    family = {(m, b): rows[m]["vs"][b]["p"] for m in rows if m != "sft" and not is_oracle(m) for b in compared}
    for m in rows:
        for b in compared if is_oracle(m) else ():
            e = rows[m]["vs"][b]
            e["p_holm"], e["significant"] = e["p"], e["p"] <= ALPHA
    adjusted = M.holm_adjust({f"{m}|{b}": p for (m, b), p in family.items()})
    for (m, b) in family:
        e = rows[m]["vs"][b]
        e["p_holm"] = adjusted[f"{m}|{b}"]
        e["significant"] = e["p_holm"] <= ALPHA
    methods = [m for m in rows if m != "sft" and not is_oracle(m)]
    pairs = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            pairs[f"{a} vs {b}"] = _delta(split(rows[a]["run"], f"{rows[a]['temperature']:g}", "eval"),
                                          split(rows[b]["run"], f"{rows[b]['temperature']:g}", "eval"))
    adj = M.holm_adjust({k: v["p"] for k, v in pairs.items()})
    for k, v in pairs.items():
        v["p_holm"], v["significant"] = adj[k], adj[k] <= ALPHA
    points = {run: [(f"{t}", _mean(split(run, t, "kl")), _mean(split(run, t, "eval"))) for t in temps]
              for m in spec.methods for run, _ in runs_of(spec, m)}
    return {"temperatures": temps, "rows": rows, "best_of": bon, "oracle": oracle, "compared": compared,
            "family_size": len(family), "method_pairs": pairs, "sft_curve": curve, "points": points}


def lines(dm: dict | None) -> list[str]:
    """The section of report.md (every number from `dm`)."""
    if not dm:
        return []
    f = lambda e: f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"  # noqa: E731
    d = lambda e: (f"{e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"  # noqa: E731
                   + (" *" if e.get("significant") else ""))
    comp = dm["compared"]
    out = ["## Decoding-matched comparison (primary)", "",
           f"Every policy sampled at T ∈ {{{', '.join(dm['temperatures'])}}} (0 = greedy) and shown at the temperature "
           "(and, with trials, the setting) with the best mean gold on the validation prompts; SFT and best-of-n "
           "choose theirs the same way. Gold on the evaluation prompts; KL to the SFT model from the samples "
           "(log π_T(y) − log π_SFT(y); greedy: −log π_SFT(y)). `*`: significant after Holm–Bonferroni over the "
           f"family of the {dm['family_size']} tests of this table (each method against "
           f"{', '.join(comp)}), α = 0.05.", "",
           "| method | run | T | gold [95% CI] | KL to SFT | " + " | ".join(f"Δ vs {b} (Holm p)" for b in comp)
           + " | above tempered SFT at its KL? |", "|" + " --- |" * (5 + len(comp) + 1)]
    for m, e in dm["rows"].items():
        if m == "sft":
            out.append(f"| sft | sft | {e['temperature']:g} | {f(e['gold'])} | {e['kl']['mean']:.3f} | "
                       + " | ".join("–" for _ in comp) + " | – |")
            continue
        cells = [f"{d(e['vs'][b])} ({e['vs'][b]['p_holm']:.3f})" for b in comp]
        above = e["vs_curve"]
        verdict = ("yes" if above["low"] > above["curve"] else "no" if above["high"] < above["curve"] else
                   "cannot tell") + f" (curve {above['curve']:.3f})"
        name = f"*{m}* (oracle: gold reward; p uncorrected)" if is_oracle(m) else m
        out.append(f"| {name} | {e['run']} | {e['temperature']:g} | {f(e['gold'])} | {e['kl']['mean']:.3f} | "
                   + " | ".join(cells) + f" | {verdict} |")
    for b, e in dm["best_of"].items():
        out.append(f"| *{b}* | reranked by the RM | {e['temperature']:g} | {f(e['gold'])} | ≤ {e['kl_bound']:.3f} | "
                   + " | ".join("–" for _ in comp) + " | – |")
    for b, e in dm.get("oracle", {}).items():
        out.append(f"| *{b}* | SFT samples reranked by the gold (upper bound) | 1 | {f(e['gold'])} | "
                   f"≤ {e['kl_bound']:.3f} | " + " | ".join("–" for _ in comp) + " | – |")
    out += ["", "\"Above tempered SFT\": the method's gold interval against the SFT curve of gold over KL (its "
            "temperatures, linear between them) at the method's mean KL; the curve is taken as fixed, so this "
            "reading is a little optimistic for the method.", ""]
    greedy = [(m, e["greedy_vs_sft_greedy"]) for m, e in dm["rows"].items() if e.get("greedy_vs_sft_greedy")]
    if greedy:
        out += ["Greedy against greedy (both at T=0, per-prompt paired, cluster interval, not corrected): "
                + "; ".join(f"{m} {d(e)}" for m, e in greedy) + ".", ""]
    if dm["method_pairs"]:
        out += ["Method against method, each at its chosen temperature (Holm over these "
                f"{len(dm['method_pairs'])} pairs): "
                + "; ".join(f"{k} {d(v)}" for k, v in dm["method_pairs"].items()) + ".", ""]
    return out
