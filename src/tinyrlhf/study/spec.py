"""What a comparison is, and where its pieces live: the methods compare knows (METHODS, SWEEP), the spec of one
comparison (CompareSpec, parse_spec), its trials (runs_of), its directory layout (paths) and each stage's config.
Every other module of the study layer imports these; this one imports none of them."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .. import config as C
from ..diskio import atomic_write
from ..errors import ConfigError, DataError

# method -> (config file name in --config-dir, config class, loop "module:function", extra overrides, what it learns
# from: "rm" (a reward model trained on the preference labels), "labels" (the labels themselves, offline) or
# "gold" (an oracle: the task's gold reward, no labels; an upper bound for the label-trained methods))
METHODS = {
    "ppo": ("ppo", C.PPOConfig, "ppo:run_ppo", [], "rm"),
    "rloo": ("rloo", C.GroupConfig, "group:run_group", ["algo=rloo"], "rm"),
    "grpo": ("grpo", C.GroupConfig, "group:run_group", ["algo=grpo"], "rm"),
    "online-dpo": ("online_dpo", C.OnlineDPOConfig, "online_dpo:run_online_dpo", [], "rm"),
    "dr-grpo": ("dr_grpo", C.GroupConfig, "group:run_group", ["algo=grpo", "loss_type=dr_grpo"], "rm"),
    "dapo": ("dapo", C.GroupConfig, "group:run_group", ["algo=grpo", "loss_type=dapo"], "rm"),
    "reinforce-pp": ("reinforce_pp", C.GroupConfig, "group:run_group", ["algo=reinforce-pp"], "rm"),
    "rs": ("rs", C.RSConfig, "rs:run_rs", [], "rm"),
    "kto": ("kto", C.KTOConfig, "kto:run_kto", [], "labels"),
    **{loss: (loss, C.PreferenceConfig, "preference:run_preference", [f"loss={loss}"], "labels")
       for loss in ("dpo", "ipo", "cdpo", "hinge", "simpo", "orpo")},
    "ppo-gold": ("ppo", C.PPOConfig, "ppo:run_ppo", ["reward=gold"], "gold"),
}
# Each method's key hyper-parameter for --trials: the KL-style regulariser (the x-axis of the reward-KL frontier,
# as in the DPO paper's Fig. 2), with a grid from strong to weak regularisation. PPO's is the adaptive KL target.
SWEEP = {
    "dpo": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)), "ipo": ("beta", (0.5, 0.3, 0.1, 0.05, 0.02)),
    "cdpo": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)), "hinge": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)),
    "simpo": ("beta", (5.0, 3.0, 2.0, 1.0, 0.5)), "orpo": ("orpo_lambda", (0.02, 0.05, 0.1, 0.2, 0.5)),
    "kto": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)), "online-dpo": ("beta", (1.0, 0.5, 0.3, 0.1, 0.05)),
    "ppo": ("kl.target", (0.25, 0.5, 1.0, 2.0, 4.0)), "rloo": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)),
    "grpo": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)), "ppo-gold": ("kl.target", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "dr-grpo": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)), "dapo": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)),
    "reinforce-pp": ("kl.coef", (0.2, 0.1, 0.05, 0.02, 0.01)),
    # rejection sampling has no KL term: samples per prompt set how far a round moves the policy (best-of-k is at
    # most log k − (k−1)/k nats from its sampler), so k runs from conservative to aggressive; rollouts grow with k
    "rs": ("k", (2, 3, 4, 6, 8)),
}
# What --trials tunes besides the key hyper-parameter (--tune): the learning rate, log-spaced from the config's
# / LR_SPREAD to x LR_SPREAD, and for offline methods the passes over their labels (EPOCHS). Trial i takes the
# i-th key value (strong -> weak regularisation) and the i-th learning rate (low -> high): both set how far the
# policy moves, so together they span conservative -> aggressive, where the failure modes lie (KTO inert at lr
# 2e-5, SimPO collapsed at 2e-4); the epochs are shifted by one trial so they are not tied to the other two
# (with 3 trials: 4, 1 and 2 passes, so the middle trial is the config's own setting at one pass).
# Every method gets the same design and the same number of trials (a Latin square over the tuned axes).
TUNE_AXES = ("key", "lr", "epochs")
LR_SPREAD = 3.0
EPOCHS = (1.0, 1.5, 2.0, 3.0, 4.0)


def needs_rm(method: str) -> bool:
    return METHODS[method][4] == "rm"


def is_oracle(method: str) -> bool:
    """Trained on the gold reward (an upper bound, kept out of the tests' family)."""
    return method in METHODS and METHODS[method][4] == "gold"


def is_offline(method: str) -> bool:
    """Learns from the preference labels directly (DPO and family, KTO), no reward model, no rollouts."""
    return METHODS[method][4] == "labels"


POLICY_PAIRS = {"k": 2, "temperature": 1.0}  # defaults of the "pairs" stage (new tokens: the task's answer_tokens)
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
    trials: int = 1  # settings of each method tried (1 = its config's own)
    grids: tuple[tuple[str, tuple[tuple[tuple[str, float], ...], ...]], ...] = ()
    """(method, its trials) for every tuned method; a trial is ((dotted key, value), ...), e.g.
    (("beta", 0.3), ("train.lr", 2e-4), ("train.epochs", 2.0))."""
    best_of: tuple[int, ...] = (4, 16)  # best-of-n baselines against the reward model
    nproc: int = 1  # processes per training stage (> 1: each stage is launched by torchrun, DDP)
    temperatures: tuple[float, ...] = (1.0, 0.7, 0.5, 0.3, 0.0)
    """Every policy is also sampled at these temperatures (0 = greedy) on the validation and evaluation prompts
    (study/decoding.py); each is compared at its best one on validation. () = the T=1 comparison only."""
    tune: tuple[str, ...] = TUNE_AXES  # what --trials varies: "key", "lr", "epochs" (offline methods only)
    shared: str = ""
    """Another comparison's directory whose data and SFT models this one reuses (the label-budget sweep)."""

    @property
    def n_labels(self) -> int:
        return self.labels or self.budget


def _spread(grid, k: int) -> tuple:
    """k values of `grid` from its first to its last (the middle one for k = 1)."""
    if k == 1:
        return (grid[len(grid) // 2],)
    return tuple(grid[round(i * (len(grid) - 1) / (k - 1))] for i in range(k))


def _explicit(explicit: list[str]) -> dict:
    """--grid METHOD.key=v1,v2,... -> {method: {key: values}} (several keys of one method are zipped)."""
    given: dict = {}
    for g in explicit:
        head, _, values = g.partition("=")
        method, _, key = head.partition(".")
        if method not in METHODS or not key or not values:
            raise ConfigError(f"--grid '{g}': expected METHOD.key=v1,v2,... with METHOD one of {', '.join(METHODS)}")
        try:
            # integers stay integers (rs.k=2,4,8 sets an int field); anything else is a float
            given.setdefault(method, {})[key] = tuple(int(v) if v.strip().lstrip("-").isdigit() else float(v)
                                                      for v in values.split(","))
        except ValueError:
            raise ConfigError(f"--grid '{g}': the values must be numbers") from None
    return given


def _grids(methods, trials: int, explicit: list[str], tune: tuple[str, ...], base_lr) -> tuple:
    """(method, trials) for every method but SFT: the design of TUNE_AXES over `trials` settings, with any
    `--grid method.key=v1,v2,...` in place of that axis; every method gets the same number of trials (equal
    tuning effort). `base_lr(method)` is the learning rate of the method's config."""
    given = _explicit(explicit)
    out = []
    for m in methods:
        if m == "sft" or (trials == 1 and m not in given):
            continue
        key, grid = SWEEP[m]
        axes: dict[str, tuple] = {}
        if "key" in tune:
            if trials > len(grid) and key not in given.get(m, {}):
                raise ConfigError(f"--trials {trials}: the default grid of {m} has {len(grid)} values; give --grid")
            axes[key] = _spread(grid, trials)
        if "lr" in tune and trials > 1:
            lr = base_lr(m)
            axes["train.lr"] = tuple(float(f"{lr * LR_SPREAD ** (2 * i / (trials - 1) - 1):.3g}")
                                     for i in range(trials))
        if "epochs" in tune and is_offline(m) and trials > 1:
            if trials > len(EPOCHS) and "train.epochs" not in given.get(m, {}):
                raise ConfigError(f"--trials {trials}: {len(EPOCHS)} epoch settings; give --grid {m}.train.epochs=...")
            e = _spread(EPOCHS, trials)
            axes["train.epochs"] = e[-1:] + e[:-1]  # shifted one trial against key and lr
        axes.update(given.get(m, {}))
        bad = [k for k, v in axes.items() if len(v) != trials]
        if bad:
            raise ConfigError(f"--grid {m}.{bad[0]}: {len(axes[bad[0]])} values but --trials {trials}; every "
                              "method gets the same number of trials")
        if axes:
            out.append((m, tuple(tuple((k, v[i]) for k, v in axes.items()) for i in range(trials))))
    return tuple(out)


def parse_spec(task: str, methods: str, seeds: int, out: str, budget: int, config_dir: str, eval_prompts: int,
               overrides: list[str], offline_data: str = "policy", *, labels: int = 0, val_prompts: int = 200,
               rm_data: str = "policy", rm_logp: bool = False, trials: int = 1, grid: list[str] | None = None,
               best_of: str = "4,16", nproc: int = 1, temperatures: str = "1,0.7,0.5,0.3,0",
               tune: str = ",".join(TUNE_AXES)) -> CompareSpec:
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
    try:
        temps = tuple(float(t) for t in temperatures.split(",") if t.strip()) if temperatures else ()
    except ValueError:
        raise ConfigError(f"--temperatures '{temperatures}': expected comma-separated numbers, e.g. 1,0.7,0.3,0") from None
    if any(not 0 <= t <= 2 for t in temps) or len(set(temps)) != len(temps):
        raise ConfigError(f"--temperatures '{temperatures}': distinct values in [0, 2] (0 = greedy)")
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
    axes = tuple(a.strip() for a in tune.split(",") if a.strip())
    if not axes or any(a not in TUNE_AXES for a in axes):
        raise ConfigError(f"--tune '{tune}': a comma-separated subset of {', '.join(TUNE_AXES)}")

    def base_lr(method: str) -> float:
        name, cls, _, extra, _ = METHODS[method]
        path = os.path.join(config_dir, f"{name}.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"no config for stage '{method}': {path} is missing (--config-dir)")
        own = [o.split(".", 1)[1] for o in staged if o.split(".", 1)[0] == method]
        return C.load_config(cls, path, [*extra, *global_, *own]).train.lr

    return CompareSpec(task, tuple(names), seeds, out, budget, labels, config_dir, eval_prompts, val_prompts,
                       tuple(staged), tuple(global_), offline_data, rm_data, rm_logp, trials,
                       _grids(names, trials, grid or [], axes, base_lr), bon, nproc, temps, axes)


def setting_name(key: str) -> str:
    """How a tuned key reads in run names and reports: train.lr -> lr, train.epochs -> epochs."""
    return key[len("train."):] if key.startswith("train.") else key


def runs_of(spec: CompareSpec, method: str) -> list[tuple[str, dict]]:
    """(run name, {dotted key: value}) of every trial of `method`: one run at the config's own values, or one
    per trial of its design, named e.g. 'dpo@beta=0.3' or 'dpo@beta=0.3,lr=0.0002,epochs=2'."""
    for m, trials in spec.grids:
        if m == method:
            return [(f"{m}@" + ",".join(f"{setting_name(k)}={v:g}" for k, v in t), dict(t)) for t in trials]
    return [(method, {})]


def paths(spec: CompareSpec, seed: int) -> dict[str, str]:
    root, base = os.path.join(spec.out, f"seed{seed}"), spec.shared or spec.out
    sft = os.path.join(base, f"seed{seed}", "sft")
    return {"root": root, "data": os.path.join(base, f"data-seed{seed}"),
            "pairs": os.path.join(spec.out, f"pairs-seed{seed}"), "sft": sft,
            "sft_final": os.path.join(sft, "final"), "reward": os.path.join(root, "reward"),
            "baselines": os.path.join(root, "baselines.json")}


def tracking_args(out: str, seed: int, name: str) -> list[str]:
    """A comparison's (or loop's) stage in the trackers (they log only with train.report_to set): under --out,
    in the group named after it, as run `seed<N>-<name>`. Before the user's overrides, which win."""
    out = os.path.normpath(out)  # string keys take their text as typed (config.load)
    return [f"train.tracking_dir={out}", f"train.tracking_group={os.path.basename(out)}",
            f"train.run_name=seed{seed}-{name}"]


def run_dir(spec: CompareSpec, seed: int, run: str) -> str:
    """Where a run of seed `seed` lives (SFT in the shared comparison's directory when there is one)."""
    p = paths(spec, seed)
    return p["sft"] if run == "sft" else os.path.join(p["root"], run)


def stage_overrides(spec: CompareSpec, stage: str) -> list[str]:
    return [o.split(".", 1)[1] for o in spec.overrides if o.split(".", 1)[0] == stage]


def stage_config(spec: CompareSpec, name: str, stage: str, cls, args: list[str]):
    """The stage's config: its YAML in --config-dir, then compare's own settings, the global overrides and
    the stage's overrides (later ones win)."""
    path = os.path.join(spec.config_dir, f"{name}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"no config for stage '{stage}': {path} is missing (--config-dir)")
    return C.load_config(cls, path, args + list(spec.global_overrides) + stage_overrides(spec, stage))


def seed_task(spec: CompareSpec, seed: int):
    """The task of this comparison as seed `seed`'s data was written (its task overrides, e.g. from
    configs/TASK/data.yaml or `data.max_children=2`, included): every stage scores prompts of that kind."""
    from ..tasks.generate import task_of_data
    return task_of_data(paths(spec, seed)["data"], spec.task)


def method_of(run: str) -> str:
    return run.split("@", 1)[0]


RECOVER = "delete it and run the same command again (the stage that wrote it redoes its work), or use another --out"


def read_json(path: str, hint: str = RECOVER) -> dict:
    """A JSON state file of a comparison or loop; a truncated or corrupt one is a DataError naming it and
    saying how to recover (`hint`)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({str(e).splitlines()[0][:80]}; truncated or corrupt): {hint}",
                        path=path) from None


def write_json(path: str, obj) -> None:
    """Written atomically (temp file, fsync, rename): a crash leaves the old file or the new one; a full
    or read-only disk is a DiskError naming it."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2))
