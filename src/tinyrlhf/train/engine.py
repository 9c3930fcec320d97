"""Shared engine pieces: device and precision, optimizer and schedule, the run directory
(metrics.jsonl, summary.json, checkpoints/, final/), and the offline optimisation loop that SFT,
the reward model, DPO and KTO all use (each supplies its own batches, loss and evaluation)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import time
from typing import Callable

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..config import TrainConfig, config_to_dict
from ..data.collate import BatchPlan
from ..errors import TinyRLHFError


class TrainingDiverged(TinyRLHFError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda"):
        index = int(cfg.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise TinyRLHFError(f"train.device={cfg.device} but this machine has {torch.cuda.device_count()} "
                                "CUDA device(s)")
    return torch.device(cfg.device)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """What train.precision means on `device`: bf16 (auto, where supported) or fp32."""
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise TinyRLHFError("train.precision=bf16 but this GPU has no bf16 support")
        return torch.float32
    return torch.bfloat16


def autocast(device: torch.device, precision: str):
    """bf16 autocast (AMX on this CPU is ~10x fp32; tensor cores on CUDA); weights stay fp32 masters."""
    if compute_dtype(device, precision) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_optimizer(model: torch.nn.Module | None, cfg: TrainConfig, extra_params=()):
    """AdamW over the trainable parameters of `model` (may be None) and `extra_params`; no weight decay
    on biases and norm weights (1-D tensors)."""
    own = list(model.parameters()) if model is not None else []
    params = [p for p in own + list(extra_params) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters. Measured on this CPU for gpt2-small (1 thread): 0.051 s per
    # step against 0.282 s for the default foreach path. Older builds without it fall back to foreach.
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=min(cfg.warmup_steps, total_steps),
                         num_training_steps=total_steps)


def peak_memory_mib(device: torch.device | None = None) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device is not None and device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def current_rss_mib() -> float:
    """Resident memory now (not the peak), to check that memory stays flat across steps."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RunDir:
    """One directory layout for every run: config.yaml, metrics.jsonl, summary.json, checkpoints/, final/."""

    def __init__(self, path: str, config, resume: bool = True):
        self.path = path
        self.final = os.path.join(path, "final")
        self.ckpt = os.path.join(path, "checkpoints", "last")
        self.metrics_file = os.path.join(path, "metrics.jsonl")
        self.summary_file = os.path.join(path, "summary.json")
        if os.path.exists(path) and os.listdir(path) and not resume:
            raise TinyRLHFError(f"run directory '{path}' already exists and train.resume=false: "
                                "choose another out_dir (nothing was overwritten)")
        os.makedirs(path, exist_ok=True)
        self.config = config
        self._write_text("config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))

    def _write_text(self, name: str, text: str):
        tmp = os.path.join(self.path, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.path, name))

    def finished_summary(self) -> dict | None:
        if os.path.isfile(self.summary_file) and os.path.isdir(self.final):
            with open(self.summary_file) as f:
                summary = json.load(f)
            return summary if summary.get("finished") else None
        return None

    def log(self, metrics: dict):
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in metrics.items()}) + "\n")

    def truncate_metrics(self, after_step: int):
        """On resume, drop log lines written after the checkpoint we continue from."""
        if not os.path.isfile(self.metrics_file):
            return
        with open(self.metrics_file) as f:
            keep = [line for line in f if json.loads(line).get("step", 0) <= after_step]
        self._write_text("metrics.jsonl", "".join(keep))

    def write_summary(self, summary: dict):
        self._write_text("summary.json", json.dumps({k: _plain(v) for k, v in summary.items()}, indent=2))

    def save_checkpoint(self, modules: dict, optimizer, scheduler, step: int, extra: dict | None = None):
        """Model(s) + optimizer + scheduler + RNG states, written to a temp dir then renamed (atomic)."""
        tmp = self.ckpt + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                         "numpy": np.random.get_state()},
                 "modules": {k: {n: t for n, t in m.state_dict().items()} for k, m in modules.items()},
                 "extra": extra or {}}
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, os.path.join(tmp, "state.pt"))
        shutil.rmtree(self.ckpt, ignore_errors=True)
        os.replace(tmp, self.ckpt)

    def load_checkpoint(self, modules: dict, optimizer, scheduler) -> tuple[int, dict] | None:
        path = os.path.join(self.ckpt, "state.pt")
        if not os.path.isfile(path):
            return None
        state = torch.load(path, weights_only=False, map_location="cpu")
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return state["step"], state["extra"]


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def total_steps(cfg: TrainConfig, plan: BatchPlan) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, int(cfg.epochs * plan.per_epoch() / cfg.grad_accum))


