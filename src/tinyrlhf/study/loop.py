"""`tinyrlhf loop`: iterated RLHF. Each round samples the current policy (and, mixed in, the earlier rounds'
policies), gets those answers labelled (simulated annotators, or people through `tinyrlhf label`), retrains
the reward model on every label so far, trains the policy from where the last round left it, and evaluates.

    tinyrlhf loop --task positive_review --rounds 3 --labels simulated --seeds 2 --out runs/loop
    tinyrlhf loop --task positive_review --rounds 3 --labels simulated --seeds 2 --out runs/loop --static-rm
    tinyrlhf loop --task positive_review --rounds 2 --labels human --db feedback.db --out runs/loop-h

With --static-rm (loop.refresh_rm=false) it runs the baseline of the iterated-RLHF question (Bai et al. 2022,
§4.5): one reward model trained once on as many labels as all rounds together, all of them on SFT samples,
and the policy trained for the same rounds and steps against it. Both conditions share the seeds' task data
and SFT model when given the same --out. The data and SFT stages are `tinyrlhf compare`'s (stages.py):
OUT/data-seedS/ and OUT/seedS/sft/. Each condition then writes, per seed and round,
OUT/seedS/COND/round-R/{labels,rm-data,reward,policy}/ and per condition OUT/report-COND.{md,json,png}
(COND = the method, plus -static-rm). Every finished piece is reused: the same command continues an
interrupted loop, and a larger --rounds adds rounds to a finished one.

The policy of round r starts from round r-1's final model and its KL penalty holds it near that start (the
online loops' reference is their starting model); the report's KL is always measured to the SFT model.
"""
from __future__ import annotations

import importlib
import os
import time

from .. import config as C
from ..errors import TinyRLHFError
from .loop_labels import (finish_labels, human_labels, merged_data_dir, round_prompts, sample_pairs,
                          simulated_labels, train_prompts)
from .loop_report import evaluate_round, note, write_report
from .loop_spec import LoopConfig, LoopSpec, parse_loop, reward_dir, round_dir, write_spec
from .spec import METHODS, paths, read_json, stage_config, tracking_args
from .stages import run_stage

def _policy_models(spec: LoopSpec, seed: int, r: int) -> list[tuple[str, str]]:
    """(name, model dir) of SFT and the policies of rounds 1..r-1, oldest first."""
    return [("sft", paths(spec.compare, seed)["sft_final"])] + [
        (f"round-{i}", os.path.join(round_dir(spec, seed, i), "policy", "final")) for i in range(1, r)]


def _common(spec: LoopSpec, seed: int, r: int) -> list[str]:
    p = paths(spec.compare, seed)
    return [f"seed={seed * 1000 + r}", f"data.task={spec.task}", f"data.dir={p['data']}", f"data.seed={seed}",
            "train.progress=false", "eval.n_prompts=0", "train.eval_every=0"]


