"""What a `tinyrlhf loop` is: its settings (LoopConfig: configs/TASK/loop.yaml, overridden with `loop.key=value`),
the checked spec of one loop (LoopSpec, parse_loop, write_spec) and where its rounds live (round_dir, reward_dir).
loop.py runs the stages and loop_report.py evaluates them; both import this module, which imports neither."""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass

from .. import config as C
from ..config import check_range
from ..errors import ConfigError, DataError, TinyRLHFError
from .spec import METHODS, CompareSpec, needs_rm, parse_spec, read_json, stage_config, write_json


@dataclass(frozen=True)
class LoopConfig:
    labels_per_round: int = 400
    """Preference pairs labelled per round (simulated: drawn by the annotators; human: items queued)."""
    human_labels: int = 0
    """With --labels human: labels to wait for per round before training (0 = labels_per_round)."""
    policy_steps: int = 40
    """Policy training steps per round (rollout batches for online methods, optimizer steps for DPO)."""
    mix_earlier: float = 0.5
    """Share of a round's pairs whose second sample comes from an earlier round's policy (SFT included),
    drawn uniformly; the rest compare two samples of the current policy. Round 1 has only SFT."""
    refresh_rm: bool = True
    """true: retrain the reward model each round on all labels so far (iterated RLHF, Bai et al. 2022);
    false (--static-rm): one reward model trained once on all rounds' labels, drawn from the SFT model."""
    max_new_tokens: int = 40
    """Longest sampled answer (labelled pairs and the evaluation)."""
    temperature: float = 1.0
    """Sampling temperature of the labelled pairs."""
    eval_prompts: int = 200
    """Held-out prompts of each round's evaluation (gold with CI, proxy, KL to SFT, Elo)."""
    poll_s: float = 5.0
    """With --labels human: seconds between two looks at the feedback database."""
    wait_s: float = 0.0
    """With --labels human: give up after this many seconds without enough labels (0 = wait for ever);
    the round resumes where it was when the command runs again."""

    def __post_init__(self):
        for name in ("labels_per_round", "policy_steps", "max_new_tokens", "eval_prompts"):
            check_range(self, name, 1)
        check_range(self, "human_labels", 0)
        check_range(self, "mix_earlier", 0, 1)
        check_range(self, "temperature", 0, lo_open=True)
        check_range(self, "poll_s", 0, lo_open=True)
        check_range(self, "wait_s", 0)


LOOP_METHODS = ("ppo", "dpo", "rloo", "grpo", "online-dpo")
LABEL_MODES = ("simulated", "human")
# loop settings a rerun may change: how many rounds and seeds, how long to wait for people
FREE = ("rounds", "seeds", "poll_s", "wait_s", "eval_prompts")


@dataclass(frozen=True)
class LoopSpec:
    task: str
    rounds: int
    labels: str
    method: str
    seeds: int
    out: str
    loop: LoopConfig
    compare: CompareSpec  # the data and SFT stages, and the stage configs (--config-dir, overrides)
    db: str = ""

    @property
    def cond(self) -> str:
        return self.method + ("" if self.loop.refresh_rm else "-static-rm")

    @property
    def needs_rm(self) -> bool:
        return needs_rm(self.method)


