"""Typed, frozen dataclass configs: YAML files plus dotted CLI overrides (`train.lr=3e-4`).

Every field has a docstring under it. An unknown key or a value of the wrong type is one ConfigError
that names the key and lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""
    """Local Hugging Face model directory (e.g. a downloaded gpt2, or a run's `final/`). Wins over preset."""
    preset: str = "gpt2-tiny"
    """Random-init architecture when no path is given: gpt2-tiny (tests, demo) or gpt2-small (124M shape)."""
    tokenizer_vocab: int = 2048
    """Vocabulary size of the byte-level BPE tokenizer trained on the task text for presets."""
    dropout: float = 0.0
    """Dropout in the transformer; 0 keeps log-probs deterministic (RLHF detail: dropout off)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    attention: str = "tinyrlhf"
    """tinyrlhf (CPU: batched-matmul attention for short inputs, faster than SDPA's CPU kernel; SDPA
    elsewhere, see tinyrlhf/attention.py), sdpa or eager (transformers' own)."""


@dataclass(frozen=True)
class LoRAConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    """Module names that get adapters (GPT-2 names by default)."""
    merge: bool = False
    """Merge adapters into the weights in `final/` (else save the adapter next to the base)."""
    bf16_base: bool = True
    """Under bf16 precision, keep the frozen weights of the adapted layers in bf16: autocast runs those
    matmuls in bf16 anyway (same results), and they take half the memory. DPO and KTO from a model.path;
    a merged save adds the adapters to the fp32 weights reloaded from that directory. Evaluation then
    samples under bf16 autocast too."""


@dataclass(frozen=True)
class DataConfig:
    task: str = ""
    """Built-in task (family_tree, positive_review): gold reward for eval, and data generated if `dir` is empty."""
    dir: str = ""
    """A directory written by `tinyrlhf data` (sft.jsonl, pairs.jsonl, ...). Generated there if missing."""
    train_file: str = ""
    """Explicit training file (project JSONL or a public format); overrides `dir`."""
    eval_file: str = ""
    """Explicit held-out file; overrides `dir`."""
    format: str = "auto"
    """Format of train_file/eval_file: auto, jsonl, hh-rlhf, summarize-from-feedback, stack-exchange-paired, tldr."""
    max_length: int = 192
    """Longest prompt+completion in tokens. Longer: keep the END of the prompt and the START of the completion."""
    max_train: int = 0
    """Use at most this many training records (0 = all)."""
    skip_bad: bool = False
    """Skip malformed records (the count is reported) instead of stopping at the first one."""
    seed: int = 0
    """Seed of the generated task data (when `dir` is generated)."""


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    max_steps: int = 300
    """Optimizer steps (each of batch_size * grad_accum examples). 0 = `epochs` over the data."""
    epochs: float = 1.0
    """Passes over the data when max_steps is 0."""
    batch_size: int = 32
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Autocast dtype: bf16 (AMX on CPU, tensor cores on CUDA), fp32, or auto (bf16 where supported)."""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    log_every: int = 10
    """Write a metrics.jsonl line every N steps."""
    eval_every: int = 100
    """Run evaluation every N steps (0 = only at the end)."""
    save_every: int = 100
    """Write a resumable checkpoint every N steps (0 = only at the end)."""
    save_minutes: float = 10.0
    """Also write one when this many minutes have passed since the last (0 = off): a `kill -9` or power
    loss then costs at most this much work. SIGINT/SIGTERM always checkpoint before stopping."""
    resume: bool = True
    """Continue from `checkpoints/` in the run directory if one is there."""
    force_new: bool = False
    """Start the run anew even if out_dir holds one (CLI: --force-new): the old directory is moved aside to
    `<out_dir>.old-N`, never deleted. Without it, a run whose config differs is refused."""
    progress: bool = True
    """Show a progress bar with ETA."""
    prompt_loss_weight: float = 0.0
    """SFT only: weight of the loss on prompt tokens relative to completion tokens (0 = completion only).
    A random-init preset has had no pretraining; a small weight teaches it to read the prompt."""
    stop_after: int = 0
    """Stop after this many steps, keeping a checkpoint (time-boxed runs: run again to continue)."""
    share_prompt: bool = True
    """DPO family, KTO, RLOO/GRPO and online DPO: run each prompt once and its completions on its key/value
    cache (prefix sharing) instead of prompt+completion per row. Same numbers, less compute when prompts
    are long; ignored (off) under model.gradient_checkpointing, which disables the cache."""


@dataclass(frozen=True)
class EvalConfig:
    n_prompts: int = 200
    """Held-out prompts sampled for the gold-reward score (0 = no evaluation during or after training)."""
    max_new_tokens: int = 32
    """Longest sampled completion."""
    temperature: float = 1.0
    """Sampling temperature for the gold score (greedy is reported beside it)."""
    batch_size: int = 64
    """Prompts per generation batch."""


@dataclass(frozen=True)
class RunConfig:
    """Fields every training run has."""
    out_dir: str = "runs/run"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    seed: int = 0
    """The one seed for model init, data order and sampling."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class SFTConfig(RunConfig):
    out_dir: str = "runs/sft"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""


@dataclass(frozen=True)
class RewardConfig(RunConfig):
    out_dir: str = "runs/reward"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    center_coef: float = 0.0
    """Reward centring: adds center_coef * (r_c + r_r)^2 to the loss, keeping raw rewards near 0."""
    normalize_on: str = ""
    """Model dir (e.g. the SFT run's final/) whose samples set the gain/bias (mean 0, std 1); empty = SFT data."""
    normalize_samples: int = 256
    """Completions used to compute the normalisation."""
    pool: Literal["last", "mean"] = "last"
    """Where the scalar head reads the trunk: the last token (InstructGPT) or the mean over completion tokens."""
    logp_feature: bool = False
    """Add a learned weight (init 1) times the completion's mean token log-prob under the trunk's LM head."""
    rankings: bool = False
    """Also train on the task data directory's rankings.jsonl (each K-way ranking expands to K(K-1)/2 pairs)."""


# ---------------------------------------------------------------- loading

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str):
    """Check/convert one YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}': expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: "
                          + ", ".join(prefix + n for n in names))
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any):
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings -> (key, YAML-parsed value) pairs."""
    out = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def load_config(cls, path: str | None = None, overrides: list[str] | None = None):
    """Build `cls` from a YAML file (optional) and dotted overrides, validating every key and type."""
    tree: dict = {}
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: config file not found")
        try:
            with open(path, encoding="utf-8") as f:
                tree = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return _build(cls, tree)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists), for YAML/JSON dumps."""
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def replace(cfg, **dotted):
    """Copy of a frozen config with dotted keys changed: replace(cfg, **{"train.lr": 1e-4})."""
    tree = config_to_dict(cfg)
    for k, v in dotted.items():
        _set_dotted(tree, k, v)
    return _build(type(cfg), tree)


@dataclass(frozen=True)
class PreferenceConfig(RunConfig):
    out_dir: str = "runs/dpo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    loss: Literal["dpo", "ipo", "cdpo", "hinge", "simpo", "orpo"] = "dpo"
    """Offline preference loss (tinyrlhf.losses.PREFERENCE_LOSSES)."""
    beta: float = 0.1
    """Strength of the KL-style regularisation (DPO/IPO/cDPO/hinge/SimPO beta)."""
    label_smoothing: float = 0.1
    """cDPO: assumed share of flipped labels (only used by loss=cdpo)."""
    gamma: float = 0.5
    """SimPO target reward margin."""
    orpo_lambda: float = 0.1
    """ORPO weight of the odds-ratio term."""
    ref_cache_dir: str = "runs/cache/ref_logps"
    """Where reference log-probs are cached (keyed by model and data fingerprint)."""


@dataclass(frozen=True)
class KTOConfig(RunConfig):
    out_dir: str = "runs/kto"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    beta: float = 0.1
    """KTO beta."""
    desirable_weight: float = 1.0
    """lambda_D: weight of desirable examples."""
    undesirable_weight: float = 1.0
    """lambda_U: weight of undesirable examples (KTO paper: keep lambda_D n_D / lambda_U n_U in [1, 4/3])."""
    ref_cache_dir: str = "runs/cache/ref_logps"
    """Where reference log-probs are cached (keyed by model and data fingerprint)."""


# Online-RL configs live in config_rl.py (kept apart to keep files short); re-exported here.
from .config_rl import GroupConfig, KLConfig, OnlineDPOConfig, PPOConfig, PPOHyper, RolloutConfig  # noqa: E402,F401
