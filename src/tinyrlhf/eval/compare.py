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
from dataclasses import asdict, dataclass

from .. import config as C
from ..errors import ConfigError, TinyRLHFError

# method -> (config file name in --config-dir, config class, loop "module:function", extra overrides, needs an RM)
METHODS = {
    "ppo": ("ppo", C.PPOConfig, "ppo:run_ppo", [], True),
    "rloo": ("rloo", C.GroupConfig, "group:run_group", ["algo=rloo"], True),
    "grpo": ("grpo", C.GroupConfig, "group:run_group", ["algo=grpo"], True),
    "online-dpo": ("online_dpo", C.OnlineDPOConfig, "online_dpo:run_online_dpo", [], True),
    "kto": ("kto", C.KTOConfig, "kto:run_kto", [], False),
    **{loss: (loss, C.PreferenceConfig, "preference:run_preference", [f"loss={loss}"], False)
       for loss in ("dpo", "ipo", "cdpo", "hinge", "simpo", "orpo")},
}
# Each method's key hyper-parameter for --trials: the KL-style regulariser (the x-axis of the reward-KL frontier,
# as in the DPO paper's Fig. 2), with a grid from weak to strong regularisation. PPO's is the adaptive KL target.
SWEEP = {
    "dpo": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)), "ipo": ("beta", (0.5, 0.3, 0.1, 0.05, 0.02)),
    "cdpo": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)), "hinge": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)),
    "simpo": ("beta", (5.0, 3.0, 2.0, 1.0, 0.5)), "orpo": ("orpo_lambda", (0.02, 0.05, 0.1, 0.2, 0.5)),
    "kto": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)), "online-dpo": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)),
    "ppo": ("kl.target", (0.25, 0.5, 1.0, 2.0, 4.0)), "rloo": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)),
    "grpo": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)),
}
STAGE_WEIGHT = {"data": 0.1, "sft": 1.0, "reward": 1.0, "pairs": 0.5, "eval": 0.15, "baselines": 0.4}  # for the ETA
POLICY_PAIRS = {"k": 2, "temperature": 1.0, "max_new_tokens": 24}  # defaults of the "pairs" stage
METHOD_WEIGHT = {"ppo": 1.0, "rloo": 1.0, "grpo": 1.0, "online-dpo": 0.5}
# keys compare sets itself for every stage: a global override of one of them would break the comparison
RESERVED = ("out_dir", "seed", "model.path", "reward", "data.dir", "data.task", "data.seed", "normalize_on")


@dataclass(frozen=True)
class CompareSpec:
    task: str
    methods: tuple[str, ...]
    seeds: int
    out: str
    budget: int = 4800
    """Training prompts per method: preference pairs or binary examples (offline), rollout prompts (online)."""
    labels: int = 0
    """Preference labels every method may use (0 = budget): the reward model's pairs and the offline methods'
    pairs are the same labels; KTO gets as many binary labels."""
    config_dir: str = ""
    eval_prompts: int = 200
    val_prompts: int = 200
    overrides: tuple[str, ...] = ()  # "stage.key=value", e.g. "sft.train.max_steps=600", "ppo.kl.target=2"
    global_overrides: tuple[str, ...] = ()  # "key=value" for every training stage, e.g. "train.threads=1"
    offline_data: str = "policy"  # "policy": SFT samples judged by the annotators; "task": scripted pairs
    rm_data: str = "policy"  # the reward model learns from the same labels ("policy") or the task's pairs ("task")
    rm_logp: bool = False  # add the SFT trunk's log-prob term to the reward model (reported as such)
    trials: int = 1  # settings of each method's key hyper-parameter (1 = its config's own value)
    grids: tuple[tuple[str, str, tuple[float, ...]], ...] = ()  # (method, key, values) of every swept method
    best_of: tuple[int, ...] = (4, 16)  # best-of-n baselines against the reward model
    nproc: int = 1  # processes per training stage (> 1: each stage is launched by torchrun, DDP)

    @property
    def n_labels(self) -> int:
        return self.labels or self.budget


def _grids(methods, trials: int, explicit: list[str]) -> tuple:
    """(method, key, values) for every method but SFT: `trials` values spread over SWEEP's grid, or
    `--grid method.key=v1,v2,...`; every method gets the same number of trials (equal tuning effort)."""
    given = {}
    for g in explicit:
        head, _, values = g.partition("=")
        method, _, key = head.partition(".")
        if method not in METHODS or not key or not values:
            raise ConfigError(f"--grid '{g}': expected METHOD.key=v1,v2,... with METHOD one of {', '.join(METHODS)}")
        try:
            given[method] = (key, tuple(float(v) for v in values.split(",")))
        except ValueError:
            raise ConfigError(f"--grid '{g}': the values must be numbers") from None
    out = []
    for m in methods:
        if m == "sft":
            continue
        if m in given:
            key, values = given[m]
        elif trials > 1:
            key, grid = SWEEP[m]
            if trials > len(grid):
                raise ConfigError(f"--trials {trials}: the default grid of {m} has {len(grid)} values; give --grid")
            values = tuple(grid[round(i * (len(grid) - 1) / (trials - 1))] for i in range(trials))
        else:
            continue
        if len(values) != trials:
            raise ConfigError(f"--grid {m}.{key}: {len(values)} values but --trials {trials}; every method gets "
                              "the same number of trials")
        out.append((m, key, values))
    return tuple(out)


