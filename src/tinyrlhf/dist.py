"""Running past one process: the few torch.distributed pieces every loop uses.

A stage launched by torchrun (`torchrun --nproc-per-node 2 -m tinyrlhf sft ...`) finds RANK, WORLD_SIZE
and LOCAL_RANK in its environment; `init` joins the process group (gloo on CPU, NCCL on CUDA, one GPU
per local rank). Without those variables every function here is the single-process identity, so a plain
`tinyrlhf sft` runs exactly the code and the numbers it ran before.

Conventions the loops rely on:
- `train.batch_size` (and an online step's prompts) is GLOBAL: each rank takes its contiguous 1/world
  share (`shard`); a loss is "this rank's share", scaled so that its mean over ranks is the global-batch
  loss, which is what DDP's gradient averaging then optimises (`global_count` for token means).
- metrics are averaged over ranks (`mean_metrics`) before they are logged; only rank 0 logs and writes.
- every collective here is a plain torch.distributed call; nothing is sent any other way.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as td
from torch import nn

from .errors import ConfigError, TinyRLHFError


class PeerFailed(TinyRLHFError):
    """Raised on ranks > 0 when rank 0 refused to start (its `error:` line is the one the user sees)."""


def launched() -> bool:
    """True when this process was started by torchrun (or anything setting its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def world() -> int:
    return td.get_world_size() if active() else 1


def rank() -> int:
    return td.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init(device_setting: str) -> torch.device | None:
    """Join the process group when launched by torchrun; returns this rank's device (cuda:LOCAL_RANK under
    NCCL, cpu under gloo), or None when not launched (the caller picks the device as before)."""
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return None
    use_cuda = torch.cuda.is_available() and not device_setting.startswith("cpu")
    if use_cuda:
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank()} but this machine has {torch.cuda.device_count()} GPU(s): "
                              "use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not td.is_initialized():
        # a rank that stops answering (killed) must not hang the others forever
        td.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10),
                              **({"device_id": device} if use_cuda else {}))
    return device


def finish():
    """Leave the process group (at exit), so NCCL does not warn about an undestroyed group."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def peer_lost(error: BaseException) -> bool:
    """True for the error a collective raises on a rank whose peer died (torch.distributed's DistError, or
    gloo's / NCCL's RuntimeError about a closed connection)."""
    if not (td.is_available() and td.is_initialized()):
        return False
    if isinstance(error, getattr(td, "DistError", ())):
        return True
    text = str(error).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "peer"))


def _device() -> torch.device:
    """Where collectives' tensors live: NCCL needs them on this rank's GPU, gloo on the CPU."""
    if active() and td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_seed(seed: int, r: int | None = None) -> int:
    """This rank's seed for its own random draws (dropout), derived from the run seed; rank 0 keeps the
    run seed, so a one-process run draws what it always drew."""
    r = rank() if r is None else r
    return seed if r == 0 else (seed * 1_000_003 + 7_919 * r) % 2**63


def barrier():
    if active():
        td.barrier()


# ---------------------------------------------------------------- sharding

def check_divisible(value: int, what: str):
    """`value` (a global count: train.batch_size, rollout.prompts_per_step...) must split evenly over ranks."""
    if value % world():
        raise ConfigError(f"{what}={value} is global (all processes together): it must be divisible by the "
                          f"number of processes ({world()})")


def shard_range(n: int, r: int | None = None, w: int | None = None) -> slice:
    """This rank's contiguous part of n items: equal parts when w divides n, else the first n % w ranks
    take one more."""
    r, w = (rank() if r is None else r), (world() if w is None else w)
    size, extra = divmod(n, w)
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def shard(items):
    """This rank's contiguous share of a list (or tensor) of global items."""
    return items[shard_range(len(items))]


# ---------------------------------------------------------------- reductions

def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor on x's device; x itself is untouched)."""
    if not active():
        return x
    y = x.detach().to(_device(), copy=True)
    td.all_reduce(y)
    return y.to(x.device)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world() if active() else x


def global_count(count: torch.Tensor) -> torch.Tensor:
    """The denominator of a token mean over the GLOBAL micro-batch, per rank: (sum of count over ranks) /
    world. `local_sum / global_count(local_count)` averaged over ranks (as DDP averages gradients) is the
    global token mean; with one process it is exactly `local_sum / count.clamp(min=1)`."""
    if not active():
        return count.clamp(min=1)
    return all_reduce_sum(count).clamp(min=1) / world()


def mean_metrics(metrics: dict) -> dict:
    """Scalar metrics of this rank's share of a batch, made those of the whole batch (one all_reduce; every
    rank passes the same keys): `count_X` adds up over ranks, a metric `Y_X` beside a `count_X` (KTO's
    rewards_desirable) is averaged weighted by that count, any other is averaged over ranks."""
    if not active() or not metrics:
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    weight = {k: f"count_{k.split('_', 1)[1]}" for k in keys
              if "_" in k and not k.startswith("count_") and f"count_{k.split('_', 1)[1]}" in metrics}
    t = torch.tensor([float(metrics[k]) * (float(metrics[weight[k]]) if k in weight else 1.0) for k in keys],
                     dtype=torch.float64, device=_device())
    td.all_reduce(t)
    total = dict(zip(keys, t.tolist()))
    return {k: total[k] if k.startswith("count_") else
            total[k] / total[weight[k]] if k in weight and total[weight[k]] else
            0.0 if k in weight else total[k] / world() for k in keys}


