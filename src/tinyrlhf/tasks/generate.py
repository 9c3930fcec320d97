"""Write a built-in task's training and evaluation data in the project's JSONL formats.

    write_task_data("family_tree", "data/family_tree", seed=0, n_pairs=5000, generations=4)

Files written to `out_dir` (records from `tinyrlhf.data.records`):
    sft.jsonl           one deliberately imperfect demonstration per train prompt; meta: gold
    pairs.jsonl         2 candidates on a train prompt, ordered by an annotator's Bradley-Terry draw;
                        meta: annotator, gold_chosen, gold_rejected (zero-gap pairs are kept: a coin flip,
                        as real labelers face ties)
    rankings.jsonl      ranking_k candidates ordered best-first by a Plackett-Luce draw; meta: annotator, golds
    binary.jsonl        one candidate per train prompt, label drawn around the median candidate gold;
                        meta: annotator, gold, threshold
    eval_prompts.jsonl  eval prompts as sft-shaped lines; completion = the reference answer, or "" when the
                        task has none (positive_review). Read it with `iter_jsonl`, not
                        `read_records(kind="sft")`, which rejects empty completions. meta: has_reference
    eval_pairs.jsonl    2 candidates on an eval prompt judged by an annotator (gold in meta), zero gaps
                        excluded; meta: gold_chosen, gold_rejected -- for reward-model accuracy
    manifest.json       task, seed, config, sizes, annotator pool, gold stats, and the annotators' agreement:
                        inter_annotator_expected / _measured (two distinct annotators on the same pair;
                        the calibration target) and agreement_expected / _measured (with the gold order)

Every kind of record draws from its own seeded stream, so changing n_pairs leaves sft.jsonl unchanged,
and the same seed gives byte-identical files (nothing iterates over a set or reads the clock).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics

from ..diskio import DiskError, make_dirs, remove_quietly, write_text
from ..data.records import BinaryRecord, PairRecord, RankingRecord, SFTRecord, write_records
from ..errors import ConfigError
from . import get_task, task_config_keys
from .annotators import AnnotatorPool, measured_agreement, measured_inter_agreement


@dataclasses.dataclass(frozen=True)
class TaskDataConfig:
    n_train_prompts: int = 4000
    """Train prompts (one sft record each; pairs, rankings and binary cycle through them)."""
    n_eval_prompts: int = 200
    """Eval prompts (disjoint from train)."""
    n_pairs: int = 20000
    """Annotated preference pairs on train prompts."""
    n_rankings: int = 1000
    """Annotated K-way rankings on train prompts."""
    ranking_k: int = 4
    """Candidates per ranking."""
    n_binary: int = 4000
    """Binary (desirable / undesirable) labels on train prompts."""
    n_eval_pairs: int = 400
    """Held-out pairs on eval prompts, ordered by gold, for reward-model accuracy."""
    agreement: float = 0.73
    """Target expected agreement BETWEEN two distinct annotators of the pool on the same pair (InstructGPT's
    labelers agreed ~73 % with each other); each then agrees with the gold order more often (~81-82 % on
    the built-in tasks)."""
    n_annotators: int = 8
    """Annotators in the pool, each with its own noise level."""
    annotator_spread: float = 0.5
    """Annotator noise levels are base_tau * exp(spread * u), u uniform in [-1, 1]."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
        if self.n_train_prompts < 1 or self.n_eval_prompts < 1 or self.n_annotators < 1:
            raise ConfigError("n_train_prompts, n_eval_prompts and n_annotators must be >= 1")
        if min(self.n_pairs, self.n_rankings, self.n_binary, self.n_eval_pairs) < 0:
            raise ConfigError("record counts must be >= 0")
        if self.n_pairs < 1:
            raise ConfigError("n_pairs must be >= 1 (the annotators are calibrated on the pairs)")
        if self.ranking_k < 2:
            raise ConfigError(f"ranking_k must be >= 2, got {self.ranking_k}")
        if not 0.5 < self.agreement < 1.0:
            raise ConfigError(f"agreement must be in (0.5, 1), got {self.agreement}")
        if self.annotator_spread < 0:
            raise ConfigError(f"annotator_spread must be >= 0, got {self.annotator_spread}")


def _r(x: float) -> float:
    return round(x, 6)  # short, stable JSON numbers


def _mean(xs: list[float]) -> float | None:
    return _r(statistics.fmean(xs)) if xs else None