def parse_spec(task: str, methods: str, seeds: int, out: str, budget: int, config_dir: str, eval_prompts: int,
               overrides: list[str], offline_data: str = "policy", *, labels: int = 0, val_prompts: int = 200,
               rm_data: str = "policy", rm_logp: bool = False, trials: int = 1, grid: list[str] | None = None,
               best_of: str = "4,16", nproc: int = 1) -> CompareSpec:
    from ..tasks import task_names
    if task not in task_names():
        raise ConfigError(f"unknown task '{task}' (valid: {', '.join(task_names())})")
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m != "sft" and m not in METHODS]
    if bad or not names:
        raise ConfigError(f"unknown method(s) {', '.join(bad) or '(none)'} (valid: sft, {', '.join(METHODS)})")
    if seeds < 1 or budget < 1 or eval_prompts < 1 or val_prompts < 1 or trials < 1 or labels < 0:
        raise ConfigError("--seeds, --budget, --eval-prompts, --val-prompts and --trials must be >= 1, --labels >= 0")
    config_dir = config_dir or os.path.join("configs", task)
    for name, value in (("--offline-data", offline_data), ("--rm-data", rm_data)):
        if value not in ("policy", "task"):
            raise ConfigError(f"{name} must be 'policy' or 'task', got '{value}'")
    try:
        bon = tuple(int(n) for n in best_of.split(",") if n.strip()) if best_of else ()
    except ValueError:
        raise ConfigError(f"--best-of '{best_of}': expected comma-separated integers, e.g. 4,16") from None
    if any(n < 2 for n in bon):
        raise ConfigError(f"--best-of '{best_of}': every n must be >= 2")
    stages = {"data", "sft", "reward", "pairs", *METHODS}
    staged, global_ = [], []
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or not key:
            raise ConfigError(f"override '{o}': expected STAGE.key=value or key=value (for every training stage)")
        head = key.split(".", 1)[0]
        if head in stages and "." in key:
            staged.append(o)
        elif head in stages:
            raise ConfigError(f"override '{o}': expected STAGE.key=value with STAGE one of {', '.join(sorted(stages))}")
        elif key in RESERVED:
            raise ConfigError(f"override '{o}': compare sets '{key}' itself for every stage")
        else:
            global_.append(o)
    if "sft" not in names:
        names.insert(0, "sft")  # the baseline every comparison is made against
    names = list(dict.fromkeys(names))
    return CompareSpec(task, tuple(names), seeds, out, budget, labels, config_dir, eval_prompts, val_prompts,
                       tuple(staged), tuple(global_), offline_data, rm_data, rm_logp, trials,
                       _grids(names, trials, grid or []), bon, nproc)


def runs_of(spec: CompareSpec, method: str) -> list[tuple[str, dict]]:
    """(run name, {dotted key: value}) of every trial of `method`: one run at the config's own value, or one
    per value of its grid, named e.g. 'dpo@beta=0.3'."""
    for m, key, values in spec.grids:
        if m == method:
            return [(f"{m}@{key}={v:g}", {key: v}) for v in values]
    return [(method, {})]


def needs_reward_model(spec: CompareSpec) -> bool:
    return any(METHODS[m][4] for m in spec.methods if m != "sft") or bool(spec.best_of)


def plan(spec: CompareSpec) -> list[tuple[int, str]]:
    """(seed, stage) in the order they run. A stage is data, sft, pairs, reward, a run name, baselines or
    eval:<run name>."""
    needs_rm = needs_reward_model(spec)
    offline = any(not METHODS[m][4] for m in spec.methods if m != "sft")
    needs_pairs = (spec.offline_data == "policy" and offline) or (needs_rm and spec.rm_data == "policy")
    stages = []
    for seed in range(spec.seeds):
        stages += [(seed, "data"), (seed, "sft")] + ([(seed, "pairs")] if needs_pairs else [])
        stages += [(seed, "reward")] if needs_rm else []
        runs = [name for m in spec.methods if m != "sft" for name, _ in runs_of(spec, m)]
        stages += [(seed, r) for r in runs]
        stages += [(seed, "baselines")] + [(seed, f"eval:{r}") for r in ["sft", *runs]]
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
    ignore = {"out", "methods", "seeds", "eval_prompts", "val_prompts", "best_of", "trials", "grids"}
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
    from .compare_stages import note, run_stage
    from .report import collect, write_report

    stages = plan(spec)
    weight = [_weight(s) for _, s in stages]
    total, done_w, t0 = sum(weight), 0.0, time.time()
    worked_w = worked_s = 0.0  # stages that really ran (reused ones take no time and would fool the ETA)
    write_spec(spec)
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
        eta = worked_s / worked_w * (total - done_w) if worked_w else 0.0
        log(f"[{i}/{len(stages)}] seed {seed} {stage:16s} {took:6.1f} s   "
            f"elapsed {_fmt(time.time() - t0)}   ETA {_fmt(eta)}{note(stage, summary)}")
    results = collect(spec)
    report = write_report(spec, results)
    return {"results": results, "report": report}


__all__ = ["CompareSpec", "METHODS", "SWEEP", "parse_spec", "plan", "runs_of", "run_compare"]
