"""`tinyrlhf compare`: every method on one task, the same label budget and seeds, evaluated the same way, next
to the baselines a method has to beat.

    tinyrlhf compare --task family_tree --methods sft,ppo,dpo,ipo,kto --seeds 3 --budget 2560
    tinyrlhf compare --task family_tree --methods sft,ppo,dpo,kto --seeds 5 --trials 3   # tuned, with frontiers

For each seed s it runs what is missing, in order: the task data (seed s); SFT; the preference labels (stage
"pairs": the SFT model's own samples judged by the simulated annotators, as InstructGPT collected comparisons);
the reward model (when a method needs one), trained on THOSE labels, so reward-model methods and offline
methods consume the same preference labels (`--labels`, default = `--budget`); then every method from that
seed's SFT model for the same number of training prompts (`--budget`); then the baselines (the best constant
or heuristic answer, SFT sharpened by temperature, best-of-n against the reward model) and an evaluation of
every final model on the held-out prompts. With `--trials K` every method trains K times over its own key
hyper-parameter (`SWEEP`), each trial is scored on a validation split kept apart from the evaluation prompts,
and each method is compared at its best-on-validation setting; all trials draw the reward-KL frontier.
Every finished run is reused and an interrupted one resumes, so running the command again continues.
Layout: OUT/data-seedS/, OUT/pairs-seedS/, OUT/seedS/<run>/, OUT/seedS/baselines.json, OUT/results.{csv,json},
OUT/report.md, OUT/*.png.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from ..errors import ConfigError, TinyRLHFError
from . import stages as compare_stages
from .report import collect, write_report
from .spec import METHODS, SWEEP, CompareSpec, is_offline, needs_rm, parse_spec, runs_of

STAGE_WEIGHT = {"data": 0.1, "sft": 1.0, "reward": 1.0, "pairs": 0.5, "eval": 0.15, "baselines": 0.4,
                "decode": 0.3}  # for the ETA
METHOD_WEIGHT = {"ppo": 1.0, "rloo": 1.0, "grpo": 1.0, "online-dpo": 0.5}


def needs_reward_model(spec: CompareSpec) -> bool:
    return any(needs_rm(m) for m in spec.methods if m != "sft") or bool(spec.best_of)


def plan(spec: CompareSpec) -> list[tuple[int, str]]:
    """(seed, stage) in the order they run. A stage is data, sft, pairs, reward, a run name, baselines,
    eval:<run name> or decode:<run name> (the run at every temperature of --temperatures)."""
    needs_rm = needs_reward_model(spec)
    offline = any(is_offline(m) for m in spec.methods if m != "sft")
    needs_pairs = (spec.offline_data == "policy" and offline) or (needs_rm and spec.rm_data == "policy")
    stages = []
    for seed in range(spec.seeds):
        stages += [(seed, "data"), (seed, "sft")] + ([(seed, "pairs")] if needs_pairs else [])
        stages += [(seed, "reward")] if needs_rm else []
        runs = [name for m in spec.methods if m != "sft" for name, _ in runs_of(spec, m)]
        stages += [(seed, r) for r in runs]
        stages += [(seed, "baselines")] + [(seed, f"eval:{r}") for r in ["sft", *runs]]
        stages += [(seed, f"decode:{r}") for r in ["sft", *runs]] if spec.temperatures else []
    return stages


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _weight(stage: str) -> float:
    head = stage.split(":")[0].split("@")[0]
    return STAGE_WEIGHT.get(head, METHOD_WEIGHT.get(head, 0.3))


def write_spec(spec: CompareSpec):
    """OUT/compare.json: what this comparison is. A rerun with other settings that change what the stages
    train is refused (the finished runs would no longer match the report's words)."""
    path = os.path.join(spec.out, "compare.json")
    now = json.loads(json.dumps(asdict(spec)))
    ignore = {"out", "methods", "seeds", "eval_prompts", "val_prompts", "best_of", "trials", "grids", "temperatures",
              "tune"}
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        diff = sorted(k for k in now if k not in ignore and before.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"{spec.out} holds a comparison with other settings ({', '.join(diff)}: "
                              f"{', '.join(f'{before.get(k)!r} -> {now[k]!r}' for k in diff)}); use another --out")
    os.makedirs(spec.out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(now, f, indent=2)
    os.replace(tmp, path)


def run_compare(spec: CompareSpec, log=print) -> dict:
    """Run every missing stage, then write results.csv / results.json and the report; returns the results."""
    stages = plan(spec)
    weight = [_weight(s) for _, s in stages]
    total, done_w, t0 = sum(weight), 0.0, time.time()
    worked_w = worked_s = 0.0  # stages that really ran (reused ones take no time and would fool the ETA)
    write_spec(spec)
    for i, ((seed, stage), w) in enumerate(zip(stages, weight), 1):
        t = time.time()
        try:
            summary = compare_stages.run_stage(spec, seed, stage)
        except TinyRLHFError as e:
            raise type(e)(f"compare stage '{stage}' (seed {seed}): {e}") from None
        if isinstance(summary, dict) and summary.get("finished") is False:
            raise TinyRLHFError(f"stage '{stage}' (seed {seed}) stopped early; run the command again to continue")
        done_w += w
        took = time.time() - t
        if took > 0.5:
            worked_w, worked_s = worked_w + w, worked_s + took
        eta = worked_s / worked_w * (total - done_w) if worked_w else 0.0
        log(f"[{i}/{len(stages)}] seed {seed} {stage:16s} {took:6.1f} s   "
            f"elapsed {_fmt(time.time() - t0)}   ETA {_fmt(eta)}{compare_stages.note(stage, summary)}")
    results = collect(spec)
    report = write_report(spec, results)
    return {"results": results, "report": report}


__all__ = ["CompareSpec", "METHODS", "SWEEP", "parse_spec", "plan", "runs_of", "run_compare"]
