"""Crash-safe checkpoints and atomic files.

A checkpoint is a directory with `state.pt` (model(s), optimizer, scheduler, RNG states, loop state) and
`manifest.json` (step, and the size and sha256 of every file), written last. Layout under checkpoints/:

    last/       the newest complete checkpoint
    prev/       the one before it: used when last/ fails its checksums (a truncated or corrupt file)
    last.tmp/   a checkpoint being written; complete only once its manifest is in place

A save writes last.tmp/ completely (fsync each file, then the directory), then rotates last/ -> prev/
and renames last.tmp/ -> last/. Every state on disk between those steps, whatever moment a `kill -9`
or a power loss picks, holds at least one complete checkpoint, and `load_latest` finds the newest
(finishing an interrupted rotation first). The write-to-temp, fsync, rename, fsync-the-directory order
is the one POSIX needs for a rename to be durable (see e.g. the LWN article "Ensuring data reaches disk").
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from typing import Callable

import numpy as np
import torch

from ..diskio import atomic_write, fsync_dir
from ..errors import TinyRLHFError

STATE, MANIFEST = "state.pt", "manifest.json"


# ------------------------------------------------------------------ atomic files

def fsync_file(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str):
    """fsync every file and directory under `path` (a model directory about to be published)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def write_atomic(path: str, text: str):
    """Replace `path` with `text` so that a crash leaves either the old or the new file, never a mix; a
    full or read-only disk is a DiskError naming the file (diskio.atomic_write), its temporary file removed."""
    folder, name = os.path.split(path)
    atomic_write(path, lambda f: f.write(text), tmp=os.path.join(folder, f".{name}.tmp"))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class _HashingWriter:
    """A write-only file object that hashes what passes through it (torch.save only calls write)."""

    def __init__(self, f):
        self.f, self.sha, self.count = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.count += len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


# ------------------------------------------------------------------ state

def collect_state(modules: dict, optimizer, scheduler, step: int, extra: dict | None) -> dict:
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
             "modules": {k: m.state_dict() for k, m in modules.items()}, "extra": extra or {}}
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_state(state: dict, modules: dict, optimizer, scheduler):
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    if state["optimizer"] is not None:  # None: a sharded (FSDP) checkpoint keeps it beside, in sharded/
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


# ------------------------------------------------------------------ save

def save(root: str, state: dict, step: int, keep_written: bool = False):
    """Write `state` as checkpoint `step` under `root` (checkpoints/), keeping the previous one. With
    `keep_written`, last.tmp/ already holds files (the shards torch.distributed.checkpoint wrote from every
    rank): they stay, and the manifest checksums them too."""
    last, tmp, prev = (os.path.join(root, n) for n in ("last", "last.tmp", "prev"))
    if not keep_written:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(root, tmp, state, step, keep_written)
    except BaseException:  # a full disk (OSError, or torch's RuntimeError), a signal: last/ and prev/ stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _rotate(root, last, tmp, prev)


def _write(root: str, tmp: str, state: dict, step: int, keep_written: bool):
    """last.tmp/ complete: state.pt (and the shards already there), then the manifest, all fsync'ed."""
    os.makedirs(tmp, exist_ok=True)
    path = os.path.join(tmp, STATE)
    with open(path, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(state, writer)  # hashed as it is written: no second pass over a 1.4 GB gpt2-small state
        f.flush()
        os.fsync(f.fileno())
    size = os.path.getsize(path)
    digest = writer.sha.hexdigest() if writer.count == size else sha256(path)  # (a torch that seeks: re-read)
    files = {STATE: {"bytes": size, "sha256": digest}}
    if keep_written:
        for folder, _dirs, names in os.walk(tmp):
            for name in names:
                rel = os.path.relpath(os.path.join(folder, name), tmp)
                if rel != STATE:
                    fsync_file(os.path.join(folder, name))
                    file = os.path.join(tmp, rel)
                    files[rel] = {"bytes": os.path.getsize(file), "sha256": sha256(file)}
    manifest = {"format": 1, "step": step, "files": files}
    write_atomic(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1))  # complete from here on
    fsync_dir(root)


