"""Experiment trackers (train.report_to; tinyrlhf/train/tracking.py): what each tracker wrote is read back with
its own reader (TensorBoard's event accumulator, MLflow's client on the file store, trackio's SQLite storage,
the records of W&B's offline .wandb file) and must hold exactly the numbers of metrics.jsonl, step for step:
on a plain run with evaluation rows, after a SIGKILL past a checkpoint and a resume, for an online stage, and
from rank 0 alone under torchrun. A tracker that is not installed is skipped; a missing one is one line
naming the extra to install; compare and loop name and group their stages."""
import glob
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
from unittest import mock

import pytest

from conftest import tiny_sft
from tinyrlhf.config import SFTConfig, load_config
from tinyrlhf.errors import ConfigError
from tinyrlhf.train import tracking

INSTALLED = [t for t in tracking.TRACKERS if importlib.util.find_spec(tracking.MODULES[t]) is not None]
REQUIRED = ("tensorboard", "mlflow")  # in pyproject's test extra: their tests run everywhere the suite does, never skip
TB_RTOL = 1e-6  # TensorBoard keeps a scalar as float32 (simple_value); the others keep float64
WALL_CLOCK = {"tokens_per_s", "time/step", "episodes_per_s", "mem/rss_mib"}  # the only numbers a resume redoes differently
SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def each_tracker():
    return pytest.mark.parametrize("name", [pytest.param(t, marks=pytest.mark.skipif(
        t not in INSTALLED and t not in REQUIRED, reason=f"{t} is not installed (pip install 'tinyrlhf[{t}]')")) for t in tracking.TRACKERS])


# ------------------------------------------------------------------ readers: {key: {step: value}}

def expected(run_dir: str) -> dict:
    out: dict = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for row in map(json.loads, f):
            for k, v in tracking.scalars(row).items():
                out.setdefault(k, {})[row["step"]] = v
    return out


def _series(pairs) -> dict:
    """{key: {step: value}} from (key, step, value); a step given twice must hold the same value (a wall-clock
    one aside: the first is kept, as W&B keeps it)."""
    out: dict = {}
    for k, step, v in pairs:
        held = out.setdefault(k, {})
        if step in held:
            assert k in WALL_CLOCK or held[step] == pytest.approx(v, rel=TB_RTOL), (k, step, held[step], v)
            continue
        held[step] = v
    return out


def read_tensorboard(log_dir: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    series = {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}
    for k, events in series.items():  # one event per step: what an earlier process wrote is purged
        assert len({s for s, _ in events}) == len(events), (k, events)
    return _series((k, s, v) for k, events in series.items() for s, v in events)


def read_mlflow(run_dir: str) -> dict:
    from mlflow.tracking import MlflowClient
    state = json.load(open(os.path.join(run_dir, "tracking.json")))["mlflow"]
    with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_FILE_STORE": "true"}):  # MLflow 3 asks for it
        client = MlflowClient(tracking_uri=state["uri"])
        run = client.get_run(state["run_id"])
        pairs = [(k.replace(".", "/"), m.step, m.value) for k in run.data.metrics
                 for m in client.get_metric_history(state["run_id"], k)]
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "sft"
    steps = [(k, s) for k, s, _ in pairs]
    assert len(steps) == len(set(steps)), "a step logged twice"
    return _series(pairs)


def read_trackio(run_dir: str) -> dict:
    """trackio's own reader (SQLiteStorage), in a child process: trackio reads TRACKIO_DIR once, at import."""
    cfg = load_config(SFTConfig, os.path.join(run_dir, "config.yaml"), [])
    state = json.load(open(os.path.join(run_dir, "tracking.json")))["trackio"]
    assert state["store"] == os.path.join(run_dir, "trackio")
    code = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage\n"
            "print(json.dumps(SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])))")
    logs = json.loads(subprocess.run([sys.executable, "-c", code, cfg.train.tracking_project, state["name"]],
                                     env={**os.environ, "TRACKIO_DIR": state["store"]}, capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1])
    steps = [log["step"] for log in logs]
    assert len(steps) == len(set(steps)), "a step logged twice"
    return _series((k, log["step"], v) for log in logs for k, v in log.items() if k not in ("step", "timestamp"))


