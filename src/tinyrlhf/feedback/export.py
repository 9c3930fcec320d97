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

from ..data.records import record_from_dict, record_to_dict
from ..diskio import disk_errors, fsync_dir, make_dirs
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


_DRAWS = ("tie", "both_bad")


def _matches(labels: list[dict]) -> tuple[list[tuple[str, str, float]], list[str], list[tuple[int, int]], int]:
    """Pairwise model comparisons (model_a, model_b, score_a) the labels imply, who judged each (the
    clusters of the ratings' bootstrap), the two answers' lengths in words (the length-controlled ratings'
    covariate), and how many were skipped because both sides came from the same model. A tie and "both
    bad" count as a draw (Chatbot Arena); nothing else does (store.labels checked every answer: an unknown
    choice never reaches here)."""
    out, who, lengths, same = [], [], [], 0
    for lab in labels:
        models = [o["model"] for o in lab["outputs"]]
        words = [len(o["text"].split()) for o in lab["outputs"]]
        res = _outcome(lab)
        if lab["kind"] == "pair":
            games = [(0, 1, 0.5 if res in _DRAWS else 1.0 - res)]
        elif lab["kind"] == "ranking":
            games = [(a, b, 1.0) for a, b in combinations(res, 2)]
        else:
            continue
        for i, j, score in games:
            if models[i] == models[j]:
                same += 1
            else:
                out.append((models[i], models[j], score))
                who.append(lab["labeller"])
                lengths.append((words[i], words[j]))
    return out, who, lengths, same


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


def ratings(matches: list[tuple[str, str, float]], labellers: list[str] | None = None, seed: int = 0,
            lengths: list[tuple[int, int]] | None = None) -> dict:
    """Elo and Bradley-Terry ratings with 95% bootstrap CIs (eval/ratings.py), or a note why there are none.
    `labellers` (who judged each match): the bootstrap resamples labellers as clusters, since one person's
    votes share that person's taste; one prolific labeller then cannot make an interval look narrow.
    `lengths` (the two answers' lengths per match): Bradley-Terry with length held fixed as well
    ("length_controlled", Chatbot Arena's style control), so a model that wins by writing longer is seen."""
    from ..eval.ratings import bradley_terry_ratings, elo_ratings, length_controlled_ratings

    if len({m for a, b, _ in matches for m in (a, b)}) < 2:
        return {"note": "fewer than two models compared"}
    kw = {"seed": seed, "clusters": labellers}
    try:
        out = {"matches": len(matches), "labellers": len(set(labellers)) if labellers else None,
               "interval": "cluster bootstrap over labellers" if labellers else "bootstrap over matches",
               "elo": elo_ratings(matches, **kw), "bradley_terry": bradley_terry_ratings(matches, **kw)}
    except ValueError as e:
        return {"matches": len(matches), "note": str(e)}
    if lengths is not None:
        out["length_controlled"] = length_controlled_ratings(matches, lengths, **kw)
    return out


def summarize(labels: list[dict], written: dict, skipped: int) -> dict:
    per_labeller = Counter(lab["labeller"] for lab in labels)
    matches, who, lengths, same = _matches(labels)
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
        "ratings": ratings(matches, who, lengths=lengths) if matches else {"note": "no pairwise comparisons between different models"},
        "same_model_comparisons": same,
    }


def export_labels(db_path: str, out_dir: str, batch: str | None = None) -> dict:
    """Write pairs.jsonl / rankings.jsonl / binary.jsonl (the trainers' formats) and summary.json for the
    labels of `batch` (or all) in the store at db_path; return the summary. A record the trainers would
    refuse (an empty output, chosen identical to rejected) is skipped and counted in `skipped_invalid`.

    The database is opened read-only after its schema is checked (a file that is not a feedback database
    is refused unchanged); an unknown --batch, a labels row the store never wrote, or an --out that cannot
    be written is one line (TinyRLHFError). The four files are written to temporary names and renamed only
    when all of them are complete: a failed export leaves the files already in --out as they were."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TinyRLHFError(f"--out '{out_dir}' is a file, not a directory")
    with Store(db_path, readonly=True) as store:
        if batch is not None and batch not in (known := store.batches()):
            raise TinyRLHFError(f"--batch {batch!r}: no such batch in {db_path} (batches: "
                                + (", ".join(repr(b) for b in known[:20]) + (", ..." if len(known) > 20 else "")
                                   if known else "none yet") + ")")
        labels = store.labels(batch)
    files = {"pair": [], "ranking": [], "binary": []}
    skipped = 0
    for lab in labels:
        for kind, rec in _records(lab):
            try:
                files[kind].append(record_from_dict(kind, rec))
            except DataError:
                skipped += 1
    names = {"pair": "pairs.jsonl", "ranking": "rankings.jsonl", "binary": "binary.jsonl"}
    written = {names[k]: len(recs) for k, recs in files.items()}
    summary = {"db": os.path.abspath(db_path), "batch": batch, **summarize(labels, written, skipped)}
    texts = {names[k]: "".join(json.dumps(record_to_dict(r), ensure_ascii=False) + "\n" for r in recs)
             for k, recs in files.items()}
    texts["summary.json"] = json.dumps(summary, indent=2, ensure_ascii=False)
    _write_all(out_dir, texts)
    return summary


def _write_all(out_dir: str, texts: dict[str, str]) -> None:
    """Every file to a temporary name (fsync'ed), then all renamed; on a full or read-only disk the
    temporary files go and one line (DiskError) says so."""
    make_dirs(out_dir, "--out: cannot create")
    tmps = {name: os.path.join(out_dir, f".{name}.tmp{os.getpid()}") for name in texts}
    with disk_errors("could not write the export to", out_dir, cleanup=list(tmps.values()),
                     after="the files already there are unchanged"):
        for name, text in texts.items():
            with open(tmps[name], "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for name in texts:
            os.replace(tmps[name], os.path.join(out_dir, name))
        fsync_dir(out_dir)


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
        lines.append(f"ratings from {r['matches']} comparisons (95% CI, {r.get('interval', 'bootstrap')}"
                     + (f", {r['labellers']} labellers" if r.get("labellers") else "") + "):")
        lc = r.get("length_controlled")
        lines.append(f"  {'model':20s} {'Elo':>24s} {'Bradley-Terry':>24s}"
                     + (f" {'BT, length-controlled':>24s}" if lc else ""))
        for m in sorted(r["elo"], key=lambda m: -r["bradley_terry"][m]["rating"]):
            e, b = r["elo"][m], r["bradley_terry"][m]
            lines.append(f"  {m:20s} {e['rating']:7.0f} [{e['low']:6.0f},{e['high']:6.0f}]  "
                         f"{b['rating']:7.0f} [{b['low']:6.0f},{b['high']:6.0f}]"
                         + (" {rating:7.0f} [{low:6.0f},{high:6.0f}]".format(**lc["ratings"][m]) if lc else ""))
        if lc:
            g = lc["length"]
            lines.append(f"  length effect: {g['coef']:+.2f} log-odds per sd of the length difference "
                         f"[{g['low']:+.2f}, {g['high']:+.2f}] (> 0: the longer answer tends to win)")
    else:
        lines.append(f"ratings: {r.get('note')}")
    return "\n".join(lines)
