"""The sections every training run shares: model, LoRA, data, train (optimisation, precision, logging,
checkpoints), eval, and RunConfig, the fields every stage's config has. Every field has a docstring under it and
every numeric field a checked range (`__post_init__`)."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from .load import FieldError, check_range

MAX_SEED = 2**32 - 1
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_seed(cfg, name: str = "seed"):
    check_range(cfg, name, 0, MAX_SEED)


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""
    """Local Hugging Face model directory (e.g. a downloaded gpt2, or a run's `final/`). Wins over preset."""
    preset: Literal["gpt2-tiny", "gpt2-mini", "gpt2-small"] = "gpt2-tiny"
    """Random-init architecture when no path is given: gpt2-tiny (2 layers x 128; tests, demo), gpt2-mini
    (4 x 256) or gpt2-small (the 124M shape)."""
    tokenizer_vocab: int = 2048
    """Vocabulary size of the byte-level BPE tokenizer trained on the task text for presets (>= 257: the
    256 byte symbols and <|endoftext|>)."""
    dropout: float = 0.0
    """Dropout in the transformer; 0 keeps log-probs deterministic (RLHF detail: dropout off)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    attention: Literal["tinyrlhf", "sdpa", "eager"] = "tinyrlhf"
    """tinyrlhf (CPU: batched-matmul attention for short inputs, faster than SDPA's CPU kernel; SDPA
    elsewhere, see tinyrlhf/attention.py), sdpa or eager (transformers' own)."""

    def __post_init__(self):
        check_range(self, "tokenizer_vocab", 257)
        check_range(self, "dropout", 0, 1, hi_open=True)


@dataclass(frozen=True)
class LoRAConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 16
    """LoRA rank (>= 1)."""
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

    def __post_init__(self):
        check_range(self, "r", 1)
        check_range(self, "alpha", 1)
        check_range(self, "dropout", 0, 1, hi_open=True)
        if not self.target_modules or not all(m.strip() for m in self.target_modules):
            raise FieldError("target_modules", f"needs at least one module name, got {list(self.target_modules)}")


@dataclass(frozen=True)
class ColumnsConfig:
    """Which key (JSONL, JSON) or column (CSV, parquet) of your file holds each field, when its names are
    not the project's: `data.columns.prompt=question data.columns.completion=answer`."""
    prompt: str = ""
    """Holds the prompt (empty = a key named 'prompt')."""
    completion: str = ""
    """Holds the completion of an SFT or binary (KTO) row."""
    chosen: str = ""
    """Holds the preferred completion of a pair."""
    rejected: str = ""
    """Holds the other completion of a pair."""
    label: str = ""
    """Holds a binary row's label (true, false, 1 or 0: desirable or not)."""
    completions: str = ""
    """Holds a ranking's completions, best first."""
    margin: str = ""
    """Holds a pair's optional margin."""

    def mapping(self) -> dict[str, str] | None:
        """{field: column} of the columns given, or None when none is."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name)}
        return given or None


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
    dataset: str = ""
    """A dataset by name or path instead of train_file (`pip install 'tinyrlhf[datasets]'`): a Hugging Face hub
    name (trl-lib/ultrafeedback_binarized: downloaded once into the datasets cache, HF_DATASETS_CACHE), a
    save_to_disk directory, or a directory of parquet/json/jsonl/csv files. Its rows are read like a file's
    (format detection, columns); overrides `dir`."""
    subset: str = ""
    """The dataset's configuration (subset) name, load_dataset's second argument ("" = its default)."""
    split: str = ""
    """The dataset's training split ("" = train, or its only split)."""
    eval_split: str = ""
    """A held-out split of the same dataset (e.g. test) instead of eval_file ("" = none)."""
    format: str = "auto"
    """Format of train_file/eval_file (or of the dataset's rows): auto, jsonl, hh-rlhf, summarize-from-feedback,
    stack-exchange-paired, tldr, json, csv, parquet."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """Your file's (or dataset's) own names for the fields (data.columns.prompt=question ...); unset fields keep
    ours."""
    max_length: int = 192
    """Longest prompt+completion in tokens (>= 2: a prompt token and a completion token). Longer: keep the
    END of the prompt and the START of the completion."""
    max_train: int = 0
    """Use at most this many training records (0 = all)."""
    skip_bad: bool = False
    """Skip malformed records (the count is reported) instead of stopping at the first one."""
    assistant_turns: Literal["all", "last"] = "all"
    """SFT on multi-turn chat data: put loss on every assistant turn of a conversation (all: each reply and
    the end-of-turn marker its template writes) or on the final reply only (last: earlier replies are prompt).
    User and system turns and role headers never carry loss. Other stages use the final reply either way."""
    seed: int = 0
    """Seed of the generated task data (when `dir` is generated)."""

    def __post_init__(self):
        check_range(self, "max_length", 2)
        check_range(self, "max_train", 0)
        _check_seed(self)
        if self.dataset and self.train_file:
            raise FieldError("dataset", "give data.dataset or data.train_file, not both")
        for name in ("subset", "split", "eval_split"):
            if getattr(self, name) and not self.dataset:
                raise FieldError(name, f"'{getattr(self, name)}' needs data.dataset (a dataset's {name})")
        if self.eval_split and self.eval_file:
            raise FieldError("eval_split", "give data.eval_split or data.eval_file, not both")
        if self.eval_split and self.eval_split == (self.split or "train"):
            raise FieldError("eval_split", f"'{self.eval_split}' is the training split too; hold out another one")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    """Peak learning rate of AdamW. Each stage has its own default, chosen by situation when unset: LoRA or
    full fine-tuning, a preset or a pretrained model.path (config/situations.py)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    max_steps: int = 300
    """Optimizer steps (each of batch_size * grad_accum examples). 0 = `epochs` over the data (offline
    stages only; an online step is one rollout batch). Setting train.epochs alone sets this to 0."""
    epochs: float = 1.0
    """Passes over the data when max_steps is 0 (sft, reward, dpo, kto). Given without train.max_steps
    (`train.epochs=3`), it replaces the stage's step count."""
    batch_size: int = 32
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Autocast dtype: bf16 (AMX on CPU, tensor cores on CUDA), fp32, or auto (bf16 where supported)."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    threads: int = 0
    """torch CPU threads (0 = auto: one per core, fewer when other processes keep cores busy)."""
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
    A random-init preset has had no pretraining: weight 1 (the SFT default) teaches it to read the prompt;
    use 0 (or ~0.1) for a pretrained model.path."""
    stop_after: int = 0
    """Stop after this many steps, keeping a checkpoint (time-boxed runs: run again to continue)."""
    share_prompt: bool = True
    """DPO family, KTO, RLOO/GRPO and online DPO: run each prompt once and its completions on its key/value
    cache (prefix sharing) instead of prompt+completion per row. Same numbers, less compute when prompts
    are long; ignored (off) under model.gradient_checkpointing, which disables the cache."""
    packing: Literal["auto", True, False] = "auto"
    """SFT and reward model: lay each micro-batch's sequences end to end in a few rows (positions restart
    per sequence, attention never crosses one) instead of padding them to the longest. The same examples per
    step and the same loss (to rounding). true, false, or auto: packing where it was measured faster, which
    is nowhere yet: off on CPU (the padded batches are bucketed by length, 98 % real tokens on positive_review
    SFT; packed measured 1.00-1.03x for SFT, 0.95-0.98x for the reward model: docs/guides/benchmarks.md) and
    off on CUDA (not measured)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun (several processes): ddp replicates the model on every rank and averages gradients;
    fsdp shards parameters, gradients and optimizer state over the ranks (FSDP2 `fully_shard`) and writes
    sharded checkpoints (torch.distributed.checkpoint). Ignored in a single process."""
    report_to: tuple[Literal["tensorboard", "trackio", "wandb", "mlflow"], ...] = ()
    """Experiment trackers that also get every metrics.jsonl row (its numbers), from rank 0 only, offline: any
    of tensorboard, trackio, wandb, mlflow, e.g. `train.report_to=[tensorboard,mlflow]`. Each is an extra:
    `pip install 'tinyrlhf[tensorboard]'`. Where each writes and how to view it: docs/guides/tracking.md."""
    tracking_dir: str = ""
    """Where the trackers write: DIR/tb, DIR/trackio, DIR/wandb, DIR/mlruns ("" = the run directory). compare
    and loop set it to their --out, so all their stages land in one place."""
    run_name: str = ""
    """The run's name in the trackers ("" = out_dir); compare and loop name each stage `seed<N>-<stage>`."""
    tracking_project: str = "tinyrlhf"
    """The W&B and trackio project, and the MLflow experiment."""
    tracking_group: str = ""
    """Runs that belong together: the W&B and trackio group, MLflow's `group` tag. compare and loop set it to
    their --out's name."""

    def __post_init__(self):
        check_range(self, "lr", 0, lo_open=True)
        check_range(self, "weight_decay", 0)
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise FieldError("betas", f"each must be in [0, 1), got {list(self.betas)} (item {i + 1})")
        for name in ("warmup_steps", "max_steps", "threads", "eval_every", "save_every", "stop_after",
                     "max_grad_norm", "prompt_loss_weight", "save_minutes"):
            check_range(self, name, 0)
        check_range(self, "epochs", 0, lo_open=True)
        for name in ("batch_size", "grad_accum", "log_every"):
            check_range(self, name, 1)
        if not DEVICE.fullmatch(self.device):
            raise FieldError("device", f"'{self.device}' is not one of auto, cpu, cuda, cuda:N")
        if self.report_to and not self.tracking_project.strip():
            raise FieldError("tracking_project", "must not be empty while report_to names a tracker")