def _rotate(root: str, last: str, tmp: str, prev: str):
    """last -> prev, last.tmp -> last. prev is renamed away before it is deleted, so it is never half gone."""
    if os.path.isdir(last):
        if os.path.isdir(prev):
            os.replace(prev, prev + ".del")
        os.replace(last, prev)
    os.replace(tmp, last)
    fsync_dir(root)
    shutil.rmtree(prev + ".del", ignore_errors=True)


# ------------------------------------------------------------------ verify and load

def verify(path: str) -> tuple[dict | None, str]:
    """(manifest, '') if the checkpoint at `path` is complete and every file matches its checksum,
    else (None, what is wrong). A checkpoint written before manifests existed counts as unverified-legacy."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        if os.path.isfile(os.path.join(path, STATE)) and not path.endswith(".tmp"):
            return {"legacy": True}, ""
        return None, "incomplete (no manifest)"
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
        files, step = manifest["files"], int(manifest["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None, "manifest.json is unreadable"
    for name, want in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return None, f"{name} is missing"
        if os.path.getsize(file) != want["bytes"]:
            return None, f"{name} has {os.path.getsize(file)} bytes, the manifest says {want['bytes']} (truncated?)"
        if sha256(file) != want["sha256"]:
            return None, f"{name} does not match its sha256 (corrupt)"
    return {**manifest, "step": step}, ""


def newest_step(root: str) -> int | None:
    """The step of the newest checkpoint whose manifest is in place (no checksums read: for messages)."""
    steps = []
    for name in ("last", "last.tmp", "prev"):
        try:
            with open(os.path.join(root, name, MANIFEST), encoding="utf-8") as f:
                steps.append(int(json.load(f)["step"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(steps, default=None)


def _finish_rotation(root: str, log: Callable[[str], None]):
    """A crash during `save` may leave a complete last.tmp/ (the newest checkpoint) beside last/ and prev/:
    finish the rotation. An incomplete last.tmp/ is the partial write of a killed save: drop it."""
    last, tmp, prev = (os.path.join(root, n) for n in ("last", "last.tmp", "prev"))
    shutil.rmtree(prev + ".del", ignore_errors=True)
    if not os.path.isdir(tmp):
        return
    manifest, _ = verify(tmp)
    if manifest is None:
        shutil.rmtree(tmp)
        return
    _rotate(root, last, tmp, prev)
    log(f"completed the interrupted checkpoint write of step {manifest['step']} in {last}")


def load_latest(root: str, log: Callable[[str], None] = print) -> dict | None:
    """The state of the newest intact checkpoint under `root`, or None if there is none yet. If last/ fails
    its checksums (or cannot be loaded) and prev/ is intact, last/ is moved to `corrupt-last/` (kept, never
    reused) and prev/ is used, with a message. If none is intact, a TinyRLHFError says so and nothing moves."""
    if not os.path.isdir(root):
        return None
    _finish_rotation(root, log)
    problems = []
    for name in ("last", "prev"):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        manifest, problem = verify(path)
        if manifest is not None:
            try:
                state = torch.load(os.path.join(path, STATE), weights_only=False, map_location="cpu")
            except Exception as e:  # a checksum-valid file torch cannot read, or a broken legacy one
                problem = f"{STATE} cannot be loaded ({type(e).__name__})"
            else:
                for bad, what in problems:
                    aside = os.path.join(root, f"corrupt-{os.path.basename(bad)}")
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(bad, aside)
                    log(f"warning: checkpoint {bad}: {what}; moved to {aside}, resuming from {path} "
                        f"(step {state['step']}) instead")
                state["path"] = path  # which one (ranks > 0 of a torchrun job read the same)
                return state
        problems.append((path, problem))
    if problems:
        raise TinyRLHFError(f"no intact checkpoint in {root} (" + "; ".join(f"{p}: {w}" for p, w in problems)
                            + "): delete that directory to start this run over, or use --force-new")
    return None
