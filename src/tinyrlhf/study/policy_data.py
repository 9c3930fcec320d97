"""Preference data on the policy's own samples: the SFT model answers each training prompt k times and the
same simulated annotators (the pool of the base task data) judge two different answers.

    tinyrlhf data family_tree --out runs/data/ft-sftpairs --from-model runs/family_tree/sft/final \\
        --base runs/data/family_tree-seed0 n_prompts=4000 k=4

This is how InstructGPT collected its comparisons, and what DPO assumes when it sets π_ref = π_SFT
(Rafailov et al. 2023, §4): the pairs come from the reference policy, not from scripted candidates.
Written to `out_dir`: pairs.jsonl (two distinct samples of a prompt, ordered by an annotator's
Bradley-Terry draw), binary.jsonl (one sample per prompt, labelled around the median sample gold), and
sft.jsonl / eval_prompts.jsonl / eval_pairs.jsonl / rankings.jsonl copied from the base directory, so
every loop can point data.dir here. A prompt whose k samples are all identical gives no pair (counted).
The manifest's `policy_data` states the labels' agreement with gold (`agreement_measured`) and between
two annotators (`inter_annotator_measured`: a second, distinct annotator judges the same pairs with its
own random stream; its labels are not written), each next to what the pool predicts on these pairs
(`*_expected`: the pool was calibrated on the base data's scripted pairs, whose gold gaps differ), all
over the pairs whose two samples differ in gold.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics

import torch

from ..diskio import write_text
from ..data.records import BinaryRecord, PairRecord, iter_jsonl, write_records
from ..errors import ConfigError
from ..tasks import get_task
from ..tasks.annotators import Annotator, AnnotatorPool, measured_agreement, measured_inter_agreement

COPIED = ("sft.jsonl", "eval_prompts.jsonl", "eval_pairs.jsonl", "rankings.jsonl")


def annotator_pool(manifest: dict) -> AnnotatorPool:
    ann = manifest["annotators"]
    return AnnotatorPool(tuple(Annotator(a["id"], a["tau"]) for a in ann["pool"]), ann["base_tau"])


def sample_k(model_dir: str, prompts: list[str], k: int, *, temperature: float, max_new_tokens: int,
             seed: int, batch_size: int = 64, precision: str = "auto") -> list[list[str]]:
    """k sampled completions per prompt from a model directory (the project's rollout engine)."""
    from ..loading import load_causal_lm
    from ..models import load_tokenizer
    from ..train.policy_eval import sample_groups

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_dir).to(device).eval()  # a model dir or an unmerged LoRA final/
    return sample_groups(model, load_tokenizer(model_dir), prompts, k, temperature=temperature,
                         max_new_tokens=max_new_tokens, seed=seed, device=device, precision=precision,
                         batch_size=batch_size)


def write_policy_data(model_dir: str, base_dir: str, out_dir: str, *, seed: int = 0, n_prompts: int = 4000,
                      k: int = 4, temperature: float = 1.0, max_new_tokens: int = 24) -> dict:
    manifest_path = os.path.join(base_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise ConfigError(f"--base '{base_dir}': no manifest.json (write it with `tinyrlhf data TASK --out DIR`)")
    if k < 2 or n_prompts < 1:
        raise ConfigError(f"need k >= 2 and n_prompts >= 1, got k={k}, n_prompts={n_prompts}")
    with open(manifest_path) as f:
        base = json.load(f)
    task = get_task(base["task"], **base["config"]["task"])
    pool = annotator_pool(base)
    distinct = list(dict.fromkeys(o["prompt"] for _, o in iter_jsonl(os.path.join(base_dir, "sft.jsonl"))))
    # More labels than distinct training prompts (positive_review has ~1,600): the prompts are labelled again,
    # each time on fresh samples, as InstructGPT collected several comparisons per prompt.
    prompts = (distinct * -(-n_prompts // len(distinct)))[:n_prompts]
    samples = sample_k(model_dir, prompts, k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)

    rng = random.Random(f"policy_data:{seed}")
    pairs, judged, singles, identical = [], [], [], 0
    for p, texts in zip(prompts, samples):
        singles.append((p, texts[0], task.gold_reward(p, texts[0])))
        distinct = list(dict.fromkeys(t for t in texts if t.strip()))
        if len(distinct) < 2:
            identical += 1
            continue
        a, b = rng.sample(distinct, 2)
        ga, gb = task.gold_reward(p, a), task.gold_reward(p, b)
        ann = pool.pick(rng)
        if not ann.prefers_first(ga, gb, rng):
            a, b, ga, gb = b, a, gb, ga
        pairs.append(PairRecord(p, a, b, None, {"annotator": ann.id, "gold_chosen": round(ga, 6),
                                                "gold_rejected": round(gb, 6), "source": "policy"}))
        judged.append((ann, round(ga, 6), round(gb, 6)))
    if not pairs:
        raise ConfigError(f"all {len(prompts)} prompts gave {k} identical samples: no pairs (raise k or temperature)")
    threshold = statistics.median(g for *_, g in singles)
    binary = []
    for p, c, g in singles:
        if not c.strip():
            continue
        ann = pool.pick(rng)
        binary.append(BinaryRecord(p, c, ann.is_good(g, threshold, rng),
                                   {"annotator": ann.id, "gold": round(g, 6), "threshold": round(threshold, 6)}))
    os.makedirs(out_dir, exist_ok=True)
    counts = {"pairs": write_records(os.path.join(out_dir, "pairs.jsonl"), pairs),
              "binary": write_records(os.path.join(out_dir, "binary.jsonl"), binary)}
    for name in COPIED:
        if os.path.isfile(os.path.join(base_dir, name)):
            shutil.copyfile(os.path.join(base_dir, name), os.path.join(out_dir, name))
    gaps = [(r.meta["gold_chosen"], r.meta["gold_rejected"]) for r in pairs]
    nonzero = [g for g in gaps if g[0] != g[1]]
    inter = (measured_inter_agreement(pool, judged, random.Random(f"policy_data:{seed}:second_judge"))
             if nonzero else None)
    info = {**base, "source_model": model_dir, "base_dir": base_dir, "policy_data": {
        "seed": seed, "k": k, "temperature": temperature, "prompts": len(prompts),
        "distinct_prompts": len(set(prompts)), "identical_samples": identical,
        "pairs": len(pairs), "zero_gap_pairs": len(gaps) - len(nonzero),
        "agreement_measured": measured_agreement(nonzero) if nonzero else None,
        "agreement_expected": pool.expected_agreement([c - r for c, r in nonzero]) if nonzero else None,
        "inter_annotator_measured": inter,
        "inter_annotator_expected": pool.expected_inter_agreement([c - r for c, r in nonzero]) if nonzero else None,
        "sample_gold_mean": statistics.fmean(g for *_, g in singles), "binary_threshold": threshold}}
    write_text(os.path.join(out_dir, "manifest.json"), json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {**counts, "identical_samples": identical, "agreement": info["policy_data"]["agreement_measured"],
            "inter_annotator": inter, "coin_flips": (len(gaps) - len(nonzero)) / len(gaps)}
