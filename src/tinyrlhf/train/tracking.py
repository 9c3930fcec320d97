"""Experiment trackers (`train.report_to`): every row of metrics.jsonl also goes to TensorBoard, trackio, W&B
and/or MLflow, offline, from the process that owns the run directory (rank 0 under torchrun: the other ranks
hold a RunView, which logs nothing). Only numbers go (bools, strings, lists and non-finite values do not);
each row's "step" is the tracker's step. Each tracker is an optional extra, imported only when asked for.

Where they write (DIR = train.tracking_dir, or the run directory when that is empty):

    tensorboard  event files   DIR/tb/ (DIR/tb/<run_name>/ with a tracking_dir)   tensorboard --logdir DIR
    trackio      SQLite store  DIR/trackio/ (or TRACKIO_DIR)                      TRACKIO_DIR=DIR/trackio trackio show
    wandb        offline runs  DIR/wandb/offline-run-*/ (unless WANDB_MODE is set) wandb sync DIR/wandb/offline-run-*
    mlflow       file store    DIR/mlruns/ (or MLFLOW_TRACKING_URI)               mlflow ui --backend-store-uri DIR/mlruns

A resumed run continues the same tracker run (RUN/tracking.json keeps the W&B and MLflow run ids). When the
trackers open (at the first row a process logs) each is sent the rows of metrics.jsonl it does not hold yet,
so after a kill and a resume every tracker holds every row: TensorBoard hides all that earlier processes
wrote (purge_step 0) and gets the whole history again; MLflow and trackio skip the steps their store holds
(steps past the checkpoint that the killed process had logged keep those first values: the same numbers,
resume is exact, bar the wall-clock throughput); W&B, whose offline file is written every 15 s (what a kill
loses is unknown), gets the whole history again in the new offline folder (W&B ignores a step below the
run's current one). A tracker that fails while logging prints one line and is off for the rest of the run
(metrics.jsonl has every row); one that cannot start stops the run with one line.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import math
import os
import secrets
import sys
import time

from ..errors import ConfigError, TinyRLHFError

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")
MODULES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
STATE = "tracking.json"  # in the run directory: each tracker's run id (or store, or folder)


def check_installed(report_to) -> None:
    """One line naming the extra to install, for the first tracker of `report_to` that is missing."""
    for name in report_to:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise ConfigError(f"train.report_to includes {name}, which is not installed: "
                              f"pip install 'tinyrlhf[{name}]'", key="train.report_to")


def scalars(row: dict) -> dict[str, float]:
    """The numeric values of a metrics row, "step" aside."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class Tracking:
    """The trackers of one run directory: `log(row)` after each metrics.jsonl row (the first opens them and
    sends them the rows they lack: `read_rows()` gives metrics.jsonl's), `flush()` at each checkpoint,
    `close(finished)` at the end (or at exit)."""

    def __init__(self, run_path: str, train, config: dict, stage: str, read_rows):
        self.read_rows = read_rows
        self.names = tuple(dict.fromkeys(train.report_to))
        check_installed(self.names)
        self.run_path, self.config, self.stage = run_path, config, stage
        self.dir = train.tracking_dir or run_path
        self.shared = bool(train.tracking_dir)
        self.name = train.run_name or os.path.normpath(run_path)
        self.project, self.group = train.tracking_project, train.tracking_group
        self.state_file = os.path.join(run_path, STATE)
        self.backends: dict = {}
        self.opened = self.closed = False

    # ------------------------------------------------------------ the interface RunDir uses

    def log(self, row: dict):
        if self.closed or "step" not in row:
            return
        rows = [row]
        if not self.opened:
            self._open()
            rows = [r for r in self.read_rows() if "step" in r]  # this row is its last
        for r in rows:
            step, values = int(r["step"]), scalars(r)
            for name, backend in list(self.backends.items()):
                if values and step > backend.through:
                    self._guard(name, lambda: backend.log(step, values), step)

    def flush(self):
        if not self.backends:
            return
        for name, backend in list(self.backends.items()):
            self._guard(name, backend.flush, None)
        self._save_state()

    def close(self, finished: bool):
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self._at_exit)
        for name, backend in list(self.backends.items()):
            self._guard(name, lambda: backend.close(finished), None)
        if self.backends:
            self._save_state()

    # ------------------------------------------------------------ inside

    def _open(self):
        self.opened = True
        state = self._load_state()
        for name in self.names:
            try:
                backend = BACKENDS[name](self, state.get(name, {}))
            except Exception as e:  # noqa: BLE001 (a tracker's own error types; one line names it)
                self.close(finished=False)  # the ones already open
                raise TinyRLHFError(f"train.report_to: {name} could not start ({_line(e)})") from None
            self.backends[name] = backend
        self._save_state()
        atexit.register(self._at_exit)

    def _at_exit(self):
        self.close(finished=False)

    def _guard(self, name: str, fn, step):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            del self.backends[name]
            at = f" at step {step}" if step is not None else ""
            print(f"tracking: {name} failed{at} ({_line(e)}); it is off for the rest of this run (metrics.jsonl "
                  "has every row)", file=sys.stderr)

    def _load_state(self) -> dict:
        try:
            with open(self.state_file, encoding="utf-8") as f:
                state = json.load(f)
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self):
        from ..diskio import atomic_write
        state = {**self._load_state(), **{n: b.state() for n, b in self.backends.items()}}
        atomic_write(self.state_file, lambda f: f.write(json.dumps(state, indent=1)))