def labels_stage(spec: LoopSpec, seed: int, r: int, log) -> dict:
    """ROUND/labels: this round's labelled pairs (refresh: labels_per_round on the current and earlier
    policies; static: in round 1 only, rounds x labels_per_round on SFT samples)."""
    d = os.path.join(round_dir(spec, seed, r), "labels")
    if os.path.isfile(os.path.join(d, "manifest.json")):
        return {**read_json(os.path.join(d, "manifest.json")), "reused": True}
    from ..tasks import get_task
    cfg, base = spec.loop, paths(spec.compare, seed)["data"]
    n = cfg.labels_per_round if cfg.refresh_rm else cfg.labels_per_round * spec.rounds
    start = (r - 1) * cfg.labels_per_round if cfg.refresh_rm else 0
    prompts = round_prompts(train_prompts(base), start, n)
    models = _policy_models(spec, seed, r) if cfg.refresh_rm else _policy_models(spec, seed, 1)
    items = sample_pairs(models, prompts, mix_earlier=cfg.mix_earlier, seed=seed * 1000 + r,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    if not items:
        raise TinyRLHFError(f"every one of the {n} prompts gave two equal answers: no pairs to label")
    task = get_task(spec.task)
    if spec.labels == "simulated":
        pairs = simulated_labels(items, base, task, seed * 1000 + r)
    else:
        wanted = min(cfg.human_labels or cfg.labels_per_round, len(items))
        pairs = human_labels(items, spec.db, f"{spec.cond}-seed{seed}-round-{r}", wanted, d, task,
                             poll_s=cfg.poll_s, wait_s=cfg.wait_s, log=log)
    return finish_labels(d, pairs, {"round": r, "seed": seed, "labels": spec.labels, "items": len(items),
                                    "prompts": n, "models": [m for m, _ in models]})


def _label_dirs(spec: LoopSpec, seed: int, r: int) -> list[str]:
    last = r if spec.loop.refresh_rm else 1
    return [os.path.join(round_dir(spec, seed, i), "labels") for i in range(1, last + 1)]


def reward_stage(spec: LoopSpec, seed: int, r: int) -> dict:
    """ROUND/reward: a reward model from the SFT model on every label so far (refresh), or round 1's (static)."""
    from ..train.reward import run_reward
    rd = round_dir(spec, seed, r)
    data = os.path.join(rd, "rm-data")
    n = merged_data_dir(paths(spec.compare, seed)["data"], _label_dirs(spec, seed, r), data)
    sft = paths(spec.compare, seed)["sft_final"]
    args = [f"out_dir={os.path.join(rd, 'reward')}", f"model.path={sft}", f"normalize_on={sft}",
            *_common(spec, seed, r), f"data.dir={data}", f"data.max_train={n}",
            *tracking_args(spec.out, seed, f"{spec.cond}-round{r}-reward")]
    return run_reward(stage_config(spec.compare, "reward", "reward", C.RewardConfig, args))


def policy_stage(spec: LoopSpec, seed: int, r: int) -> dict:
    """ROUND/policy: `method` from the previous round's policy for loop.policy_steps steps."""
    config_name, cls, loop, extra, _ = METHODS[spec.method]
    rd, start = round_dir(spec, seed, r), _policy_models(spec, seed, r)[-1][1]
    args = [f"out_dir={os.path.join(rd, 'policy')}", f"model.path={start}", *_common(spec, seed, r), *extra,
            *tracking_args(spec.out, seed, f"{spec.cond}-round{r}-policy")]
    if spec.needs_rm:
        args.append(f"reward={reward_dir(spec, seed, r)}")
    else:  # DPO learns from every label so far, with the round's starting policy as its reference
        data = os.path.join(rd, "rm-data")
        merged_data_dir(paths(spec.compare, seed)["data"], _label_dirs(spec, seed, r), data)
        args += [f"data.dir={data}", "data.max_train=0", f"ref_cache_dir={os.path.join(spec.out, 'cache')}"]
    cfg = stage_config(spec.compare, config_name, spec.method, cls, args)
    steps = spec.loop.policy_steps
    cfg = C.replace(cfg, **{"train.max_steps": steps, "train.save_every": max(1, steps // 4),
                           "train.log_every": max(1, steps // 20)})
    module, fn = loop.split(":")
    return getattr(importlib.import_module(f"..train.{module}", __package__), fn)(cfg)


def plan(spec: LoopSpec) -> list[tuple[int, int, str]]:
    """(seed, round, stage) in the order they run; round 0 holds the data and SFT stages and SFT's evaluation."""
    out = []
    for s in range(spec.seeds):
        out += [(s, 0, "data"), (s, 0, "sft"), (s, 0, "eval")]
        for r in range(1, spec.rounds + 1):
            first = spec.loop.refresh_rm or r == 1
            out += [(s, r, "labels")] if first else []
            out += [(s, r, "reward")] if spec.needs_rm and first else []
            out += [(s, r, "policy"), (s, r, "eval")]
    return out


def run_loop(spec: LoopSpec, log=print) -> dict:
    """Run every missing stage; after each evaluated round, rewrite the report. Returns the report dict."""
    write_spec(spec)
    t0 = time.time()
    stages = plan(spec)
    for i, (seed, r, stage) in enumerate(stages, 1):
        t = time.time()
        try:
            if stage in ("data", "sft"):
                summary = run_stage(spec.compare, seed, stage)
            elif stage == "labels":
                summary = labels_stage(spec, seed, r, log)
            elif stage == "reward":
                summary = reward_stage(spec, seed, r)
            elif stage == "policy":
                summary = policy_stage(spec, seed, r)
            else:
                summary = evaluate_round(spec, seed, r)
        except TinyRLHFError as e:
            raise type(e)(f"loop seed {seed} round {r} stage '{stage}': {e}") from None
        if isinstance(summary, dict) and summary.get("finished") is False:
            raise TinyRLHFError(f"loop seed {seed} round {r} stage '{stage}' stopped early; run the command "
                                "again to continue")
        log(f"[{i}/{len(stages)}] seed {seed} round {r} {stage:7s} {time.time() - t:6.1f} s   "
            f"elapsed {(time.time() - t0) / 60:5.1f} min{note(stage, summary)}")
        if stage == "eval" and r > 0:
            write_report(spec)
    return write_report(spec)


__all__ = ["LoopSpec", "LoopConfig", "parse_loop", "plan", "run_loop"]
