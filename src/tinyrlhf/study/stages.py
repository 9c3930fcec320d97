"""The stages of `tinyrlhf compare` (see compare.py; its spec and layout in spec.py): each runs one piece for one seed, or reuses it when it is
already finished, and returns its summary."""
from __future__ import annotations

import importlib
import os

from .. import config as C
from .baselines import run_baselines
from .decoding import decode_run
from .run_eval import evaluate_run
from .spec import (METHODS, POLICY_PAIRS, CompareSpec, is_offline, method_of, needs_rm, paths, runs_of, stage_config,
                   stage_overrides, tracking_args)


def data_settings(spec: CompareSpec) -> dict:
    """The data stage's task and data settings: --config-dir's data.yaml (flat `key: value`, e.g. family_tree's
    max_children: 2), then the `data.key=value` overrides; write_task_data names any unknown key."""
    import yaml
    from ..errors import ConfigError
    path, out = os.path.join(spec.config_dir, "data.yaml"), {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            out = yaml.safe_load(f) or {}
        if not isinstance(out, dict):
            raise ConfigError(f"{path}: expected 'key: value' lines (task and data settings)")
    return {**out, **dict(C.parse_overrides(stage_overrides(spec, "data")))}


def _steps_for_budget(cfg, budget: int) -> int:
    """max_steps so that max_steps x training prompts per step ~= budget."""
    per_step = cfg.rollout.prompts_per_step if hasattr(cfg, "rollout") else cfg.train.batch_size * cfg.train.grad_accum
    return max(1, round(budget / per_step))


def run_stage(spec: CompareSpec, seed: int, stage: str) -> dict:
    """Run one stage (reused when finished); returns its summary (or eval result)."""
    p = paths(spec, seed)
    common = [f"seed={seed}", f"data.task={spec.task}", f"data.dir={p['data']}", f"data.seed={seed}",
              "train.progress=false", "eval.n_prompts=0", "train.eval_every=0"]
    if stage == "data":
        from ..tasks.generate import write_task_data
        if os.path.isfile(os.path.join(p["data"], "manifest.json")):
            return {"reused": True}
        return write_task_data(spec.task, p["data"], seed=seed, **data_settings(spec))
    if stage == "sft":
        from ..train.sft import run_sft
        # SFT keeps its own before/after gold evaluation (the untrained model's score is only known here)
        return launched(spec, run_sft, stage_config(spec, "sft", "sft", C.SFTConfig,
                                                [f"out_dir={p['sft']}", *common, "eval.n_prompts=200",
                                                 *tracking_args(spec.out, seed, "sft")]))
    if stage == "pairs":
        from .policy_data import write_policy_data
        if os.path.isfile(os.path.join(p["pairs"], "manifest.json")):
            return {"reused": True}
        from ..tasks import answer_tokens
        opts = {**POLICY_PAIRS, "max_new_tokens": answer_tokens(spec.task),
                **dict(C.parse_overrides(stage_overrides(spec, "pairs")))}
        return write_policy_data(p["sft_final"], p["data"], p["pairs"], seed=seed, n_prompts=spec.n_labels, **opts)
    if stage == "reward":
        from ..train.reward import run_reward
        args = [f"out_dir={p['reward']}", f"model.path={p['sft_final']}", f"normalize_on={p['sft_final']}", *common,
                f"logp_feature={str(spec.rm_logp).lower()}", *tracking_args(spec.out, seed, "reward")]
        if spec.rm_data == "policy":  # the same preference labels the offline methods learn from
            args += [f"data.dir={p['pairs']}", f"data.max_train={spec.n_labels}"]
        else:
            args += [f"data.max_train={spec.n_labels}"]
        return launched(spec, run_reward, stage_config(spec, "reward", "reward", C.RewardConfig, args))
    if stage == "baselines":
        return run_baselines(spec, seed)
    if stage.startswith("eval:"):
        return evaluate_run(spec, seed, stage.split(":", 1)[1])
    if stage.startswith("decode:"):
        return decode_run(spec, seed, stage.split(":", 1)[1])
    return _train(spec, seed, stage, p, common)


def _train(spec: CompareSpec, seed: int, run: str, p: dict, common: list[str]) -> dict:
    method = method_of(run)
    config_name, cls, loop, extra, _ = METHODS[method]
    if is_offline(method):
        if spec.offline_data == "policy":
            common = [c if not c.startswith("data.dir=") else f"data.dir={p['pairs']}" for c in common]
        common = [*common, f"data.max_train={spec.n_labels}"]  # offline methods see at most the label budget
    trial = dict(runs_of(spec, method))[run]
    args = [f"out_dir={os.path.join(p['root'], run)}", f"model.path={p['sft_final']}", *common, *extra,
            *tracking_args(spec.out, seed, run)]
    if needs_rm(method):
        args.append(f"reward={p['reward']}")
    cfg = stage_config(spec, config_name, method, cls, args)
    steps = _steps_for_budget(cfg, spec.budget)
    if "train.epochs" in trial:  # a trial's passes over the labels replace --budget (offline methods only)
        steps = _steps_for_budget(cfg, round(trial["train.epochs"] * spec.n_labels))
    cfg = C.replace(cfg, **{"train.max_steps": steps, "train.save_every": max(1, steps // 4),
                           "train.log_every": max(1, steps // 60), **trial})
    if "train.epochs" in trial:  # steps from the labels there are (coin flips and ties dropped), not the budget
        cfg = C.replace(cfg, **{"train.max_steps": 0})
    import sys
    for line in C.loss_warnings(cfg):  # a loss-sensitive key left at another loss's value (see config/offline.py)
        print(line, file=sys.stderr)
    module, fn = loop.split(":")
    return launched(spec, getattr(importlib.import_module(f"..train.{module}", __package__), fn), cfg)


def launched(spec: CompareSpec, loop, cfg) -> dict:
    """`loop(cfg)` in this process, or with --nproc N > 1 under torchrun (dist.torchrun)."""
    if spec.nproc <= 1:
        return loop(cfg)
    from ..dist import torchrun
    return torchrun(cfg, spec.nproc)


def note(stage: str, summary) -> str:
    """What a stage measured, for its progress line."""
    if not isinstance(summary, dict):
        return ""
    if stage == "sft" and "gold/mean" in summary:
        return (f"   gold {summary.get('before/gold/mean', float('nan')):.3f} -> {summary['gold/mean']:.3f} "
                f"(greedy {summary.get('gold/greedy', float('nan')):.3f})")
    if stage == "reward" and "eval/accuracy_gold" in summary:
        return (f"   held-out accuracy vs gold {summary['eval/accuracy_gold']:.3f}, "
                f"vs labels {summary.get('eval/accuracy_labels', float('nan')):.3f}")
    if stage == "pairs" and "pairs" in summary:
        return f"   {summary['pairs']} pairs on SFT samples"
    if stage == "baselines" and "best_of" in summary:
        bon = ", ".join(f"best-of-{n} {v['gold']:.3f}" for n, v in summary["best_of"].items())
        return f"   SFT greedy {summary['temperature']['0']['gold']:.3f}, {bon}, heuristic {summary['heuristic']['gold']:.3f}"
    if stage.startswith("decode:") and "temperatures" in summary:
        return "   gold at T=" + ", ".join(f"{t} {sum(r['eval']) / len(r['eval']):.3f}"
                                          for t, r in summary["temperatures"].items())
    if stage.startswith("eval:") and "gold" in summary:
        return f"   gold {summary['gold']['mean']:.3f} [{summary['gold']['low']:.3f}, {summary['gold']['high']:.3f}]"
    return ""


