"""Labels out of the store, in the trainers' formats, and a summary of who labelled what and how they agreed.

Files (data/records.py formats, each record validated by `record_from_dict` before it is written, so
`tinyrlhf reward` / `dpo` / `kto` read them as they are):
  pairs.jsonl     {"prompt", "chosen", "rejected", "meta"} from pairwise labels A or B (arena votes too);
                  tie and both_bad give no pair
  rankings.jsonl  {"prompt", "completions" (best first), "meta"} from K-way rankings
  binary.jsonl    {"prompt", "completion", "label", "meta"} from thumbs up/down, and both_bad votes
                  (each of the two outputs undesirable, which is what the person said)
  summary.json    counts (per labeller, kind, batch), agreement on items labelled by two people, label
                  latency, thumbs-up rate per model, and Elo and Bradley-Terry ratings of the models with
                  bootstrap 95% CIs from every pairwise comparison the labels imply
An item labelled by two people gives two records (one per label), as the labels disagree in real data and
the trainers' losses average over them; meta names the labeller, item and label ids and the models.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np

from ..data.records import record_from_dict, write_records
from ..errors import DataError, TinyRLHFError
from .store import Store


def _outcome(label: dict):
    """The answer in output indices: pair -> 0|1 (winner) or "tie"|"both_bad"; ranking -> tuple of output
    indices best first; binary -> True|False."""
    order, ans = label["shown_order"], label["answer"]
    if label["kind"] == "pair":
        c = ans["choice"]
        return order[{"A": 0, "B": 1}[c]] if c in ("A", "B") else c
    if label["kind"] == "ranking":
        return tuple(order[p] for p in ans["ranking"])
    return ans["choice"] == "up"


def _records(label: dict) -> list[tuple[str, dict]]:
    """(file kind, record dict) for one label."""
    outs, res = label["outputs"], _outcome(label)
    meta = {"labeller": label["labeller"], "item_id": label["item_id"], "label_id": label["id"],
            "batch": label["batch"], "source": "human"}
    if label["comment"]:
        meta["comment"] = label["comment"]
    p = label["prompt"]
    if label["kind"] == "pair":
        if res in (0, 1):
            w, l_ = outs[res], outs[1 - res]
            return [("pair", {"prompt": p, "chosen": w["text"], "rejected": l_["text"],
                              "meta": {**meta, "chosen_model": w["model"], "rejected_model": l_["model"]}})]
        if res == "both_bad":
            return [("binary", {"prompt": p, "completion": o["text"], "label": False,
                                "meta": {**meta, "model": o["model"], "from": "both_bad"}}) for o in outs]
        return []
    if label["kind"] == "ranking":
        return [("ranking", {"prompt": p, "completions": [outs[i]["text"] for i in res],
                             "meta": {**meta, "models": [outs[i]["model"] for i in res]}})]
    return [("binary", {"prompt": p, "completion": outs[0]["text"], "label": res,
                        "meta": {**meta, "model": outs[0]["model"]}})]


def _matches(labels: list[dict]) -> tuple[list[tuple[str, str, float]], int]:
    """Pairwise model comparisons (model_a, model_b, score_a) the labels imply, and how many were skipped
    because both sides came from the same model. A tie and "both bad" count as a draw (Chatbot Arena)."""
    out, same = [], 0
    for lab in labels:
        models = [o["model"] for o in lab["outputs"]]
        res = _outcome(lab)
        if lab["kind"] == "pair":
            games = [(models[0], models[1], {0: 1.0, 1: 0.0}.get(res, 0.5))]
        elif lab["kind"] == "ranking":
            games = [(models[a], models[b], 1.0) for a, b in combinations(res, 2)]
        else:
            continue
        for g in games:
            if g[0] == g[1]:
                same += 1
            else:
                out.append(g)
    return out, same


def _kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two raters' categorical answers on the same items (None when undefined)."""
    if not a:
        return None
    po = float(np.mean([x == y for x, y in zip(a, b)]))
    ca, cb, n = Counter(a), Counter(b), len(a)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / n**2
    return None if pe >= 1.0 else (po - pe) / (1.0 - pe)


def _kendall_tau(r1: tuple, r2: tuple) -> float:
    """Kendall's tau between two rankings of the same outputs (1 = same order, -1 = reversed)."""
    pos1, pos2 = {o: i for i, o in enumerate(r1)}, {o: i for i, o in enumerate(r2)}
    pairs = list(combinations(r1, 2))
    return sum(np.sign(pos1[x] - pos1[y]) * np.sign(pos2[x] - pos2[y]) for x, y in pairs) / len(pairs)


def agreement(labels: list[dict]) -> dict:
    """Inter-labeller agreement on the items two different people labelled (their first two labels):
    per kind, the number of such items, the share with the same answer and Cohen's kappa (rankings: the
    share with the same order, the same top choice, and the mean Kendall tau)."""
    by_item = defaultdict(list)
    for lab in labels:
        if all(lab["labeller"] != other["labeller"] for other in by_item[lab["item_id"]]):
            by_item[lab["item_id"]].append(lab)
    out = {}
    for kind in ("pair", "ranking", "binary"):
        twice = [ls[:2] for ls in by_item.values() if len(ls) >= 2 and ls[0]["kind"] == kind]
        if not twice:
            continue
        a, b = [_outcome(x) for x, _ in twice], [_outcome(y) for _, y in twice]
        entry = {"items": len(twice), "agree": float(np.mean([x == y for x, y in zip(a, b)]))}
        if kind == "ranking":
            entry["same_top"] = float(np.mean([x[0] == y[0] for x, y in zip(a, b)]))
            entry["kendall_tau"] = float(np.mean([_kendall_tau(x, y) for x, y in zip(a, b)]))
        else:
            entry["kappa"] = _kappa([str(x) for x in a], [str(y) for y in b])
        out[kind] = entry
    return out