def any_true(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over ranks (one all_reduce): decisions every rank must take together (stop, save)."""
    if not active():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64, device=_device())
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (pickled; for small CPU objects: rollouts, RNG states)."""
    if not active():
        return [obj]
    out = [None] * world()
    td.all_gather_object(out, obj)
    return out


def cat_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t` (its share of a batch, in rank order) concatenated along dim 0, on every rank."""
    if not active():
        return t
    return torch.cat([s.to(t.device) for s in all_gather_object(t.detach().cpu())])


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    td.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- launching a stage

COMMANDS = {"SFTConfig": "sft", "RewardConfig": "reward", "PreferenceConfig": "dpo", "KTOConfig": "kto",
            "PPOConfig": "ppo", "OnlineDPOConfig": "online-dpo", "RSConfig": "rs"}


def torchrun(cfg, nproc: int) -> dict:
    """Run the stage of `cfg` as `torchrun --standalone --nproc-per-node N -m tinyrlhf <stage> --config`
    (the resolved config, written to a temporary file) and return its summary.json. Its output goes to
    <out_dir>.torchrun.log; a failure is one error naming that log and its last line."""
    import json
    import subprocess
    import sys
    import tempfile
    from .config import render_yaml
    name = type(cfg).__name__
    command = cfg.algo if name == "GroupConfig" else COMMANDS[name]
    log = f"{cfg.out_dir.rstrip('/')}.torchrun.log"
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(render_yaml(cfg))
    try:
        with open(log, "w") as out:
            rc = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc-per-node={nproc}", "-m", "tinyrlhf", command, "--config", f.name],
                                 stdout=out, stderr=subprocess.STDOUT)
    finally:
        os.remove(f.name)
    if rc != 0:
        with open(log, errors="replace") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.startswith("error: ")] or ["(no error line)"]
        raise TinyRLHFError(f"{command} under torchrun ({nproc} processes) failed with status {rc}: {lines[0]} "
                            f"(log: {log})")
    with open(os.path.join(cfg.out_dir, "summary.json")) as fh:
        return json.load(fh)


# ---------------------------------------------------------------- wrapping the trained modules

class Closure(nn.Module):
    """Holds the modules a loop trains, so that DDP sees their parameters; its forward runs a closure.

    The loops compute their losses through helpers that take the bare model (token_logps, the KV-cache
    prefix sharing, a reward model's `raw`); running those inside DDP's forward is all DDP needs to
    synchronise the gradients of the backward that follows."""

    def __init__(self, modules: dict):
        super().__init__()
        self.inner = nn.ModuleDict(modules)

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class Trainer:
    """The trained modules, as the step needs them: `run(fn, *args)` computes a loss inside the wrapper's
    forward, so that its backward synchronises gradients (DDP's all-reduce, FSDP2's reduce-scatter);
    `accumulating(last)` skips that on the non-final micro-steps of an accumulation; `gathered()` holds
    FSDP's root parameters (embeddings, head) whole for code that calls the model outside `run`
    (evaluation). With one process all three are the identity."""

    def __init__(self, modules: dict, parallel: str, device: torch.device):
        self.modules, self.parallel, self.wrapped = modules, parallel, None
        if not active():
            return
        if parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard
            for m in modules.values():
                shard_blocks(m)
            # the root unit holds what the blocks do not (embeddings, tied head, final norm); the loss
            # helpers call trunk and head separately, so the root's forward is the closure around them
            self.wrapped = fully_shard(Closure(modules))
        elif any(p.requires_grad for m in modules.values() for p in m.parameters()):
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [device.index] if device.type == "cuda" else None
            # the constructor broadcasts rank 0's parameters: every rank starts from the same weights
            self.wrapped = DDP(Closure(modules), device_ids=ids)

    def run(self, fn, *args, **kwargs):
        return self.wrapped(fn, *args, **kwargs) if self.wrapped is not None else fn(*args, **kwargs)

    def accumulating(self, last: bool):
        """Context for one micro-step's forward and backward: no gradient sync unless it is the last."""
        if last or self.wrapped is None:
            return contextlib.nullcontext()
        if self.parallel != "fsdp":
            return self.wrapped.no_sync()
        return _fsdp_no_sync(self.wrapped)

    @contextlib.contextmanager
    def gathered(self):
        if self.wrapped is None or self.parallel != "fsdp":
            yield
            return
        self.wrapped.unshard()
        try:
            yield
        finally:
            self.wrapped.reshard()


def shard_blocks(model: nn.Module):
    """FSDP2 (`fully_shard`) for each transformer block of a causal LM: its parameters become DTensors
    sharded over the ranks, all-gathered for its forward and backward."""
    from torch.distributed.fsdp import fully_shard
    from .loading import unwrap
    if hasattr(model, "get_base_model") or not hasattr(model, "config") or type(model).__name__ == "RewardModel":
        raise ConfigError("train.parallel=fsdp shards a plain causal LM (sft, the dpo family, kto without LoRA); "
                          "use train.parallel=ddp here (a LoRA adapter is small enough to replicate)")
    base = unwrap(model)
    blocks = (getattr(getattr(base, "transformer", None), "h", None)  # GPT-2
              or getattr(getattr(base, "model", None), "layers", []))  # Llama-style
    for block in blocks:
        fully_shard(block)


def is_sharded(model: nn.Module) -> bool:
    """True when some parameter of `model` is a DTensor (FSDP2)."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def _fsdp_no_sync(root):
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)