def wandb_records(path: str) -> list:
    """The protobuf records of a .wandb file: a 7-byte header, then LevelDB-style log blocks of 32 KiB whose
    records (crc32, length, type: full/first/middle/last) carry one serialized wandb Record each."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, pos, buf, out = open(path, "rb").read(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += block - pos % block
            continue
        buf = data[pos + 7:pos + 7 + n] if kind in (1, 2) else buf + data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def read_wandb(tracking_dir: str, run_id: str | None = None) -> tuple[dict, list]:
    pairs, runs = [], []
    for path in sorted(glob.glob(os.path.join(tracking_dir, "wandb", "offline-run-*", "run-*.wandb"))):
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                runs.append(r.run)
            elif kind == "history" and (run_id is None or path.endswith(f"-{run_id}.wandb")):
                for item in r.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        pairs.append((key, r.history.step.num, json.loads(item.value_json)))
    return _series(pairs), runs  # a row W&B got after its last flush and again after a resume: same values


def read(name: str, run_dir: str) -> dict:
    if name == "tensorboard":
        return read_tensorboard(os.path.join(run_dir, "tb"))
    if name == "wandb":
        return read_wandb(run_dir)[0]
    return {"mlflow": read_mlflow, "trackio": read_trackio}[name](run_dir)


def same(name: str, got: dict, want: dict, redone=()):
    """`got` holds every number of `want` at its step, and nothing else. The steps `redone` after a resume keep
    the tracker's first values, except in TensorBoard: equal ones, bar the wall-clock throughput and memory."""
    assert want and set(got) == set(want), (sorted(got), sorted(want))
    for k, by_step in want.items():
        assert sorted(got[k]) == sorted(by_step), (k, sorted(got[k]), sorted(by_step))
        steps = [s for s in sorted(by_step) if not (k in WALL_CLOCK and s in redone and name != "tensorboard")]
        rel = TB_RTOL if name == "tensorboard" else 1e-12
        assert [got[k][s] for s in steps] == pytest.approx([by_step[s] for s in steps], rel=rel), k


# ------------------------------------------------------------------ runs, in child processes (trackers keep
# process-wide state: W&B's service, trackio's store directory, MLflow's environment)

