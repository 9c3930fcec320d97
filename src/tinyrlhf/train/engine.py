"""Shared engine pieces: device and precision, optimizer and schedule, and the offline optimisation loop
that SFT, the reward model, DPO and KTO all use (each supplies its own batches, loss and evaluation).
The run directory (config.yaml, metrics, summary, final/, lock) is rundir.py; checkpoints are
checkpoint.py; when to save, signals and the NaN/inf checks are guard.py."""
from __future__ import annotations

import contextlib
import os
import random
import resource
import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.collate import BatchPlan
from ..errors import TinyRLHFError
from .guard import SaveSchedule, StopOnSignal, TrainingDiverged, check_weights
from .rundir import RunDir  # noqa: F401  (re-exported: loops import it from here)


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(cfg: TrainConfig) -> torch.device:
    from . import threads
    threads.apply(cfg.threads)
    from .. import dist
    if (rank_device := dist.init(cfg.device)) is not None:  # torchrun: this rank's GPU, or the CPU (gloo)
        return rank_device
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


def total_steps(cfg: TrainConfig, plan: BatchPlan) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, int(cfg.epochs * plan.per_epoch() / cfg.grad_accum))


def run_length(desc: str, examples: int, cfg: TrainConfig, batches_per_epoch: int, steps: int) -> str:
    """The line a run starts with: how many examples, steps and passes over the data (epochs)."""
    per_step = cfg.batch_size * cfg.grad_accum
    epochs = steps * per_step / max(examples, 1)
    how = f"train.epochs={cfg.epochs:g}" if cfg.max_steps == 0 else "train.max_steps"
    return (f"{desc}: {examples:,} examples, {per_step} per step ({batches_per_epoch / cfg.grad_accum:g} steps per "
            f"epoch); {steps:,} steps ({how}) = {epochs:.3g} epochs")


AUTO_PACKING = {"cpu": False, "cuda": False}
"""What train.packing=auto means per device type: on only where packing was measured faster. CPU: not
faster (benchmarks/bench_packing.py; the padded batches are length-bucketed, see docs/guides/benchmarks.md);
CUDA: not measured yet."""


def packing_on(cfg: TrainConfig, device: torch.device) -> bool:
    """train.packing resolved for `device`: true or false as given, auto from AUTO_PACKING."""
    return AUTO_PACKING.get(device.type, False) if cfg.packing == "auto" else bool(cfg.packing)


def batch_tokens(batch) -> int:
    """Tokens of the sequences in a batch: flat rows, a packed batch's real tokens, or a `pad_groups` batch
    counted as its k*B prompt+completion sequences (what a tokens/s figure is quoted in, however the prompt
    is shared)."""
    if "seq_ids" in batch:
        return int((batch["seq_ids"] >= 0).sum())
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    k = batch["completion_mask"].shape[0] // max(batch["prompt_mask"].shape[0], 1)
    return int(k * batch["prompt_mask"].sum() + batch["completion_mask"].sum())


