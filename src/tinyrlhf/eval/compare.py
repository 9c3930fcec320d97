"""`tinyrlhf compare`: every method on one task, the same budget and seeds, evaluated the same way.

    tinyrlhf compare --task family_tree --methods sft,ppo,dpo,ipo,kto --seeds 2 --budget 4800

For each seed s it runs what is missing, in order: the task data (seed s), SFT, the reward model (when a
method needs one), the offline methods' preference data (stage "pairs": the SFT model's own samples judged
by the simulated annotators, as InstructGPT collected comparisons; --offline-data task uses the task's
scripted candidate pairs instead), then each method from that seed's SFT model, each for the same number of training
prompts (`--budget`: preference pairs or binary examples for offline methods, rollout prompts for online
ones). Every finished run is reused, an interrupted one resumes from its checkpoint, so running the
command again after an interruption continues where it stopped. Each final model is scored with
`tinyrlhf eval` against that seed's SFT model (gold judge) and the results and report are written.
Layout: OUT/data-seedS/, OUT/seedS/<stage>/ (run dirs), OUT/results.{csv,json}, OUT/report.md, OUT/*.png.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from .. import config as C
from ..errors import ConfigError, TinyRLHFError

# method -> (base config file name, config class, loop "module:function", extra overrides, needs a reward model)
METHODS = {
    "ppo": ("ppo", C.PPOConfig, "ppo:run_ppo", [], True),
    "rloo": ("rloo", C.GroupConfig, "group:run_group", ["algo=rloo"], True),
    "grpo": ("grpo", C.GroupConfig, "group:run_group", ["algo=grpo"], True),
    "online-dpo": ("online_dpo", C.OnlineDPOConfig, "online_dpo:run_online_dpo", [], True),
    "kto": ("kto", C.KTOConfig, "kto:run_kto", [], False),
    **{loss: ("dpo" if loss != "ipo" else "ipo", C.PreferenceConfig, "preference:run_preference", [f"loss={loss}"],
              False) for loss in ("dpo", "ipo", "cdpo", "hinge", "simpo", "orpo")},
}
STAGE_WEIGHT = {"data": 0.1, "sft": 1.0, "reward": 1.0, "pairs": 0.5, "eval": 0.15}  # rough relative cost (ETA)
POLICY_PAIRS = {"k": 2, "temperature": 1.0, "max_new_tokens": 24}  # defaults of the "pairs" stage
METHOD_WEIGHT = {"ppo": 1.0, "rloo": 1.0, "grpo": 1.0, "online-dpo": 0.5}


@dataclass(frozen=True)
class CompareSpec:
    task: str
    methods: tuple[str, ...]
    seeds: int
    out: str
    budget: int = 4800
    config_dir: str = ""
    eval_prompts: int = 200
    overrides: tuple[str, ...] = ()  # "stage.key=value", e.g. "sft.train.max_steps=600", "ppo.kl.target=2"
    offline_data: str = "policy"  # offline methods learn from: "policy" = SFT samples judged by the annotators
    #                               (stage "pairs"), "task" = the task's scripted candidate pairs


def parse_spec(task: str, methods: str, seeds: int, out: str, budget: int, config_dir: str, eval_prompts: int,
               overrides: list[str], offline_data: str = "policy") -> CompareSpec:
    from ..tasks import task_names
    if task not in task_names():
        raise ConfigError(f"unknown task '{task}' (valid: {', '.join(task_names())})")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m != "sft" and m not in METHODS]
    if bad or not names:
        raise ConfigError(f"unknown method(s) {', '.join(bad) or '(none)'} (valid: sft, {', '.join(METHODS)})")
    if seeds < 1 or budget < 1 or eval_prompts < 1:
        raise ConfigError("--seeds, --budget and --eval-prompts must be >= 1")
    config_dir = config_dir or os.path.join("configs", task)
    if offline_data not in ("policy", "task"):
        raise ConfigError(f"--offline-data must be 'policy' or 'task', got '{offline_data}'")
    stages = {"data", "sft", "reward", "pairs", *METHODS}
    for o in overrides:
        stage = o.split(".", 1)[0]
        if "=" not in o or "." not in o.split("=", 1)[0] or stage not in stages:
            raise ConfigError(f"override '{o}': expected STAGE.key=value with STAGE one of {', '.join(sorted(stages))}")
    if "sft" not in names:
        names.insert(0, "sft")  # the baseline every comparison is made against
    return CompareSpec(task, tuple(dict.fromkeys(names)), seeds, out, budget, config_dir, eval_prompts,
                       tuple(overrides), offline_data)


def _stage_overrides(spec: CompareSpec, stage: str) -> list[str]:
    return [o.split(".", 1)[1] for o in spec.overrides if o.split(".", 1)[0] == stage]


def _config(spec: CompareSpec, stage: str, cls, extra: list[str]):
    path = os.path.join(spec.config_dir, f"{stage}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"no config for stage '{stage}': {path} is missing (--config-dir)")
    return C.load_config(cls, path, extra + _stage_overrides(spec, stage))


def _steps_for_budget(cfg, budget: int) -> int:
    """max_steps so that max_steps x training prompts per step ~= budget."""
    per_step = cfg.rollout.prompts_per_step if hasattr(cfg, "rollout") else cfg.train.batch_size * cfg.train.grad_accum
    return max(1, round(budget / per_step))


def plan(spec: CompareSpec) -> list[tuple[int, str]]:
    needs_rm = any(METHODS[m][4] for m in spec.methods if m != "sft")
    needs_pairs = spec.offline_data == "policy" and any(not METHODS[m][4] for m in spec.methods if m != "sft")
    stages = []
    for seed in range(spec.seeds):
        stages += [(seed, "data"), (seed, "sft")] + ([(seed, "reward")] if needs_rm else [])
        stages += [(seed, "pairs")] if needs_pairs else []
        stages += [(seed, m) for m in spec.methods if m != "sft"]
        stages += [(seed, f"eval:{m}") for m in spec.methods]
    return stages


def run_stage(spec: CompareSpec, seed: int, stage: str) -> dict:
    """Run one stage (reused when finished); returns its summary (or eval result)."""
    import importlib

    root = os.path.join(spec.out, f"seed{seed}")
    data_dir = os.path.join(spec.out, f"data-seed{seed}")
    sft_final = os.path.join(root, "sft", "final")
    common = [f"seed={seed}", f"data.task={spec.task}", f"data.dir={data_dir}", "data.seed=" + str(seed),
              "train.progress=false", "eval.n_prompts=0", "train.eval_every=0"]
    if stage == "data":
        from ..tasks.generate import write_task_data
        if os.path.isfile(os.path.join(data_dir, "manifest.json")):
            return {"reused": True}
        kwargs = dict(C.parse_overrides(_stage_overrides(spec, "data")))
        return write_task_data(spec.task, data_dir, seed=seed, **kwargs)
    if stage == "sft":
        from ..train.sft import run_sft
        # SFT keeps its own before/after gold evaluation (the untrained model's score is only known here)
        return run_sft(_config(spec, "sft", C.SFTConfig, [f"out_dir={root}/sft", *common, "eval.n_prompts=200"]))
    if stage == "reward":
        from ..train.reward import run_reward
        return run_reward(_config(spec, "reward", C.RewardConfig, [
            f"out_dir={root}/reward", f"model.path={sft_final}", f"normalize_on={sft_final}", *common]))
    pairs_dir = os.path.join(spec.out, f"pairs-seed{seed}")
    if stage == "pairs":
        from ..tasks.policy_data import write_policy_data
        if os.path.isfile(os.path.join(pairs_dir, "manifest.json")):
            return {"reused": True}
        opts = {**POLICY_PAIRS, **dict(C.parse_overrides(_stage_overrides(spec, "pairs")))}
        return write_policy_data(sft_final, data_dir, pairs_dir, seed=seed, n_prompts=spec.budget, **opts)
    if stage.startswith("eval:"):
        return _evaluate(spec, seed, stage.split(":", 1)[1])
    config_name, cls, loop, extra, needs_rm = METHODS[stage]
    if not needs_rm and spec.offline_data == "policy":
        common = [c if not c.startswith("data.dir=") else f"data.dir={pairs_dir}" for c in common]
    args = [f"out_dir={root}/{stage}", f"model.path={sft_final}", *common, *extra]
    if needs_rm:
        args.append(f"reward={root}/reward")
    cfg = _config(spec, config_name, cls, args)
    steps = _steps_for_budget(cfg, spec.budget)
    cfg = C.replace(cfg, **{"train.max_steps": steps, "train.save_every": max(1, steps // 4),
                           "train.log_every": max(1, steps // 60)})
    module, fn = loop.split(":")
    return getattr(importlib.import_module(f"..train.{module}", __package__), fn)(cfg)


def _evaluate(spec: CompareSpec, seed: int, method: str) -> dict:
    """`tinyrlhf eval` of one final model against the seed's SFT model (cached in the run dir)."""
    from .evaluate import EvalSettings, evaluate_model, write_result
    root = os.path.join(spec.out, f"seed{seed}")
    run_dir = os.path.join(root, method)
    out = os.path.join(run_dir, f"eval-{spec.task}.json")
    settings = EvalSettings(n_prompts=spec.eval_prompts, seed=seed, data_seed=seed)
    if os.path.isfile(out):
        with open(out) as f:
            cached = json.load(f)
        if cached.get("settings") == settings.__dict__:
            return cached
    reward = os.path.join(root, "reward") if os.path.isdir(os.path.join(root, "reward", "final")) else ""
    reference = "" if method == "sft" else os.path.join(root, "sft")
    result = evaluate_model(run_dir, spec.task, reward=reward, reference=reference, settings=settings)
    write_result(result, out)
    return {k: v for k, v in result.items() if k != "samples"}


