"""Where a round's preference labels come from in `tinyrlhf loop`: samples of the current policy (and of
earlier rounds' policies) judged by the simulated annotators, or by people through the feedback store.

A round's labels land in ROUND/labels/ (pairs.jsonl, then manifest.json last: a directory with a manifest
is finished and reused). The data directory a reward model (or DPO) trains on, ROUND/rm-data/, holds the
labels of this round and every earlier one (pairs.jsonl) next to the base task data's held-out files.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import time

from ..data.records import PairRecord, iter_jsonl, read_records, write_records
from ..errors import ConfigError, TinyRLHFError
from .policy_data import COPIED, annotator_pool, sample_k
from .spec import read_json, write_json


def train_prompts(base_dir: str) -> list[str]:
    """The task data's distinct training prompts, in file order."""
    return list(dict.fromkeys(o["prompt"] for _, o in iter_jsonl(os.path.join(base_dir, "sft.jsonl"))))


def round_prompts(prompts: list[str], start: int, n: int) -> list[str]:
    """n prompts from `start`, wrapping around (each round sees fresh prompts while there are some)."""
    if not prompts:
        raise ConfigError("the task data has no training prompts")
    return [prompts[(start + i) % len(prompts)] for i in range(n)]


def sample_pairs(models: list[tuple[str, str]], prompts: list[str], *, mix_earlier: float, seed: int,
                 max_new_tokens: int, temperature: float) -> list[dict]:
    """Two answers per prompt: two samples of the current policy (models[-1]), or, for a `mix_earlier`
    share of the prompts, one of it and one of an earlier policy drawn uniformly from models[:-1].
    models: (name, model dir), oldest first. Returns [{"prompt", "outputs": [{"model", "text"}] * 2}]
    without the prompts whose two answers are equal or empty."""
    rng = random.Random(f"loop-pairs:{seed}")
    current, earlier = models[-1], models[:-1]
    mixed = {i: rng.randrange(len(earlier)) for i in range(len(prompts))
             if earlier and rng.random() < mix_earlier}
    own = sample_k(current[1], prompts, 2, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    second = [(current[0], texts[1]) for texts in own]
    for j, (name, path) in enumerate(earlier):
        idx = [i for i, e in mixed.items() if e == j]
        if idx:
            texts = sample_k(path, [prompts[i] for i in idx], 1, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed * 31 + j + 1)
            for i, t in zip(idx, texts):
                second[i] = (name, t[0])
    out = []
    for p, texts, (name, text) in zip(prompts, own, second):
        a, b = texts[0], text
        if a.strip() and b.strip() and a != b:
            out.append({"prompt": p, "outputs": [{"model": current[0], "text": a}, {"model": name, "text": b}]})
    return out


def simulated_labels(items: list[dict], base_dir: str, task, seed: int) -> list[PairRecord]:
    """The base task data's annotator pool judges each item (a Bradley-Terry draw from the gold reward,
    as `tinyrlhf data --from-model` and `compare` label pairs)."""
    pool = annotator_pool(read_json(os.path.join(base_dir, "manifest.json")))
    rng = random.Random(f"loop-labels:{seed}")
    pairs = []
    for it in items:
        (a, b), p = it["outputs"], it["prompt"]
        ga, gb = task.gold_reward(p, a["text"]), task.gold_reward(p, b["text"])
        ann = pool.pick(rng)
        if not ann.prefers_first(ga, gb, rng):
            a, b, ga, gb = b, a, gb, ga
        pairs.append(PairRecord(p, a["text"], b["text"], None, {
            "annotator": ann.id, "model_chosen": a["model"], "model_rejected": b["model"],
            "gold_chosen": round(ga, 6), "gold_rejected": round(gb, 6), "source": "simulated"}))
    return pairs


def human_labels(items: list[dict], db: str, batch: str, wanted: int, label_dir: str, task, *,
                 poll_s: float, wait_s: float, log=print) -> list[PairRecord]:
    """Queue the items in the feedback store (once: their ids are kept in ROUND/labels/items.json), say how
    to start the labelling app, wait until the batch holds `wanted` labels (progress on one line), then
    export them (tinyrlhf.feedback.export) and return the pairs (ties and 'both bad' give no pair)."""
    try:
        from ..feedback.export import export_labels
        from ..feedback.store import Store
    except ImportError as e:
        raise TinyRLHFError(f"--labels human needs the feedback store (tinyrlhf.feedback.store): {e}") from None
    os.makedirs(label_dir, exist_ok=True)
    queued = os.path.join(label_dir, "items.json")
    store = Store(db)
    try:
        if not os.path.isfile(queued):
            ids = store.add_items([{**it, "kind": "pair"} for it in items], batch)
            write_json(queued, {"batch": batch, "db": db, "item_ids": ids})
        log(f"batch '{batch}': {len(items)} pairs queued in {db}. In another terminal, serve them with the "
            f"labelling app (it prints each labeller's link):\n"
            f"    tinyrlhf label {db} --labellers alice,bob --port 8100\n"
            f"Waiting for {wanted} labels (Ctrl-C stops; the same command continues the round).")
        t0, last = time.time(), -1
        while (n := store.count_labels(batch)) < wanted:
            if n != last:
                print(f"\r  labels {n}/{wanted}  ({time.time() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
                last = n
            if wait_s and time.time() - t0 > wait_s:
                raise TinyRLHFError(f"batch '{batch}' has {n} of {wanted} labels after {wait_s:g} s; run the "
                                    "same command again to keep waiting")
            time.sleep(poll_s)
        print(f"\r  labels {n}/{wanted}  ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        store.close()
    export_dir = os.path.join(label_dir, "export")
    summary = export_labels(db, export_dir, batch)
    write_json(os.path.join(label_dir, "export_summary.json"), summary)
    path = os.path.join(export_dir, "pairs.jsonl")
    exported = read_records(path, "pair") if os.path.isfile(path) else []
    if not exported:
        raise TinyRLHFError(f"batch '{batch}': the {n} labels gave no preference pair (only ties or 'both bad')")
    return [PairRecord(r.prompt, r.chosen, r.rejected, r.margin, {
        **r.meta, "gold_chosen": round(task.gold_reward(r.prompt, r.chosen), 6),
        "gold_rejected": round(task.gold_reward(r.prompt, r.rejected), 6), "source": "human"}) for r in exported]


def finish_labels(label_dir: str, pairs: list[PairRecord], info: dict) -> dict:
    """Write ROUND/labels/pairs.jsonl, then its manifest (the mark of a finished labelling)."""
    os.makedirs(label_dir, exist_ok=True)
    write_records(os.path.join(label_dir, "pairs.jsonl"), pairs)
    nz = [(r.meta["gold_chosen"], r.meta["gold_rejected"]) for r in pairs
          if r.meta.get("gold_chosen") != r.meta.get("gold_rejected")]
    info = {**info, "pairs": len(pairs),
            "agreement_with_gold": sum(c > r for c, r in nz) / len(nz) if nz else None}
    write_json(os.path.join(label_dir, "manifest.json"), info)
    return info


def merged_data_dir(base_dir: str, label_dirs: list[str], out_dir: str) -> int:
    """ROUND/rm-data: the pairs of every label directory given (oldest first) + the base data's held-out
    files and manifest, so a reward or DPO run can point data.dir at it. Returns the number of pairs."""
    if os.path.isfile(os.path.join(out_dir, "manifest.json")):
        return sum(1 for _ in iter_jsonl(os.path.join(out_dir, "pairs.jsonl")))
    os.makedirs(out_dir, exist_ok=True)
    pairs = [r for d in label_dirs for r in read_records(os.path.join(d, "pairs.jsonl"), "pair")]
    write_records(os.path.join(out_dir, "pairs.jsonl"), pairs)
    for name in COPIED:
        if os.path.isfile(os.path.join(base_dir, name)):
            shutil.copyfile(os.path.join(base_dir, name), os.path.join(out_dir, name))
    manifest = read_json(os.path.join(base_dir, "manifest.json"))
    write_json(os.path.join(out_dir, "manifest.json"), {**manifest, "loop_labels": label_dirs, "pairs": len(pairs)})
    return len(pairs)