def _latency(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"n": int(v.size), "median_s": float(np.median(v)), "mean_s": float(v.mean()),
            "p90_s": float(np.quantile(v, 0.9))}


def ratings(matches: list[tuple[str, str, float]], seed: int = 0) -> dict:
    """Elo and Bradley-Terry ratings with 95% bootstrap CIs (eval/ratings.py), or a note why there are none."""
    from ..eval.ratings import bradley_terry_ratings, elo_ratings

    if len({m for a, b, _ in matches for m in (a, b)}) < 2:
        return {"note": "fewer than two models compared"}
    try:
        return {"matches": len(matches), "elo": elo_ratings(matches, seed=seed),
                "bradley_terry": bradley_terry_ratings(matches, seed=seed)}
    except ValueError as e:
        return {"matches": len(matches), "note": str(e)}


def summarize(labels: list[dict], written: dict, skipped: int) -> dict:
    per_labeller = Counter(lab["labeller"] for lab in labels)
    matches, same = _matches(labels)
    thumbs = defaultdict(list)
    for lab in labels:
        if lab["kind"] == "binary":
            thumbs[lab["outputs"][0]["model"]].append(_outcome(lab))
    lat_by = defaultdict(list)
    for lab in labels:
        lat_by[lab["labeller"]].append(lab["latency_s"])
    return {
        "labels": len(labels), "items": len({lab["item_id"] for lab in labels}),
        "per_labeller": dict(sorted(per_labeller.items())),
        "per_kind": dict(Counter(lab["kind"] for lab in labels)),
        "per_batch": dict(Counter(lab["batch"] for lab in labels)),
        "pair_choices": dict(Counter(lab["answer"]["choice"] for lab in labels if lab["kind"] == "pair")),
        "written": written, "skipped_invalid": skipped,
        "agreement": agreement(labels),
        "latency": ({"all": _latency([lab["latency_s"] for lab in labels]),
                     "per_labeller": {k: _latency(v) for k, v in sorted(lat_by.items())}} if labels else {}),
        "thumbs_up_rate": {m: {"n": len(v), "up": float(np.mean(v))} for m, v in sorted(thumbs.items())},
        "ratings": ratings(matches) if matches else {"note": "no pairwise comparisons between different models"},
        "same_model_comparisons": same,
    }


def export_labels(db_path: str, out_dir: str, batch: str | None = None) -> dict:
    """Write pairs.jsonl / rankings.jsonl / binary.jsonl (the trainers' formats) and summary.json for the
    labels of `batch` (or all) in the store at db_path; return the summary. A record the trainers would
    refuse (an empty output, chosen identical to rejected) is skipped and counted in `skipped_invalid`."""
    if not os.path.isfile(db_path):
        raise TinyRLHFError(f"{db_path}: no such feedback database")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TinyRLHFError(f"--out '{out_dir}' is a file, not a directory")
    with Store(db_path) as store:
        labels = store.labels(batch)
    files = {"pair": [], "ranking": [], "binary": []}
    skipped = 0
    for lab in labels:
        for kind, rec in _records(lab):
            try:
                files[kind].append(record_from_dict(kind, rec))
            except DataError:
                skipped += 1
    os.makedirs(out_dir, exist_ok=True)
    names = {"pair": "pairs.jsonl", "ranking": "rankings.jsonl", "binary": "binary.jsonl"}
    written = {names[k]: write_records(os.path.join(out_dir, names[k]), recs) for k, recs in files.items()}
    summary = {"db": os.path.abspath(db_path), "batch": batch, **summarize(labels, written, skipped)}
    tmp = os.path.join(out_dir, f"summary.json.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    os.replace(tmp, os.path.join(out_dir, "summary.json"))
    return summary


def format_summary(s: dict) -> str:
    """The printed summary: counts, agreement, latency, ratings."""
    lines = [f"{s['labels']} labels on {s['items']} items; written: "
             + ", ".join(f"{k} {v}" for k, v in s["written"].items())
             + (f"; {s['skipped_invalid']} skipped (empty or identical outputs: the trainers refuse them)"
                if s["skipped_invalid"] else "")]
    lines.append("per labeller: " + (", ".join(f"{k} {v}" for k, v in s["per_labeller"].items()) or "-"))
    for kind, a in s["agreement"].items():
        extra = (f", same top {a['same_top']:.2f}, Kendall tau {a['kendall_tau']:+.2f}" if kind == "ranking"
                 else (f", kappa {a['kappa']:+.2f}" if a.get("kappa") is not None else ""))
        lines.append(f"agreement ({kind}, {a['items']} items labelled twice): {a['agree']:.2f}{extra}")
    if s["latency"]:
        lat = s["latency"]["all"]
        lines.append(f"latency: median {lat['median_s']:.1f} s, mean {lat['mean_s']:.1f} s, p90 {lat['p90_s']:.1f} s")
    r = s["ratings"]
    if "elo" in r:
        lines.append(f"ratings from {r['matches']} comparisons (95% bootstrap CI):")
        lines.append(f"  {'model':20s} {'Elo':>24s} {'Bradley-Terry':>24s}")
        for m in sorted(r["elo"], key=lambda m: -r["bradley_terry"][m]["rating"]):
            e, b = r["elo"][m], r["bradley_terry"][m]
            lines.append(f"  {m:20s} {e['rating']:7.0f} [{e['low']:6.0f},{e['high']:6.0f}]  "
                         f"{b['rating']:7.0f} [{b['low']:6.0f},{b['high']:6.0f}]")
    else:
        lines.append(f"ratings: {r.get('note')}")
    return "\n".join(lines)
