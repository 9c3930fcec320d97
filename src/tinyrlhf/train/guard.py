"""What every training loop (offline `fit`, online `online_fit`) does between steps to lose no work and
never save a broken model: when to checkpoint (every N steps, every M minutes, at the end, at stop_after,
and after a SIGINT/SIGTERM), stopping cleanly on those signals, and the finite check of the weights."""
from __future__ import annotations

import signal
import sys
import threading
import time

from ..config import TrainConfig
from ..errors import TinyRLHFError


class TrainingDiverged(TinyRLHFError):
    """A loss, gradient or weight became NaN/inf; the last good checkpoint is kept."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped a run after a checkpoint. Not a TinyRLHFError: the CLI exits 128+signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopOnSignal:
    """While active (`with`), the first SIGINT or SIGTERM only asks the loop to stop at the end of the
    current step, after a checkpoint; a second one stops at once (KeyboardInterrupt). Outside the main
    thread (signals cannot be caught there) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step, once its checkpoint is written "
              "(again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            # a signal the parent set to be ignored (a background job's SIGINT) stays ignored
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                         if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def _restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __exit__(self, *exc):
        self._restore()
        return False

    def interrupted(self, run, step: int, steps: int) -> RunInterrupted:
        name = signal.Signals(self.signum).name
        return RunInterrupted(f"{run.stage}: stopped by {name} after step {step} of {steps}; checkpoint written "
                              f"({run.ckpt}, step {run.checkpoint_step}): run the same command again to continue",
                              self.signum)


class SaveSchedule:
    """When a checkpoint is due: every `save_every` steps, every `save_minutes` of wall time, at the last
    step, at `stop_after`, and at the end of the step in which a stop signal arrived."""

    def __init__(self, cfg: TrainConfig, steps: int):
        self.cfg, self.steps = cfg, steps
        self.last = time.monotonic()

    def due(self, step: int, stopping: bool) -> bool:
        cfg = self.cfg
        return bool((cfg.save_every and step % cfg.save_every == 0) or step == self.steps or stopping
                    or (cfg.stop_after and step == cfg.stop_after)
                    or (cfg.save_minutes > 0 and time.monotonic() - self.last >= 60 * cfg.save_minutes))

    def saved(self):
        self.last = time.monotonic()


def check_weights(params: list, run, step: int):
    """Raise TrainingDiverged if any trainable weight is NaN/inf after an optimizer step (e.g. an infinite
    learning rate: loss and gradient were finite, the update was not). One fused norm over all weights:
    0.15 ms a step on gpt2-tiny, 22 ms on gpt2-small (124M; a fused AdamW step there takes 79 ms)."""
    import torch  # (this module is imported by the CLI before anything needs torch)
    # (FSDP2: each rank checks its own shard; a rank that raises stops the job)
    norm = torch.nn.utils.get_total_norm([(p.to_local() if hasattr(p, "to_local") else p).detach() for p in params],
                                         foreach=True)
    if not torch.isfinite(norm):
        raise TrainingDiverged(run.diverged_message("the weights (after the optimizer step)", "NaN/inf", step))