class TensorBoard:
    """Event files through torch.utils.tensorboard: one Summary per row (16x cheaper here than add_scalar per key);
    the config as a Markdown table of text (as cleanrl writes its hyperparameters)."""

    def __init__(self, t: Tracking, state: dict):
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
        self.summary = Summary
        self.through = -1
        self.dir = os.path.join(t.dir, "tb", t.name.strip("/")) if t.shared else os.path.join(t.dir, "tb")
        earlier = os.path.isdir(self.dir) and any(".tfevents." in f for f in os.listdir(self.dir))
        # purge_step: TensorBoard hides every event earlier files hold at this step or later (here: all)
        self.writer = SummaryWriter(self.dir, purge_step=0 if earlier else None, flush_secs=30)  # 30 s: a live view
        table = "\n".join(f"|{k}|{v}|" for k, v in t.config.items())
        self.writer.add_text("config", f"{t.stage} run `{t.run_path}`\n\n|key|value|\n|-|-|\n{table}", 0)

    def log(self, step: int, values: dict):
        self.writer.file_writer.add_summary(self.summary(value=[self.summary.Value(tag=k, simple_value=v)
                                                                for k, v in values.items()]), step)

    def flush(self):
        self.writer.flush()

    def close(self, finished: bool):
        self.writer.close()

    def state(self) -> dict:
        return {"dir": os.path.abspath(self.dir)}


class Trackio:
    """trackio's local store: TRACKIO_DIR is read once per process, when trackio is first imported; tinyrlhf
    points it at DIR/trackio unless it is set (or trackio was imported with another one: that store is used and
    named in tracking.json)."""

    def __init__(self, t: Tracking, state: dict):
        if "trackio" not in sys.modules:
            os.environ.setdefault("TRACKIO_DIR", os.path.abspath(os.path.join(t.dir, "trackio")))
        import trackio
        from trackio.sqlite_storage import SQLiteStorage
        resume = bool(state)
        with contextlib.redirect_stdout(io.StringIO()):  # its banner; tinyrlhf's own line says where it went
            self.run = trackio.init(project=t.project, name=t.name, group=t.group or None, config=t.config,
                                    resume="allow" if resume else "never", embed=False, auto_log_cpu=False,
                                    auto_log_gpu=False, capture_console=False)
        self.store = str(trackio.utils.TRACKIO_DIR)
        held = SQLiteStorage.get_max_step_for_run(t.project, t.name) if resume else None
        self.through = held if held is not None else -1

    def log(self, step: int, values: dict):
        self.run.log(values, step=step)
        self.through = step

    def flush(self):
        pass  # trackio's sender thread writes every few hundred ms; finish() writes the rest

    def close(self, finished: bool):
        import trackio
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()
        if trackio.context_vars.current_run.get() is self.run:  # else its own atexit finishes it again
            trackio.context_vars.current_run.set(None)

    def state(self) -> dict:
        return {"store": self.store, "name": self.run.name}


class WandB:
    """W&B offline (unless WANDB_MODE says otherwise): the id in tracking.json resumes the same run."""

    def __init__(self, t: Tracking, state: dict):
        import wandb
        self.id, self.through = state.get("id") or secrets.token_hex(4), -1
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                                  disable_git=True, save_code=False, x_save_requirements=False)
        self.run = wandb.init(project=t.project, group=t.group or None, name=t.name, id=self.id, dir=t.dir,
                              resume="allow", mode=os.environ.get("WANDB_MODE") or "offline",
                              config=t.config, settings=settings, reinit="create_new")

    def log(self, step: int, values: dict):
        self.run.log(values, step=step)

    def flush(self):
        pass  # W&B's service writes its file every 15 s (x_transaction_log_flush_interval) and at the end

    def close(self, finished: bool):
        self.run.finish(exit_code=0 if finished else 1)

    def state(self) -> dict:
        return {"id": self.id}


class MLflow:
    """MLflow through MlflowClient (no global active run): a local file store unless MLFLOW_TRACKING_URI is set.
    Keys are logged with '.' for '/' (`kl/coef` -> `kl.coef`): the file store keeps a file per key, and `kl`
    is one too."""

    def __init__(self, t: Tracking, state: dict):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or _file_uri(os.path.join(t.dir, "mlruns"))
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless asked for it explicitly
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        self.metric, self.client = Metric, MlflowClient(tracking_uri=uri)
        self.uri, self.through = uri, -1
        self.run_id = state.get("run_id") if state.get("uri") == uri else None
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            run = self.client.get_run(self.run_id)
            steps = [m.step for key in run.data.metrics for m in self.client.get_metric_history(self.run_id, key)]
            self.through = max(steps, default=-1)
            return
        exp = self.client.get_experiment_by_name(t.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(t.project)
        tags = {"stage": t.stage, "out_dir": t.run_path, **({"group": t.group} if t.group else {})}
        self.run_id = self.client.create_run(exp_id, run_name=t.name, tags=tags).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in t.config.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, values: dict):
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k.replace("/", "."), v, now, step)
                                                    for k, v in values.items()])
        self.through = step

    def flush(self):
        pass  # the client writes each batch at once

    def close(self, finished: bool):
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")

    def state(self) -> dict:
        return {"run_id": self.run_id, "uri": self.uri}


def _line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _file_uri(path: str) -> str:
    from pathlib import Path
    return Path(os.path.abspath(path)).as_uri()


BACKENDS = {"tensorboard": TensorBoard, "trackio": Trackio, "wandb": WandB, "mlflow": MLflow}
