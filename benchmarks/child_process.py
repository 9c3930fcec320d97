"""Pieces the TRL benchmarks share: package versions, the offline environment of a child process, and
running one child (its own subprocess, so each side's peak RSS is its own) with a log and a timeout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tinyrlhf"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def child_env(workdir: str, **extra) -> dict:
    """Offline, quiet, no telemetry: nothing in a child may reach the network."""
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", HF_HOME=os.path.join(workdir, "hf_home"), WANDB_DISABLED="true",
                PYTHONWARNINGS="ignore", **extra)


def run_subprocess(script: str, args: list[str], env: dict, log_path: str, result_path: str, tag: str,
                   timeout: int) -> dict:
    """Run `python script args`; its JSON result plus wall time, or {"error"} with the log's tail printed."""
    t = time.time()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run([sys.executable, os.path.abspath(script), *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t
    if rc == 0 and os.path.isfile(result_path):
        with open(result_path) as f:
            return {**json.load(f), "wall_s": wall}
    with open(log_path) as f:
        tail = f.read().strip().splitlines()[-15:]
    print(f"  {tag}: FAILED (exit {rc}); last lines of {log_path}:", file=sys.stderr)
    for line in tail:
        print("    " + line, file=sys.stderr)
    return {"error": f"exit {rc}", "wall_s": wall}


def timed(phases, fn, label_of, before=None):
    """Wrap `fn` so each call adds its seconds to `phases` under `label_of(*args)` (None: not counted);
    `before()` runs first (e.g. to note the memory before the first rollout)."""
    def wrapped(*args, **kwargs):
        if before is not None:
            before()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if (label := label_of(*args)) is not None:
            phases.add(label, time.perf_counter() - t)
        return out
    return wrapped
