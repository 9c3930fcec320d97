"""Diagnose reward-model accuracy on family_tree's held-out eval pairs.

    python experiments/rm_diag.py [RM_DIR ...]

Prints, over the eval pairs with a gold gap (the same set `pair_accuracy` scores):
  * the share of each kind of gold difference (format-only: same names, one broken shape; names: F1 differs)
  * the annotator labels' agreement with gold
  * baselines: prefer the exact shape; SFT log-prob (sum, mean) of the completion; both combined
  * for each RM_DIR (a reward run's final/), accuracy against gold by kind and by relation.
"""
from __future__ import annotations

import sys
from collections import defaultdict

import torch

from tinyrlhf.data.collate import encode, pad
from tinyrlhf.data.records import pairs_from, read_records
from tinyrlhf.logprobs import token_logps
from tinyrlhf.models import build_model, load_reward_model
from tinyrlhf.config import ModelConfig
from tinyrlhf.tasks.family_tree import FamilyTreeTask, answer_f1, exact_shape, parse_prompt

DATA = "runs/data/family_tree-seed0"
SFT = "runs/family_tree/sft/final"


def kinds(task, pairs):
    out = []
    for p in pairs:
        fam, person, rel = parse_prompt(p.prompt)
        truth = fam.relatives(person, rel)
        fc, fr = answer_f1(truth, p.chosen), answer_f1(truth, p.rejected)
        sc, sr = exact_shape(p.chosen), exact_shape(p.rejected)
        gc, gr = task.gold_reward(p.prompt, p.chosen), task.gold_reward(p.prompt, p.rejected)
        if fc == fr:
            kind = "format-only"
        elif sc == sr:
            kind = "names, same shape"
        else:
            kind = "names+shape"
        out.append(dict(rel=rel, kind=kind, gc=gc, gr=gr, sc=sc, sr=sr, gap=abs(gc - gr),
                        label_ok=gc > gr))
    return out


@torch.no_grad()
def sft_logps(pairs, path=SFT):
    model, tok = build_model(ModelConfig(path=path))
    model.eval()
    res = []
    for which in ("chosen", "rejected"):
        ex = encode(tok, [p.prompt for p in pairs], [getattr(p, which) for p in pairs], 192)
        s, m = [], []
        for i in range(0, len(ex), 64):
            b = pad(ex[i:i + 64], tok.pad_token_id)
            lp = token_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
            n = b["completion_mask"][:, 1:].sum(-1)
            s.append(lp.sum(-1))
            m.append(lp.sum(-1) / n)
        res.append((torch.cat(s), torch.cat(m)))
    return res


@torch.no_grad()
def rm_scores(pairs, path, part="all"):
    """part: all, head (logp_weight zeroed) or logp (head zeroed) -- the two terms of a logp_feature RM."""
    rm, tok = load_reward_model(path)
    if part == "head":
        rm.logp_weight.data.zero_()
    elif part == "logp":
        rm.head.weight.data.zero_()
    out = []
    for which in ("chosen", "rejected"):
        ex = encode(tok, [p.prompt for p in pairs], [getattr(p, which) for p in pairs], 192)
        r = []
        for i in range(0, len(ex), 64):
            b = pad(ex[i:i + 64], tok.pad_token_id)
            r.append(rm(b["input_ids"], b["attention_mask"], b["completion_mask"]))
        out.append(torch.cat(r))
    return out


def report(name, info, a, b):
    """Accuracy vs gold of score a (chosen) vs b (rejected); ties count 1/2."""
    by = defaultdict(list)
    for d, x, y in zip(info, a, b):
        ok = 0.5 if x == y else float((x > y) == (d["gc"] > d["gr"]))
        by["ALL"].append(ok)
        by["kind=" + d["kind"]].append(ok)
        by["rel=" + d["rel"]].append(ok)
        by["gap<=0.34" if d["gap"] <= 0.34 else "gap>0.34"].append(ok)
    print(f"{name}: " + ", ".join(f"{k} {sum(v) / len(v):.3f} (n={len(v)})" for k, v in sorted(by.items())))


def main():
    torch.set_num_threads(1)
    task = FamilyTreeTask()
    pairs = pairs_from(read_records(f"{DATA}/eval_pairs.jsonl", "pair"))
    info = kinds(task, pairs)
    n = len(info)
    print(f"eval pairs {n}")
    for k in ("format-only", "names, same shape", "names+shape"):
        print(f"  {k}: {sum(d['kind'] == k for d in info) / n:.3f}")
    print(f"  labels agree with gold: {sum(d['label_ok'] for d in info) / n:.3f}")
    report("labels", info, [1.0 if d["label_ok"] else 0.0 for d in info], [0.5] * n)
    report("exact shape", info, [float(d["sc"]) for d in info], [float(d["sr"]) for d in info])
    (sc, mc), (sr, mr) = sft_logps(pairs)
    report("SFT logp sum", info, sc.tolist(), sr.tolist())
    report("SFT logp mean", info, mc.tolist(), mr.tolist())
    for path in sys.argv[1:]:
        a, b = rm_scores(pairs, path)
        report(f"RM {path}", info, a.tolist(), b.tolist())
        if load_reward_model(path)[0].logp_feature:
            for part in ("head", "logp"):
                a, b = rm_scores(pairs, path, part)
                report(f"RM {path} [{part} term only]", info, a.tolist(), b.tolist())


if __name__ == "__main__":
    main()