def fit(run: RunDir, model: torch.nn.Module, cfg: TrainConfig, plan: BatchPlan, device: torch.device,
        make_batch: Callable[[list[int]], dict], loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
        evaluate: Callable[[], dict] | None = None, stop_after: int = 0, desc: str = "train") -> dict:
    """The offline optimisation loop: micro-batches -> loss -> backward (accumulated) -> clip -> step.

    `loss_fn(batch)` returns (mean loss, metrics of detached scalars) and runs under autocast.
    Logs to metrics.jsonl, evaluates every `eval_every`, checkpoints (guard.SaveSchedule) and resumes
    from the last checkpoint exactly: the loop's own state (the log_every averaging window, token and
    time counters, the last evaluation) travels in the checkpoint, so the rows and the summary after a
    resume equal an uninterrupted run's. Stops within one step on a NaN/inf loss, gradient or weight,
    and at the end of the step on SIGINT/SIGTERM after a checkpoint. Returns the training summary.

    Under torchrun (see tinyrlhf.dist) each micro-batch of `train.batch_size` examples is split over the
    ranks, `loss_fn` sees this rank's share (its loss must average over ranks to the global one: a mean
    over examples does; a token mean divides by dist.global_count), gradients are all-reduced by DDP (or
    reduce-scattered by FSDP2) on the last micro-step only, metrics are averaged over ranks, and rank 0
    alone writes the run directory."""
    from .. import dist
    from .parallel import between_steps, load_checkpoint, save_checkpoint
    dist.check_divisible(cfg.batch_size, "train.batch_size")
    steps = total_steps(cfg, plan)
    if dist.is_main():
        print(run_length(desc, len(plan.lengths), cfg, plan.per_epoch(), steps), flush=True)
    trainer = dist.Trainer({"model": model}, cfg.parallel, device)
    if dist.active():
        set_seed(dist.rank_seed(plan.seed))  # each rank its own dropout stream, rank 0 the run's
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    start, extra = 0, {}
    if cfg.resume and (loaded := load_checkpoint(run, trainer, {"model": model}, optimizer, scheduler)) is not None:
        start, extra = loaded
    run.truncate_metrics(start)  # rows after the checkpoint (or all but step 0's, without one) are redone
    batches = plan.iter_from(start * cfg.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens, train_time = extra.get("tokens", 0), extra.get("train_time", 0.0)
    last_eval: dict = extra.get("last_eval", {})
    window: dict[str, list[float]] = extra.get("window", {})
    schedule = SaveSchedule(cfg, steps)
    evaluates = evaluate is not None and (dist.is_main() or cfg.parallel == "fsdp")  # FSDP: all ranks, in step
    step = start
    with StopOnSignal() as stop, tqdm(total=steps, initial=start, desc=desc, disable=not cfg.progress
                                      or not dist.is_main(), dynamic_ncols=True) as pbar:
        for step in range(start + 1, steps + 1):
            model.train()
            t0 = time.perf_counter()
            for micro in range(cfg.grad_accum):
                idx = dist.shard(next(batches))
                batch = {k: v.to(device, non_blocking=True) for k, v in make_batch(idx).items()}
                with trainer.accumulating(last=micro == cfg.grad_accum - 1):
                    with autocast(device, cfg.precision):
                        loss, metrics = trainer.run(loss_fn, batch)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(run.diverged_message("the loss", loss.item(), step))
                    (loss / cfg.grad_accum).backward()
                metrics = dist.mean_metrics({"loss": loss.detach(), **metrics, "tokens": batch_tokens(batch)})
                tokens += round(metrics.pop("tokens") * dist.world())
                for k, v in metrics.items():
                    window.setdefault(k, []).append(float(v))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else 1e12)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
            if not torch.isfinite(grad_norm):
                raise TrainingDiverged(run.diverged_message("the gradient norm", grad_norm.item(), step))
            optimizer.step()
            check_weights(params, run, step)  # a finite gradient can still make an infinite update (lr=inf)
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
                if evaluates and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
                    with trainer.gathered():
                        last_eval = evaluate()
                    row.update(last_eval)
                run.log(row)
            elif evaluates and cfg.eval_every and step % cfg.eval_every == 0:
                with trainer.gathered():
                    last_eval = evaluate()
                run.log({"step": step, **last_eval})
            save_now, stopping = between_steps(stop, schedule, step)
            if save_now:
                save_checkpoint(run, trainer, {"model": model}, optimizer, scheduler, step, extra={
                    "tokens": tokens, "train_time": train_time, "last_eval": last_eval, "window": window})
                schedule.saved()
            if stopping and step < steps:
                raise stop.interrupted(run, step, steps)
            if stop_after and step == stop_after and step < steps:
                break
    summary = {"steps": step, "total_steps": steps, "finished": step == steps, "train_tokens": tokens,
               "train_seconds": train_time, "tokens_per_s": tokens / max(train_time, 1e-9),
               **peak_memory_mib(device), **last_eval}
    if dist.active():
        summary["world_size"] = dist.world()
    return summary