def _note(stage: str, summary) -> str:
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
    if stage.startswith("eval:") and "gold" in summary:
        return f"   gold {summary['gold']['mean']:.3f} [{summary['gold']['low']:.3f}, {summary['gold']['high']:.3f}]"
    return ""


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_compare(spec: CompareSpec, log=print) -> dict:
    """Run every missing stage, then write results.csv / results.json and the report; returns the results."""
    from .report import collect, write_report

    stages = plan(spec)
    weight = [STAGE_WEIGHT.get(s.split(":")[0], METHOD_WEIGHT.get(s, 0.3)) for _, s in stages]
    total, done_w, t0 = sum(weight), 0.0, time.time()
    worked_w = worked_s = 0.0  # stages that really ran (reused ones take no time and would fool the ETA)
    os.makedirs(spec.out, exist_ok=True)
    with open(os.path.join(spec.out, "compare.json"), "w") as f:
        json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()}, f, indent=2)
    for i, ((seed, stage), w) in enumerate(zip(stages, weight), 1):
        t = time.time()
        try:
            summary = run_stage(spec, seed, stage)
        except TinyRLHFError as e:
            raise type(e)(f"compare stage '{stage}' (seed {seed}): {e}") from None
        if isinstance(summary, dict) and summary.get("finished") is False:
            raise TinyRLHFError(f"stage '{stage}' (seed {seed}) stopped early; run the command again to continue")
        done_w += w
        took = time.time() - t
        if took > 0.5:
            worked_w, worked_s = worked_w + w, worked_s + took
        elapsed = time.time() - t0
        eta = worked_s / worked_w * (total - done_w) if worked_w else 0.0
        log(f"[{i}/{len(stages)}] seed {seed} {stage:14s} {took:6.1f} s   "
            f"elapsed {_fmt(elapsed)}   ETA {_fmt(eta)}{_note(stage, summary)}")
    results = collect(spec)
    report = write_report(spec, results)
    return {"results": results, "report": report}