def parse_loop(task: str, rounds: int, labels: str, method: str, seeds: int, out: str, overrides: list[str], *,
               config: str = "", config_dir: str = "", static_rm: bool = False, db: str = "") -> LoopSpec:
    """Check everything the user gave before anything runs; ConfigError names the bad option."""
    from ..tasks import task_names
    if task not in task_names():
        raise ConfigError(f"unknown task '{task}' (valid: {', '.join(task_names())})")
    if method not in LOOP_METHODS:
        raise ConfigError(f"--method '{method}': unknown (valid: {', '.join(LOOP_METHODS)})")
    if labels not in LABEL_MODES:
        raise ConfigError(f"--labels '{labels}': expected one of {', '.join(LABEL_MODES)}")
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    config_dir = config_dir or os.path.join("configs", task)
    config = config or (p if os.path.isfile(p := os.path.join(config_dir, "loop.yaml")) else "")
    if config and not os.path.isfile(config):
        raise ConfigError(f"--config '{config}': no such file")
    loop_args = [o.split(".", 1)[1] for o in overrides if o.startswith("loop.")]
    if static_rm:
        loop_args.append("refresh_rm=false")
    cfg = C.load_config(LoopConfig, config or None, loop_args)
    if not cfg.refresh_rm and not needs_rm(method):
        raise ConfigError(f"--static-rm: {method} trains on the labels directly, without a reward model to keep "
                          "static (use --method ppo, rloo, grpo or online-dpo)")
    if labels == "human":
        try:  # checked now, not after the SFT stage
            importlib.import_module("..feedback.store", __package__)
            importlib.import_module("..feedback.export", __package__)
        except ImportError as e:
            raise ConfigError(f"--labels human needs the feedback store (tinyrlhf label): {e}") from None
        db = db or os.path.join(out, "feedback.db")
        if os.path.exists(db) and not os.path.isfile(db):
            raise ConfigError(f"--db '{db}' is not a file")
        from ..feedback.dbfile import check_file
        try:  # garbage or another program's database: refused now, untouched, before the data and SFT stages
            check_file(db, must_exist=False, allow_empty=True)
        except TinyRLHFError as e:
            raise ConfigError(f"--db {e}") from None
    compare = parse_spec(task, method, seeds, out, cfg.labels_per_round, config_dir, cfg.eval_prompts,
                         [o for o in overrides if not o.startswith("loop.")], best_of="")
    spec = LoopSpec(task, rounds, labels, method, seeds, out, cfg, compare, db)
    # every stage's config loads now, so a bad override stops the loop before anything is written
    stages = [("sft", "sft", C.SFTConfig)] + ([("reward", "reward", C.RewardConfig)] if spec.needs_rm else [])
    for name, stage, cls in stages + [(METHODS[method][0], method, METHODS[method][1])]:
        stage_config(compare, name, stage, cls, list(METHODS[method][3]) if stage == method else [])
    return spec


def write_spec(spec: LoopSpec) -> None:
    """OUT/loop-COND.json: a rerun that would change what finished rounds mean is refused (as compare does).
    A static reward model is trained on rounds x labels_per_round labels, so there `rounds` is fixed too."""
    path = os.path.join(spec.out, f"loop-{spec.cond}.json")
    now = json.loads(json.dumps({**asdict(spec), "loop": asdict(spec.loop), "compare": asdict(spec.compare)}))
    free = set(FREE) - ({"rounds"} if not spec.loop.refresh_rm else set())
    flat = lambda d: {**{k: v for k, v in d.items() if k not in ("loop", "compare")},  # noqa: E731
                      **{f"loop.{k}": v for k, v in d["loop"].items()},
                      **{f"compare.{k}": v for k, v in d["compare"].items()
                         if k in ("config_dir", "overrides", "global_overrides")}}
    if os.path.isfile(path):
        hint = (f"it records the settings of the loop in {spec.out}; if those are the ones you run now, delete it "
                "and run the same command again (finished rounds are reused), else use another --out")
        old = read_json(path, hint)
        if not (isinstance(old, dict) and isinstance(old.get("loop"), dict) and isinstance(old.get("compare"), dict)):
            raise DataError(f"not a loop spec (no 'loop' and 'compare' objects): {hint}", path=path)
        # a loop setting added to tinyrlhf since the loop started counts as its default
        before = {**{f"loop.{k}": v for k, v in asdict(LoopConfig()).items()}, **flat(old)}
        after = flat(now)
        diff = sorted(k for k in after if k.split(".")[-1] not in free and before.get(k) != after[k])
        if diff:
            raise ConfigError(f"{spec.out} holds a {spec.cond} loop with other settings ("
                              + ", ".join(f"{k}: {before.get(k)!r} -> {after[k]!r}" for k in diff)
                              + "); use another --out")
    os.makedirs(spec.out, exist_ok=True)
    write_json(path, now)


def round_dir(spec: LoopSpec, seed: int, r: int) -> str:
    return os.path.join(spec.out, f"seed{seed}", spec.cond, f"round-{r}")


def reward_dir(spec: LoopSpec, seed: int, r: int) -> str:
    return os.path.join(round_dir(spec, seed, r if spec.loop.refresh_rm else 1), "reward")