@dataclass(frozen=True)
class EvalConfig:
    n_prompts: int = 200
    """Held-out prompts sampled for the gold-reward score (0 = no evaluation during or after training)."""
    max_new_tokens: int = 24
    """Longest sampled completion (gold evaluation, reward normalisation, the did-the-policy-move check);
    0 = from the data's completion lengths (the default on your own data: config/situations.py)."""
    temperature: float = 1.0
    """Sampling temperature for the gold score (> 0; greedy is reported beside it as gold/greedy)."""
    batch_size: int = 64
    """Prompts per generation batch."""

    def __post_init__(self):
        check_range(self, "n_prompts", 0)
        check_range(self, "max_new_tokens", 0)
        check_range(self, "temperature", 0, lo_open=True)
        check_range(self, "batch_size", 1)


@dataclass(frozen=True)
class RunConfig:
    """Fields every training run has."""
    out_dir: str = "runs/run"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    seed: int = 0
    """The one seed for model init, data order and sampling."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to start from: a local directory or a random-init preset."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters instead of full fine-tuning."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the training and held-out records come from."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, precision, logging and checkpoints."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Gold-reward evaluation during and after training (tasks with a gold reward)."""

    def __post_init__(self):
        if not self.out_dir.strip():
            raise FieldError("out_dir", "is empty")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise FieldError("out_dir", f"'{self.out_dir}' is a file, not a directory")
        _check_seed(self)