def task_of_data(data_dir: str, task_name: str):
    """The task as `data_dir` was written: get_task(task_name) with the task config in its manifest.json, so a
    run on data written with task overrides (e.g. max_children=2) is evaluated on prompts of the same kind.
    A directory without a manifest, or written for another task, gives the task's defaults."""
    path = os.path.join(data_dir, "manifest.json") if data_dir else ""
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("task") == task_name:
            return get_task(task_name, **(manifest.get("config") or {}).get("task", {}))
    return get_task(task_name)


def _best(task, prompts: list[str]) -> tuple[str, float]:
    from .baselines import best_baseline
    name, value = best_baseline(task, prompts)
    return name, _r(value)


def write_task_data(task_name: str, out_dir: str, seed: int = 0, **overrides) -> dict:
    """Write the task's data files to `out_dir`; return counts and the measured annotator agreement
    (`agreement`: with gold; `inter_annotator`: between two distinct annotators).
    `overrides` are TaskDataConfig fields and fields of the task's config."""
    data_keys = [f.name for f in dataclasses.fields(TaskDataConfig)]
    task_keys = task_config_keys(task_name)  # ConfigError for an unknown task
    bad = sorted(k for k in overrides if k not in data_keys and k not in task_keys)
    if bad:
        raise ConfigError(f"unknown override(s) {', '.join(bad)} for task data of {task_name} "
                          f"(valid: {', '.join(sorted(data_keys + task_keys))})")
    cfg = TaskDataConfig(**{k: v for k, v in overrides.items() if k in data_keys})
    task = get_task(task_name, **{k: v for k, v in overrides.items() if k in task_keys})
    stream = lambda what: random.Random(f"{task_name}:{seed}:{what}")  # noqa: E731
    gold = task.gold_reward

    train = task.prompts("train", cfg.n_train_prompts, seed)
    evals = task.prompts("eval", cfg.n_eval_prompts, seed)
    make_dirs(out_dir)
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731

    # 1. SFT: one imperfect demonstration per train prompt.
    rng = stream("sft")
    sft = []
    for p in train:
        demo = task.demonstration(p, rng)
        sft.append(SFTRecord(p, demo, {"gold": _r(gold(p, demo))}))

    # 2. Pairs: draw candidates first, calibrate the pool on THESE gold gaps, then draw the labels,
    #    so the expected inter-annotator agreement of pairs.jsonl is the target by construction.
    rng = stream("pairs")
    drawn = []
    for i in range(cfg.n_pairs):
        p = train[i % len(train)]
        a, b = task.candidates(p, 2, rng)
        drawn.append((p, a, b, _r(gold(p, a)), _r(gold(p, b))))
    try:
        pool = AnnotatorPool.calibrated([ga - gb for *_, ga, gb in drawn], cfg.agreement,
                                        cfg.n_annotators, cfg.annotator_spread, seed)
    except ConfigError as e:
        raise ConfigError(f"{task_name}: {e} (try more pairs)") from None
    rng = stream("pairs:judge")
    pairs, judged = [], []
    for p, a, b, ga, gb in drawn:
        ann = pool.pick(rng)
        if not ann.prefers_first(ga, gb, rng):
            a, b, ga, gb = b, a, gb, ga
        pairs.append(PairRecord(p, a, b, None, {"annotator": ann.id, "gold_chosen": ga, "gold_rejected": gb}))
        judged.append((ann, ga, gb))
    agreement = measured_agreement([(ga, gb) for _, ga, gb in judged])
    # A second, distinct annotator labels the same pairs with its own stream: only measured, never written.
    inter = measured_inter_agreement(pool, judged, stream("pairs:second_judge"))

    # 3. Rankings: a Plackett-Luce draw over ranking_k candidates.
    rng = stream("rankings")
    rankings = []
    for i in range(cfg.n_rankings):
        p = train[i % len(train)]
        cands = task.candidates(p, cfg.ranking_k, rng)
        golds = [_r(gold(p, c)) for c in cands]
        ann = pool.pick(rng)
        order = ann.rank(golds, rng)
        rankings.append(RankingRecord(p, tuple(cands[j] for j in order),
                                      {"annotator": ann.id, "golds": [golds[j] for j in order]}))

    # 4. Binary: threshold = median candidate gold, so about half the labels are "desirable".
    rng = stream("binary")
    singles = []
    for i in range(cfg.n_binary):
        p = train[i % len(train)]
        (c,) = task.candidates(p, 1, rng)
        singles.append((p, c, _r(gold(p, c))))
    threshold = _r(statistics.median([g for *_, g in singles])) if singles else 0.0
    binary = []
    for p, c, g in singles:
        ann = pool.pick(rng)
        binary.append(BinaryRecord(p, c, ann.is_good(g, threshold, rng),
                                   {"annotator": ann.id, "gold": g, "threshold": threshold}))

    # 5. Eval prompts with their reference answers ("" when the task has none, see the docstring).
    eval_prompts = []
    for p in evals:
        ref = task.reference_answer(p)
        eval_prompts.append(SFTRecord(p, ref or "", {"has_reference": ref is not None}))

    # 6. Eval pairs: labelled by the annotators like the training pairs (gold kept in meta), so a
    #    reward model is scored against both the noisy labels and the gold ordering; zero gold gaps
    #    are excluded (no right answer to measure accuracy on).
    rng, judge = stream("eval_pairs"), stream("eval_pairs:judge")
    eval_pairs = []
    for i in range(20 * cfg.n_eval_pairs):
        if len(eval_pairs) == cfg.n_eval_pairs:
            break
        p = evals[i % len(evals)]
        a, b = task.candidates(p, 2, rng)
        ga, gb = _r(gold(p, a)), _r(gold(p, b))
        if ga == gb:
            continue
        ann = pool.pick(judge)
        if not ann.prefers_first(ga, gb, judge):
            a, b, ga, gb = b, a, gb, ga
        eval_pairs.append(PairRecord(p, a, b, None, {"annotator": ann.id, "gold_chosen": ga,
                                                     "gold_rejected": gb}))

    # manifest.json is written last and marks complete data: an old one goes first (--force), and a failed
    # write (a full disk) removes what this call wrote, so no directory ever mixes old and new files
    remove_quietly(path("manifest.json"))
    written = []

    def put(name: str, write):
        written.append(path(name))
        try:
            return write(path(name))
        except DiskError as e:
            for p in written:
                remove_quietly(p)
            raise DiskError(f"{e}; the data files written so far were removed") from None
    counts = {key: put(name, lambda p, recs=recs: write_records(p, recs)) for key, name, recs in (
        ("sft", "sft.jsonl", sft), ("pairs", "pairs.jsonl", pairs), ("rankings", "rankings.jsonl", rankings),
        ("binary", "binary.jsonl", binary), ("eval_prompts", "eval_prompts.jsonl", eval_prompts),
        ("eval_pairs", "eval_pairs.jsonl", eval_pairs))}
    cand_golds = [g for *_, ga, gb in drawn for g in (ga, gb)]
    gaps = [ga - gb for *_, ga, gb in drawn]
    manifest = {
        "task": task_name, "seed": seed, "sizes": counts, "max_gold": task.max_gold,
        "config": {"data": dataclasses.asdict(cfg), "task": dataclasses.asdict(task.config)},
        "annotators": {"base_tau": _r(pool.base_tau),
                       "pool": [{"id": a.id, "tau": _r(a.tau)} for a in pool.annotators],
                       "inter_annotator_target": cfg.agreement,
                       "inter_annotator_expected": _r(pool.expected_inter_agreement(gaps)),
                       "inter_annotator_measured": _r(inter),
                       "agreement_expected": _r(pool.expected_agreement(gaps)),
                       "agreement_measured": _r(agreement),
                       "zero_gap_pairs": sum(ga == gb for *_, ga, gb in drawn),
                       "zero_gap_share": _r(_mean([float(ga == gb) for *_, ga, gb in drawn])),
                       "binary_threshold": threshold,
                       "binary_positive_share": _mean([float(r.label) for r in binary])},
        "gold": {"sft_mean": _mean([r.meta["gold"] for r in sft]),
                 "candidates_mean": _mean(cand_golds),
                 # the bar a learnt policy must clear: the best rule or trick of tasks/baselines.py on these prompts
                 "heuristic": dict(zip(("name", "mean"), _best(task, evals))),
                 "eval_reference_mean": _mean([gold(r.prompt, r.completion)
                                               for r in eval_prompts if r.completion])},
    }
    put("manifest.json", lambda p: write_text(p, json.dumps(manifest, indent=2, sort_keys=True) + "\n"))
    return {**counts, "agreement": agreement, "inter_annotator": inter,
            "coin_flips": manifest["annotators"]["zero_gap_share"], "demonstrations_gold": manifest["gold"]["sft_mean"],
            "heuristic": manifest["gold"]["heuristic"]}