def child(argv: list[str], log: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "TRACKIO_DIR", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        env.pop(var, None)  # the offline defaults, whatever the machine has set
    return subprocess.Popen([sys.executable, "-m", "tinyrlhf", *argv], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env)


def run_child(argv: list[str], log: str, timeout: float = 300):
    assert child(argv, log).wait(timeout) == 0, open(log).read()[-3000:]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    data, model = tiny_sft(root, steps=2, extra=("train.threads=1",))
    return root, data, model


def sft_argv(base, out, *extra):
    root, data, model = base
    return ["sft", f"out_dir={out}", f"model.path={model}", f"data.dir={data}", "data.task=family_tree",
            "train.batch_size=8", "train.warmup_steps=2", "train.progress=false", "train.threads=1",
            "train.log_every=1", f"train.report_to=[{','.join(INSTALLED)}]", *extra]


def test_the_trackers_of_the_test_extra_are_installed():
    assert set(REQUIRED) <= set(INSTALLED), f"pip install -e '.[test]' installs {REQUIRED}; found {INSTALLED}"


@pytest.fixture(scope="module")
def plain_run(base):
    """8 SFT steps with the gold evaluation before, at step 4 and at the end (rows of several kinds)."""
    out = str(base[0] / "plain")
    run_child(sft_argv(base, out, "train.max_steps=8", "train.eval_every=4", "eval.n_prompts=4",
                       "eval.max_new_tokens=4"), out + ".log")
    return out


@each_tracker()
def test_every_tracker_holds_the_rows_of_metrics_jsonl(plain_run, name):
    want = expected(plain_run)
    assert sorted(want["gold/mean"]) == [4, 8] and sorted(want["before/gold/mean"]) == [0]  # evaluation rows too
    same(name, read(name, plain_run), want)


@pytest.fixture(scope="module")
def killed_and_resumed(base):
    """Checkpoint at step 4, a SIGKILL once row 6 is written (TensorBoard flushed, so its file holds steps past
    the checkpoint), then the same command again: steps 5-8 are redone."""
    out = str(base[0] / "killed")
    argv = sft_argv(base, out, "train.max_steps=8", "train.save_every=4", "eval.n_prompts=0")
    hook = ("import os, signal, sys, runpy\n"
            "from tinyrlhf.train import rundir\n"
            "real = rundir.RunDir.log\n"
            "def log(self, row):\n"
            "    real(self, row)\n"
            "    if row.get('step') == 6:\n"
            "        tb = self.tracking.backends.get('tensorboard')\n"
            "        tb and tb.flush()\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "rundir.RunDir.log = log\n"
            "sys.argv = ['tinyrlhf'] + sys.argv[1:]\n"
            "runpy.run_module('tinyrlhf', run_name='__main__')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "TRACKIO_DIR"):
        env.pop(var, None)
    killed = subprocess.run([sys.executable, "-c", hook, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    run_child(argv, out + ".log")
    return out


@each_tracker()
def test_a_killed_and_resumed_run_is_logged_once_per_step(killed_and_resumed, name):
    want = expected(killed_and_resumed)
    assert sorted(want["loss"]) == list(range(1, 9))
    same(name, read(name, killed_and_resumed), want, redone=(5, 6))
    if name == "tensorboard":  # two event files: the second hides the first's events (purge_step) and has them all
        assert len(glob.glob(os.path.join(killed_and_resumed, "tb", "*.tfevents.*"))) == 2
    if name == "wandb":  # the same W&B run: two offline folders with one id
        folders = glob.glob(os.path.join(killed_and_resumed, "wandb", "offline-run-*"))
        assert len(folders) == 2 and len({f.rsplit("-", 1)[1] for f in folders}) == 1


def test_an_online_stage_sends_its_rewards_and_kl(base, tmp_path):
    root, data, model = base
    out = str(tmp_path / "grpo")
    run_child(["grpo", f"out_dir={out}", f"model.path={model}", f"data.dir={data}", "data.task=family_tree", "reward=gold",
               "train.max_steps=3", "train.log_every=1", "train.threads=1", "train.progress=false", "eval.n_prompts=0",
               "rollout.prompts_per_step=4", "rollout.max_new_tokens=4", "train.report_to=[tensorboard]"], out + ".log")
    want = expected(out)
    assert {"objective/scores", "kl/seq", "mem/rss_mib", "episodes_per_s"} <= set(want)
    same("tensorboard", read_tensorboard(os.path.join(out, "tb")), want)


def test_under_torchrun_rank_0_alone_logs(base, tmp_path):
    root, data, model = base
    out, log = str(tmp_path / "ddp"), str(tmp_path / "ddp.log")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tinyrlhf",
           *sft_argv(base, out, "train.max_steps=3", "eval.n_prompts=0", "train.report_to=[tensorboard]")]
    assert subprocess.run(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, timeout=400).returncode == 0, \
        open(log).read()[-3000:]
    assert len(glob.glob(os.path.join(out, "tb", "*.tfevents.*"))) == 1  # one writer: rank 0's
    same("tensorboard", read_tensorboard(os.path.join(out, "tb")), expected(out))


# ------------------------------------------------------------------ settings, errors, compare and loop

def test_a_missing_tracker_is_one_line_naming_its_extra(tmp_path, monkeypatch, capsys):
    from tinyrlhf.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["sft", f"out_dir={out}", "train.report_to=[wandb]"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: train.report_to includes wandb, which is not installed: pip install 'tinyrlhf[wandb]'"]
    assert not out.exists()  # refused before the run directory was made


def test_report_to_takes_known_trackers_only():
    cfg = load_config(SFTConfig, None, ["train.report_to=tensorboard"])
    assert cfg.train.report_to == ("tensorboard",)
    assert load_config(SFTConfig, None, []).train.report_to == ()
    with pytest.raises(ConfigError, match="'neptune' is not one of"):
        load_config(SFTConfig, None, ["train.report_to=[tensorboard,neptune]"])
    with pytest.raises(ConfigError, match="tracking_project"):
        load_config(SFTConfig, None, ["train.report_to=[mlflow]", "train.tracking_project="])


def test_scalars_are_the_finite_numbers_of_a_row():
    row = {"step": 3, "loss": 0.5, "n": 2, "ok": True, "name": "x", "bad": "nan", "inf": float("inf"), "v": [1]}
    assert tracking.scalars(row) == {"loss": 0.5, "n": 2.0}


def test_tracker_settings_do_not_change_a_runs_identity(tmp_path):
    """Adding trackers to a run that exists (to resume it, or reuse it) is allowed: they change no weight."""
    from tinyrlhf.train.rundir import RunDir
    base = load_config(SFTConfig, None, [f"out_dir={tmp_path / 'r'}"])
    RunDir(base.out_dir, base).close()
    again = load_config(SFTConfig, None, [f"out_dir={tmp_path / 'r'}", "train.report_to=[]", "train.run_name=x",
                                          "train.tracking_dir=elsewhere", "train.tracking_group=g",
                                          "train.tracking_project=p"])
    RunDir(again.out_dir, again).close()


def test_compare_and_loop_name_and_group_each_stage(tmp_path, monkeypatch):
    """compare: every stage under --out, grouped by its name, as seed<N>-<run>; the user's overrides win."""
    from tinyrlhf.study import compare as C
    from tinyrlhf.study import loop as L
    from tinyrlhf.study import stages as S
    seen = {}
    monkeypatch.setattr(S, "launched", lambda spec, loop, cfg: seen.setdefault(cfg.out_dir, cfg.train) and {})
    out = str(tmp_path / "cmp")
    spec = C.parse_spec("family_tree", "sft,dpo", 1, out, 16, "", 8, ["train.report_to=[tensorboard]"],
                        trials=2, grid=["dpo.beta=0.05,1.0"])
    runs = [r for r, _ in S.runs_of(spec, "dpo")]
    for stage in ("sft", *runs):
        S.run_stage(spec, 0, stage)
    names = {t.run_name: (t.tracking_dir, t.tracking_group, t.report_to) for t in seen.values()}
    assert len(runs) == 2 and names == {f"seed0-{r}": (out, "cmp", ("tensorboard",)) for r in ["sft", *runs]}

    class Stop(Exception):
        pass

    def capture(*a):
        seen["loop"] = real(*a)
        raise Stop

    real = L.stage_config
    monkeypatch.setattr(L, "stage_config", capture)
    monkeypatch.setattr(L, "merged_data_dir", lambda *a: 0)
    spec = L.parse_loop("family_tree", 2, "simulated", "dpo", 1, out, ["train.tracking_group=mine"])
    with pytest.raises(Stop):
        L.policy_stage(spec, 0, 2)
    train = seen["loop"].train
    assert (train.run_name, train.tracking_dir, train.tracking_group) == (f"seed0-{spec.cond}-round2-policy", out, "mine")


class Broken:
    """A tracker whose `log` fails from step 2 on (or, with start=True, that cannot start)."""
    start = False

    def __init__(self, t, state):
        if Broken.start:
            raise OSError("no space left on device\nsecond line")
        self.through, self.logged = -1, []

    def log(self, step, values):
        if step >= 2:
            raise OSError("disk full")
        self.logged.append(step)

    def flush(self):
        pass

    def close(self, finished):
        pass

    def state(self):
        return {}


def test_a_tracker_that_fails_is_one_line_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from tinyrlhf.errors import TinyRLHFError
    from tinyrlhf.train.rundir import RunDir
    monkeypatch.setattr(tracking, "check_installed", lambda names: None)
    monkeypatch.setitem(tracking.BACKENDS, "mlflow", Broken)
    cfg = load_config(SFTConfig, None, [f"out_dir={tmp_path / 'r'}", "train.report_to=[mlflow]"])
    run = RunDir(cfg.out_dir, cfg)
    for step in range(1, 5):
        run.log({"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4] and run.tracking.backends == {}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tracking: mlflow failed at step 2 (OSError: disk full); it is off for the rest of this run "
                   "(metrics.jsonl has every row)"]
    run.write_summary({"finished": True})
    monkeypatch.setattr(Broken, "start", True)
    cfg = load_config(SFTConfig, None, [f"out_dir={tmp_path / 's'}", "train.report_to=[mlflow]"])
    with pytest.raises(TinyRLHFError, match=r"^train.report_to: mlflow could not start \(OSError: no space left on "
                                            r"device\)$"):
        RunDir(cfg.out_dir, cfg).log({"step": 1, "loss": 1.0})
