"""How many CPU threads torch uses: `train.threads=N` exactly, `0` (auto) one per core the machine leaves free.

Why auto looks at the machine: torch's default is one OpenMP thread per core, and every parallel region waits
for all of them. When another process keeps a core busy, the thread sharing that core is descheduled for whole
time slices while its partner waits, and a small model's many small regions pay that wait each time. Measured on
the 2-core CI machine with one core busy (a study chunk): SFT on gpt2-tiny ran 1,114 tokens/s with torch's 2
threads and 21,548 with 1 (19x). So auto samples /proc/stat for 0.1 s before a stage and uses the free cores.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

import torch

_DEFAULT: int | None = None  # torch's own count, read once before anything changes it
_LAST_NOTE: int | None = None


def cpu_times() -> tuple[int, int, int] | None:
    """(busy, total) jiffies summed over the machine's CPUs and how many CPUs /proc/stat lists; None off Linux."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    head = lines[0].split() if lines else []
    if len(head) < 5 or head[0] != "cpu":
        return None
    vals = [int(v) for v in head[1:9]]  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = vals[3] + vals[4]
    ncpu = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return sum(vals) - idle, sum(vals), max(ncpu, 1)


def busy_cores(window: float = 0.1, read: Callable = cpu_times, sleep: Callable = time.sleep) -> tuple[float, int] | None:
    """How many cores were busy over `window` seconds (all processes), and how many the sample covers."""
    a = read()
    sleep(window)
    b = read()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * b[2], b[2]


def pick(default: int, busy: tuple[float, int] | None) -> int:
    """Threads for auto: torch's default, lowered to the free cores (a core more than half busy counts as busy)."""
    if busy is None:
        return default
    load, ncpu = busy
    free = int(ncpu - load + 0.5)
    return max(1, min(default, free))


def apply(threads: int, sample: Callable = busy_cores) -> int:
    """Set torch's CPU threads for `train.threads` (0 = auto); says once on stderr when auto used fewer."""
    global _DEFAULT, _LAST_NOTE
    if _DEFAULT is None:
        _DEFAULT = torch.get_num_threads()
    if threads > 0:
        n = threads
    elif os.environ.get("OMP_NUM_THREADS") or _DEFAULT <= 1:  # the user (or torchrun) chose already
        n = _DEFAULT
    else:
        busy = sample()
        n = pick(_DEFAULT, busy)
        if n < _DEFAULT and n != _LAST_NOTE:
            print(f"train.threads=auto: other processes keep {busy[0]:.1f} of {busy[1]} cores busy, using {n} "
                  f"thread{'s' if n > 1 else ''} (torch's {_DEFAULT} would wait on them; train.threads=N to choose)",
                  file=sys.stderr)
        _LAST_NOTE = n
    torch.set_num_threads(n)
    return n
