"""What the training loops do differently under torchrun, in one place: checkpoints (rank 0 writes them;
under FSDP every rank writes its shards through torch.distributed.checkpoint), resume (every rank reads
the checkpoint rank 0 picked), the decisions all ranks take together between steps, and the final model
(rank 0 writes it; FSDP gathers the full weights first). With one process each is the plain RunDir call.
"""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import torch

from .. import dist
from . import checkpoint as ckpt

SHARDED = "sharded"  # the torch.distributed.checkpoint directory inside an FSDP checkpoint


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def between_steps(stop, schedule, step: int) -> tuple[bool, bool]:
    """(checkpoint now, stop now), the same on every rank: a signal that reached one rank stops them all,
    and the save_minutes clock of rank 0's decides for everyone (a checkpoint is a collective under FSDP)."""
    stopping = stop.signum is not None
    due = schedule.due(step, stopping)
    if not dist.active():
        return due, stopping
    due, any_stop = dist.any_true(due and dist.is_main() or stopping, stopping)
    if any_stop and stop.signum is None:
        import signal
        stop.signum = signal.SIGTERM  # a peer was stopped: stop with it, after the same checkpoint
    return due, any_stop


def save_checkpoint(run, trainer, modules: dict, optimizer, scheduler, step: int, extra: dict):
    """Checkpoint `step`. One process: RunDir.save_checkpoint. DDP: rank 0 saves (every rank's RNG state
    travels with it, so each resumes its own dropout stream). FSDP: every rank writes its shards of the
    model and optimizer into last.tmp/sharded/, then rank 0 adds state.pt and the manifest and rotates."""
    if not dist.active():
        run.save_checkpoint(modules, optimizer, scheduler, step, extra=extra)
        return
    extra = {**extra, "rng_ranks": dist.all_gather_object(rng_state())}
    if trainer.parallel != "fsdp":
        if dist.is_main():
            run.save_checkpoint(modules, optimizer, scheduler, step, extra=extra)
        dist.barrier()
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp = os.path.join(run.checkpoints, "last.tmp")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(_only(modules), optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(tmp, SHARDED))
    if dist.is_main():
        state = ckpt.collect_state({}, optimizer, scheduler, step, extra)
        state["optimizer"] = None  # in sharded/
        if os.path.isfile(run.metrics_file):
            ckpt.fsync_file(run.metrics_file)
        ckpt.save(run.checkpoints, state, step, keep_written=True)
        run.checkpoint_step = step
    dist.barrier()


def load_checkpoint(run, trainer, modules: dict, optimizer, scheduler) -> tuple[int, dict] | None:
    """Resume from the newest intact checkpoint: rank 0 picks it (verifying checksums, finishing an
    interrupted rotation); the others read the same one. None when there is none."""
    if not dist.active():
        return run.load_checkpoint(modules, optimizer, scheduler)
    fsdp = trainer.parallel == "fsdp"
    path = None
    if dist.is_main():
        state = ckpt.load_latest(run.checkpoints, log=print)
        path = state.get("path") if state is not None else None
    path = dist.broadcast_object(path)
    if path is None:
        return None
    if not dist.is_main():
        state = torch.load(os.path.join(path, ckpt.STATE), weights_only=False, map_location="cpu")
    if fsdp != (state["optimizer"] is None):
        from ..errors import ConfigError
        raise ConfigError(f"{path} was written with train.parallel={'ddp' if fsdp else 'fsdp'}; resume it that way")
    ckpt.restore_state(state, {} if fsdp else modules, optimizer, scheduler)
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        model_sd, optim_sd = get_state_dict(_only(modules), optimizer)
        sharded = {"model": model_sd, "optim": optim_sd}
        dcp.load(sharded, checkpoint_id=os.path.join(path, SHARDED))
        set_state_dict(_only(modules), optimizer, model_state_dict=sharded["model"],
                       optim_state_dict=sharded["optim"])
    extra = state.get("extra", {})
    ranks = extra.pop("rng_ranks", None)
    if ranks is not None and len(ranks) == dist.world():
        set_rng_state(ranks[dist.rank()])
    run.checkpoint_step = state["step"]
    return state["step"], extra


def _only(modules: dict):
    if len(modules) != 1:
        from ..errors import ConfigError
        raise ConfigError("train.parallel=fsdp trains one model per stage (sft, dpo family, kto); use ddp here")
    return next(iter(modules.values()))


def save_final(run, model, tokenizer, merge_lora: bool, save_hf):
    """Write the final model for `run` to publish with `save_hf` (models.save_hf, as the loop module names
    it), on rank 0 only. Under FSDP the full weights are gathered first (a collective: every rank calls
    this) into an unsharded copy of the model."""
    from ..loading import unwrap
    if dist.active() and dist.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.is_main():
            base = unwrap(model)
            plain = type(base)(base.config)
            plain.load_state_dict(full)
            with run.disk_errors("could not write the final model in", run.final, cleanup=[run.final]):
                save_hf(plain, tokenizer, run.final, merge_lora=merge_lora)
        dist.barrier()
        return
    if run.writes:  # a full disk: one line, the half-written staging directory removed, the checkpoint kept
        with run.disk_errors("could not write the final model in", run.final, cleanup=[run.final]):
            save_hf(model, tokenizer, run.final, merge_lora=merge_lora)