def batch_tokens(batch) -> int:
    """Tokens of the sequences in a batch: flat rows, or a `pad_groups` batch counted as its k*B
    prompt+completion sequences (what a tokens/s figure is quoted in, however the prompt is shared)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    k = batch["completion_mask"].shape[0] // max(batch["prompt_mask"].shape[0], 1)
    return int(k * batch["prompt_mask"].sum() + batch["completion_mask"].sum())


def fit(run: RunDir, model: torch.nn.Module, cfg: TrainConfig, plan: BatchPlan, device: torch.device,
        make_batch: Callable[[list[int]], dict], loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
        evaluate: Callable[[], dict] | None = None, stop_after: int = 0, desc: str = "train") -> dict:
    """The offline optimisation loop: micro-batches -> loss -> backward (accumulated) -> clip -> step.

    `loss_fn(batch)` returns (mean loss, metrics of detached scalars) and runs under autocast.
    Logs to metrics.jsonl, evaluates every `eval_every`, checkpoints every `save_every` and resumes
    from the last checkpoint. Returns the training summary (throughput, memory, last metrics)."""
    steps = total_steps(cfg, plan)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    start = 0
    if cfg.resume:
        loaded = run.load_checkpoint({"model": model}, optimizer, scheduler)
        if loaded is not None:
            start = loaded[0]
            run.truncate_metrics(start)
    elif os.path.exists(run.metrics_file):
        os.remove(run.metrics_file)
    batches = plan.iter_from(start * cfg.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens = 0
    train_time = 0.0
    last_eval: dict = {}
    pbar = tqdm(total=steps, initial=start, desc=desc, disable=not cfg.progress, dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    step = start
    for step in range(start + 1, steps + 1):
        model.train()
        t0 = time.perf_counter()
        for _ in range(cfg.grad_accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in make_batch(next(batches)).items()}
            with autocast(device, cfg.precision):
                loss, metrics = loss_fn(batch)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}; the last good "
                                       f"checkpoint is kept in {run.ckpt}")
            (loss / cfg.grad_accum).backward()
            tokens += batch_tokens(batch)
            for k, v in {"loss": loss.detach(), **metrics}.items():
                window.setdefault(k, []).append(float(v))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else 1e12)
        if not torch.isfinite(grad_norm):
            raise TrainingDiverged(f"gradient norm became {grad_norm.item()} at step {step}; the last good "
                                   f"checkpoint is kept in {run.ckpt}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        window.setdefault("grad_norm", []).append(float(grad_norm))
        pbar.update(1)
        if step % cfg.log_every == 0 or step == steps:
            row = {"step": step, "lr": scheduler.get_last_lr()[0],
                   **{k: sum(v) / len(v) for k, v in window.items()},
                   "tokens_per_s": tokens / max(train_time, 1e-9)}
            window = {}
            pbar.set_postfix(loss=f"{row['loss']:.4f}")
            if evaluate is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
                last_eval = evaluate()
                row.update(last_eval)
            run.log(row)
        elif evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
            last_eval = evaluate()
            run.log({"step": step, **last_eval})
        if (cfg.save_every and step % cfg.save_every == 0) or step == steps \
                or (stop_after and step == stop_after):
            run.save_checkpoint({"model": model}, optimizer, scheduler, step)
        if stop_after and step == stop_after and step < steps:
            break
    pbar.close()
    return {"steps": step, "total_steps": steps, "finished": step == steps, "train_tokens": tokens,
            "train_seconds": train_time, "tokens_per_s": tokens / max(train_time, 1e-9),
            **peak_memory_mib(device), **last_eval}
