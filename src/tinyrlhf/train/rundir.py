"""The run directory every loop writes, and what keeps it trustworthy:

    config.yaml      the resolved config, written once when the run starts and never rewritten
    metrics.jsonl    one JSON row per log step; rows after the checkpoint resumed from are dropped
    summary.json     finished=true only once final/ and its evaluation are complete
    checkpoints/     last/ and prev/, each with a manifest of sha256 checksums (checkpoint.py)
    final/           the Hugging Face directory, published whole by a rename
    .lock            flock'ed by the process that owns the run (its pid inside)
    tracking.json    train.report_to's run ids (tracking.py); their logs in tb/, trackio/, wandb/, mlruns/

Identity: an existing run is resumed or reused only when its config matches the new one, apart from the
keys in HARMLESS; otherwise one error names the differing keys. A run that stopped before its first step
(no checkpoint, metrics, summary or final/) has no identity: a corrected command simply starts it.
`train.force_new` (`--force-new`) moves the old run aside to `<out_dir>.old-N` and starts anew: nothing is
ever mixed or silently deleted.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import weakref

import numpy as np
import torch
import yaml

from ..config import config_to_dict
from ..diskio import disk_errors
from ..loading import STAGING
from ..errors import ConfigError, DataError
from . import checkpoint as ckpt
from .runconfig import HARMLESS, config_differences, flat, suggest_out_dir  # noqa: F401
from .tracking import Tracking
from .runlock import RunInUse, acquire, release  # noqa: F401 (RunInUse: re-exported)

STAGES = {"SFTConfig": "sft", "RewardConfig": "reward", "PreferenceConfig": "dpo", "KTOConfig": "kto",
          "PPOConfig": "ppo", "GroupConfig": "rloo/grpo/reinforce-pp", "OnlineDPOConfig": "online-dpo",
          "RSConfig": "rs"}
HEADER = "# tinyrlhf {cls} run config: written once when the run started, never rewritten\n"
_HEADER_RE = re.compile(r"^# tinyrlhf (\w+) run config")


def stage_name(cfg) -> str:
    """The command a config belongs to, as messages name it: sft, reward, dpo|ipo|..., kto, ppo, rloo|grpo,
    online-dpo."""
    name = type(cfg).__name__
    if name == "PreferenceConfig":
        return cfg.loss
    if name == "GroupConfig":
        return cfg.algo
    return STAGES.get(name, name)


_ACTIVE: list = []  # weak references to the runs opened and not yet finished (for interrupted_note)


def interrupted_note() -> str:
    """What a Ctrl-C outside a training step leaves behind, for the CLI's message (true by construction:
    read from the checkpoints on disk)."""
    runs = [r for r in (ref() for ref in _ACTIVE) if r is not None]
    if not runs:
        return "nothing was being trained; finished runs are kept, run the same command again to continue"
    run = runs[-1]
    step = ckpt.newest_step(run.checkpoints)
    if step is None:
        return f"{run.path} has no checkpoint yet: running the same command again starts it from step 0"
    return f"{run.path} has a checkpoint at step {step}: run the same command again to continue from it"


class RunDir:
    """One run's directory, owned by this process while the object lives (see the module docstring).

    `final` is where a loop writes its final model: a staging directory that `write_summary` publishes
    as `final/` (one rename) just before it writes summary.json with finished=true."""

    writes = True  # the process that owns the directory (rank 0 under torchrun; see RunView)

    def __init__(self, path: str, config, resume: bool = True, force_new: bool = False):
        self.path = path
        self.final_dir = os.path.join(path, "final")
        self.final = os.path.join(path, STAGING)  # published as final/ by write_summary
        self.checkpoints = os.path.join(path, "checkpoints")
        self.ckpt = os.path.join(self.checkpoints, "last")
        self.metrics_file = os.path.join(path, "metrics.jsonl")
        self.summary_file = os.path.join(path, "summary.json")
        self.config_file = os.path.join(path, "config.yaml")
        self.config = config
        self.stage = stage_name(config)
        self.checkpoint_step: int | None = None  # the newest complete checkpoint on disk, once known
        train = getattr(config, "train", None)  # the trackers (opened on the first row; tracking.py)
        self.tracking = (Tracking(path, train, flat(config_to_dict(config)), self.stage,
                                  self.read_metrics)
                         if train is not None and train.report_to else None)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"out_dir '{path}' is a file, not a directory")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"out_dir '{path}': cannot create it ({e.strerror})") from None
        self._key = acquire(path)
        self._finalizer = weakref.finalize(self, release, self._key)
        try:
            if force_new and self._has_run_files():
                self._move_aside()
            self._check_identity(resume)
        except BaseException:
            self._finalizer()  # refused: let go of the directory at once
            raise
        _ACTIVE[:] = [r for r in _ACTIVE if r() is not None] + [weakref.ref(self)]
        if not os.path.isfile(self.config_file):
            text = HEADER.format(cls=type(config).__name__)
            ckpt.write_atomic(self.config_file, text + yaml.safe_dump(config_to_dict(config), sort_keys=False))

    def close(self):
        """Release the lock now (it is also released when the object goes away or the process dies)."""
        if self.tracking is not None:
            self.tracking.close(finished=False)
        self._finalizer()
        _ACTIVE[:] = [r for r in _ACTIVE if r() is not None and r() is not self]

    # ------------------------------------------------------------ identity

    def _has_run_files(self) -> bool:
        return any(not name.startswith(".") for name in os.listdir(self.path))

    def _move_aside(self):
        n = 1
        while os.path.exists(f"{self.path.rstrip('/')}.old-{n}"):
            n += 1
        old = f"{self.path.rstrip('/')}.old-{n}"
        try:
            os.replace(self.path, old)  # our lock file moves with it; we hold it until the new one is ours
        except OSError as e:
            raise ConfigError(f"--force-new: cannot move '{self.path}' to '{old}' ({e.strerror})") from None
        os.makedirs(self.path)
        self._finalizer()
        self._key = acquire(self.path)
        self._finalizer = weakref.finalize(self, release, self._key)
        print(f"--force-new: moved the existing run '{self.path}' to '{old}'")

    def _never_trained(self) -> bool:
        """True when the run on disk stopped before its first training step (bad data, a model that did not
        load, a typo found after config.yaml was written): no checkpoint, no metrics row past step 0, no
        summary and no final model. Such a run has no identity worth keeping."""
        if os.path.isdir(self.checkpoints) and os.listdir(self.checkpoints) or os.path.exists(self.summary_file) \
                or os.path.isdir(self.final_dir):
            return False
        try:
            return all(row.get("step", 0) == 0 for row in self.read_metrics())
        except DataError:
            return False

    def _check_identity(self, resume: bool):
        if os.path.isfile(self.config_file) and self._never_trained() and self._differs():
            for name in (self.config_file, self.metrics_file):  # its step-0 rows (scores before training) too
                if os.path.exists(name):
                    os.remove(name)
            print(f"note: {self.path} held a run that stopped before its first step; starting it with this config",
                  flush=True)
        if not os.path.isfile(self.config_file):
            if self._has_run_files():
                raise ConfigError(f"out_dir '{self.path}' is not empty and holds no config.yaml: it is not a "
                                  "tinyrlhf run; choose another out_dir (nothing was written)")
            return
        if not resume:
            raise ConfigError(f"run directory '{self.path}' already exists and train.resume=false: choose "
                              "another out_dir or use --force-new (nothing was overwritten)")
        try:
            with open(self.config_file, encoding="utf-8") as f:
                text = f.read()
            old = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{self.config_file}: unreadable ({type(e).__name__}); use another out_dir or "
                              "--force-new to move this run aside") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{self.config_file}: not a config mapping; use another out_dir or --force-new")
        hint = "use another out_dir or --force-new (train.force_new=true) to move the old run aside and start anew"
        match = _HEADER_RE.match(text)
        if match and match.group(1) != type(self.config).__name__:
            raise ConfigError(f"run directory '{self.path}' holds a {STAGES.get(match.group(1), match.group(1))} "
                              f"run, not a {self.stage} run (config.yaml unchanged): {hint}")
        diffs = config_differences(old, self.config)
        if diffs:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])
            more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
            raise ConfigError(f"run directory '{self.path}' holds a run with another config ({shown}{more}; "
                              f"config.yaml unchanged): use another out_dir (e.g. out_dir={suggest_out_dir(self.path, diffs)})"
                              " or --force-new (train.force_new=true) to move the old run aside and start anew")

    def _differs(self) -> bool:
        """Whether config.yaml on disk names another stage or another config than this run's (unreadable: yes)."""
        try:
            with open(self.config_file, encoding="utf-8") as f:
                text = f.read()
            old = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return True
        match = _HEADER_RE.match(text)
        return not isinstance(old, dict) or bool(match and match.group(1) != type(self.config).__name__) \
            or bool(config_differences(old, self.config))

    # ------------------------------------------------------------ summary, resume preparation

    def finished_summary(self) -> dict | None:
        """The summary of a finished run (final/ published and summary.json finished=true), else None."""
        summary = self.read_summary()
        if summary is not None and summary.get("finished") and os.path.isdir(self.final_dir):
            return summary
        return None

    def read_summary(self) -> dict | None:
        if not os.path.isfile(self.summary_file):
            return None
        try:
            with open(self.summary_file, encoding="utf-8") as f:
                summary = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON ({e}); delete it to redo the final evaluation from the last "
                            "checkpoint, or use --force-new", path=self.summary_file) from None
        if not isinstance(summary, dict):
            raise DataError("not a JSON object; delete it to redo the final evaluation from the last "
                            "checkpoint, or use --force-new", path=self.summary_file)
        return summary

    def prepare_resume(self):
        """Before an unfinished run continues: drop a half-written metrics row (a kill during the append)
        and the leftovers of an interrupted final/ publication. A corrupt row elsewhere is an error."""
        self.truncate_metrics(None)
        for leftover in (self.final, self.final_dir + ".old"):
            shutil.rmtree(leftover, ignore_errors=True)

    # ------------------------------------------------------------ metrics

    def log(self, metrics: dict):
        with self.disk_errors("could not append a row to", self.metrics_file):
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(row := {k: _plain(v) for k, v in metrics.items()}) + "\n")
        if self.tracking is not None:
            self.tracking.log(row)

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl. A last line without its newline (a kill during the append) is
        left out; any other unparsable line is a DataError naming it."""
        if not os.path.isfile(self.metrics_file):
            return []
        with open(self.metrics_file, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        rows = []
        for i, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError:
                if i == len(lines) and not line.endswith("\n"):
                    break  # torn final write: never completed, never counted
                raise DataError("not a JSON row; delete it (or the lines from it on) to continue the run, or "
                                "use --force-new", path=self.metrics_file, line=i) from None
            rows.append(row)
        return rows

    def truncate_metrics(self, after_step: int | None):
        """Keep the rows up to `after_step` (the checkpoint resumed from; 0 = none; None = all complete rows).
        The rewrite is atomic and happens only if something changes."""
        if not os.path.isfile(self.metrics_file):
            return
        rows = self.read_metrics()
        keep = [r for r in rows if after_step is None or r.get("step", 0) <= after_step]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        with open(self.metrics_file, encoding="utf-8", errors="replace") as f:
            if f.read() == text:
                return
        ckpt.write_atomic(self.metrics_file, text)

    # ------------------------------------------------------------ summary and final/

    def write_summary(self, summary: dict):
        """Write summary.json. With finished=true, first publish the final model the loop wrote to
        `self.final` as final/ (fsync'ed, one rename), so finished=true never points at a partial model."""
        if summary.get("finished") and os.path.isdir(self.final):
            with self.disk_errors("could not publish the final model", self.final_dir):
                ckpt.fsync_tree(self.final)
                old = self.final_dir + ".old"
                if os.path.isdir(self.final_dir):
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(self.final_dir, old)
                os.replace(self.final, self.final_dir)
                ckpt.fsync_dir(self.path)
                shutil.rmtree(old, ignore_errors=True)
        with self.disk_errors("could not write", self.summary_file):
            ckpt.write_atomic(self.summary_file, json.dumps({k: _plain(v) for k, v in summary.items()}, indent=2))
        if self.tracking is not None:
            self.tracking.close(finished=bool(summary.get("finished")))
        if summary.get("finished"):
            _ACTIVE[:] = [r for r in _ACTIVE if r() is not None and r() is not self]

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, modules: dict, optimizer, scheduler, step: int, extra: dict | None = None):
        """Model(s) + optimizer + scheduler + RNG states + `extra` loop state (checkpoint.save)."""
        with self.disk_errors(f"could not write the checkpoint of step {step} in", self.checkpoints):
            if os.path.isfile(self.metrics_file):  # the rows up to this step survive a crash with it
                ckpt.fsync_file(self.metrics_file)
            ckpt.save(self.checkpoints, ckpt.collect_state(modules, optimizer, scheduler, step, extra), step)
        self.checkpoint_step = step
        if self.tracking is not None:
            self.tracking.flush()

    def disk_errors(self, what: str, path: str, cleanup=()):
        """diskio.disk_errors with what a re-run resumes from: a full disk during a checkpoint, the final
        save or a metrics row is one line (DiskError), its temporary files removed, the last checkpoint kept."""
        kept = (f"the checkpoint of step {self.checkpoint_step} is kept: the same command resumes from it"
                if self.checkpoint_step is not None else "no checkpoint was written yet: the same command starts over")
        return disk_errors(what, path, cleanup=cleanup, after=kept)

    def load_checkpoint(self, modules: dict, optimizer, scheduler) -> tuple[int, dict] | None:
        """Restore the newest intact checkpoint (falling back to the previous one, with a message)."""
        state = ckpt.load_latest(self.checkpoints, log=print)
        if state is None:
            return None
        ckpt.restore_state(state, modules, optimizer, scheduler)
        self.checkpoint_step = state["step"]
        self.loaded_from = state.get("path")
        return state["step"], state.get("extra", {})

    def diverged_message(self, what: str, value, step: int) -> str:
        """A true message for a NaN/inf stop: the stage, the step, and which checkpoint (if any) is kept."""
        if self.checkpoint_step is not None:
            kept = (f"the last good checkpoint (step {self.checkpoint_step}) is kept in {self.ckpt}; nothing "
                    "after it was saved")
        else:
            kept = "no checkpoint had been written yet (nothing non-finite was saved)"
        return f"{self.stage}: {what} became {value} at step {step}; {kept} (a lower train.lr often helps)"


class RunView:
    """The run directory as ranks > 0 of a torchrun job see it: its paths, and nothing that writes. Rank 0
    owns the directory (a RunDir: lock, config, metrics, checkpoints, final/); the other ranks only read
    the checkpoint rank 0 chose when they resume (engine.load_checkpoint)."""

    writes = False

    def __init__(self, path: str, config):
        self.path, self.config, self.stage = path, config, stage_name(config)
        self.final_dir = os.path.join(path, "final")
        self.final = os.path.join(path, STAGING)
        self.checkpoints = os.path.join(path, "checkpoints")
        self.ckpt = os.path.join(self.checkpoints, "last")
        self.metrics_file = os.path.join(path, "metrics.jsonl")
        self.checkpoint_step: int | None = None

    def log(self, metrics: dict):
        pass

    def truncate_metrics(self, after_step):
        pass

    def prepare_resume(self):
        pass

    def write_summary(self, summary: dict):
        pass

    def close(self):
        pass

    diverged_message = RunDir.diverged_message
    disk_errors = RunDir.disk_errors


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
