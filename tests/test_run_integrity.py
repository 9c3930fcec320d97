"""A run directory you can trust: a run is reused or resumed only with its own config; SIGINT/SIGTERM
checkpoint before stopping and the resume is bit-identical; a corrupt checkpoint falls back to the
previous one; crash leftovers (half-rotated checkpoints, rows after the checkpoint, a half-written final
save) resume correctly; a second process is refused. (NaN/inf: test_nan_guard.py; kill -9: test_kill.py.)
Each test's docstring names the guard it exercises."""
import json
import os
import signal

import pytest

import runhelpers as H
from tinyrlhf.cli import main
from tinyrlhf.errors import ConfigError
from tinyrlhf.train import sft
from tinyrlhf.train.rundir import RunInUse
from tinyrlhf.train.sft import run_sft


@pytest.fixture(autouse=True)
def sigint_deliverable():
    """A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT *ignored*, and the
    guard rightly leaves an ignored signal ignored (train/guard.py); these tests send SIGINT themselves, so
    Python's default handler is restored for each test's duration, however pytest was started."""
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return H.integrity_env(tmp_path_factory)


args, cfg, snapshot, one_line_error, same_as_reference = (H.args, H.cfg, H.snapshot, H.one_line_error,
                                                          H.same_as_reference)


# ------------------------------------------------------------------ identity

def test_changed_config_is_refused_and_nothing_changes(env, tmp_path, capsys):
    """rundir.RunDir._check_identity: another seed, lr, LoRA or stage on a run directory is one error
    naming the keys (old -> new); every file stays byte-identical. Harmless keys reuse the run."""
    out = tmp_path / "run"
    run_sft(cfg(env, out))
    before = snapshot(out)
    for extra, named in ((["seed=2"], "seed: 0 -> 2"), (["train.lr=3e-4"], "train.lr: 0.002 -> 0.0003"),
                         (["lora.enabled=true"], "lora.enabled: False -> True"),
                         (["model.preset=gpt2-mini"], "model.preset: 'gpt2-tiny' -> 'gpt2-mini'")):
        with pytest.raises(ConfigError, match="holds a run with another config") as e:
            run_sft(cfg(env, out, *extra))
        assert named in str(e.value) and "--force-new" in str(e.value) and "config.yaml unchanged" in str(e.value)
        assert snapshot(out) == before
    capsys.readouterr()
    assert main(args(env, out, "seed=2")) == 2
    assert "seed: 0 -> 2" in one_line_error(capsys)
    dpo = ["dpo", f"out_dir={out}", f"model.path={env[1]}", f"data.dir={env[0]}", "train.progress=false"]
    capsys.readouterr()
    assert main(dpo) == 2
    assert "holds a sft run, not a dpo run" in one_line_error(capsys)
    # where, how fast and how often it logs or saves: the same run, reused as it is
    again = run_sft(cfg(env, out, "train.threads=2", "train.log_every=5", "train.save_every=3",
                        "train.eval_every=7", "train.save_minutes=1"))
    assert again["finished"] and snapshot(out) == before


def test_unfinished_run_resumed_with_another_config_is_refused(env, tmp_path):
    """The identity check covers a partly run directory too (the issue's 'resume with another preset')."""
    out = tmp_path / "run"
    run_sft(cfg(env, out, "train.stop_after=3"))
    before = snapshot(out)
    with pytest.raises(ConfigError, match="model.preset"):
        run_sft(cfg(env, out, "model.preset=gpt2-mini"))
    assert snapshot(out) == before


def test_run_written_before_manifests_and_headers_still_resumes(env, tmp_path):
    """Run directories from earlier versions (config.yaml without its header line or without a key added
    since, which counts as its default; a checkpoint without manifest.json) resume as before."""
    out = tmp_path / "run"
    run_sft(cfg(env, out, "train.stop_after=4"))
    text = (out / "config.yaml").read_text()
    assert "  attention: tinyrlhf\n" in text
    (out / "config.yaml").write_text(text.split("\n", 1)[1].replace("  attention: tinyrlhf\n", ""))
    for name in ("last", "prev"):
        os.remove(out / "checkpoints" / name / "manifest.json")
    run_sft(cfg(env, out))
    same_as_reference(env, out)


def test_force_new_moves_the_old_run_aside(env, tmp_path, capsys):
    """--force-new: the old run moves to OUT.old-1 untouched; the new run starts from step 0."""
    out = tmp_path / "run"
    run_sft(cfg(env, out))
    before = snapshot(out)
    assert main(args(env, out, "seed=3", "--force-new")) == 0
    assert f"moved the existing run '{out}' to '{out}.old-1'" in capsys.readouterr().out
    assert snapshot(f"{out}.old-1") == before
    assert "seed: 3" in open(out / "config.yaml").read()
    assert [r[0] for r in H.rows(str(out))] == list(range(1, 9)) and H.rows(str(out)) != H.rows(env[2])


# ------------------------------------------------------------------ interrupts

def test_sigterm_mid_run_then_resume_is_bit_identical(env, tmp_path):
    """guard.StopOnSignal: SIGTERM from outside finishes the step, writes a checkpoint (save_every=0, so
    it is the only one), exits 143 with a true message; the resume equals the uninterrupted run."""
    out = tmp_path / "run"
    a = args(env, out, "train.save_every=0")
    proc = H.start(a, str(tmp_path / "log"))
    H.wait_for_rows(str(out), 2, proc)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    log = open(tmp_path / "log").read()
    assert proc.exitcode == 143, log
    step = json.load(open(out / "checkpoints" / "last" / "manifest.json"))["step"]
    assert 2 <= step < 8 and f"stopped by SIGTERM after step {step} of 8; checkpoint written" in log
    assert not (out / "final").exists()
    assert main(a) == 0
    same_as_reference(env, out)


def test_ctrl_c_checkpoints_at_the_end_of_the_step(env, tmp_path, monkeypatch, capsys):
    """SIGINT during step 3's forward: step 3 completes, is checkpointed, the CLI exits 130 saying so."""
    out = tmp_path / "run"
    real, calls = sft.token_logps, []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(sft, "token_logps", interrupting)
    a = args(env, out, "train.save_every=0")
    assert main(a) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 3 of 8; checkpoint written" in err and "step 3)" in err
    monkeypatch.setattr(sft, "token_logps", real)
    assert main(a) == 0
    same_as_reference(env, out)


def test_ppo_crash_then_ctrl_c_then_resume_equals_uninterrupted(env, tmp_path, monkeypatch):
    """online.online_fit: a crash in step 2 before any checkpoint leaves row 1, which the next attempt
    drops and redoes; SIGINT in step 2 of that attempt stops after step 2's checkpoint; the counters
    (episodes) travel in it, so the final rows, summary and weights equal the uninterrupted run's."""
    from tinyrlhf.train import ppo
    from tinyrlhf.train.guard import RunInterrupted
    keys = ("step", "objective/scores", "loss/policy", "loss/value", "kl/seq", "kl/coef")
    ref = ppo.run_ppo(H.ppo_cfg(env, tmp_path / "ref"))
    out, real = tmp_path / "run", ppo.sample_and_score
    monkeypatch.setattr(ppo, "sample_and_score", H.on_second_call(real, H.crash))
    with pytest.raises(RuntimeError):
        ppo.run_ppo(H.ppo_cfg(env, out, "train.save_every=0"))
    assert [r[0] for r in H.rows(str(out), keys)] == [1] and not (out / "checkpoints").exists()
    monkeypatch.setattr(ppo, "sample_and_score", H.on_second_call(real, H.sigint))
    with pytest.raises(RunInterrupted, match=r"^ppo: stopped by SIGINT after step 2 of 3"):
        ppo.run_ppo(H.ppo_cfg(env, out, "train.save_every=0"))
    monkeypatch.undo()
    summary = ppo.run_ppo(H.ppo_cfg(env, out, "train.save_every=0"))
    assert summary["episodes"] == ref["episodes"] == 12
    assert H.rows(str(out), keys) == H.rows(str(tmp_path / "ref"), keys)
    assert H.same_weights(str(out / "final"), str(tmp_path / "ref" / "final"))


def test_interrupt_outside_a_step_says_what_exists(env, tmp_path, monkeypatch, capsys):
    """cli.main + rundir.interrupted_note: Ctrl-C during setup promises only the checkpoint on disk."""
    out = tmp_path / "run"

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(sft, "build_model", stop)
    assert main(args(env, out)) == 130
    assert f"{out} has no checkpoint yet: running the same command again starts it from step 0" \
        in capsys.readouterr().err
    monkeypatch.undo()
    run_sft(cfg(env, out, "train.stop_after=3"))
    monkeypatch.setattr(sft, "build_model", stop)
    assert main(args(env, out)) == 130
    assert f"{out} has a checkpoint at step 3: run the same command again" in capsys.readouterr().err


def test_time_based_checkpoints(env, tmp_path, monkeypatch):
    """guard.SaveSchedule: train.save_minutes saves on the clock as well as every save_every steps."""
    from tinyrlhf.train.rundir import RunDir
    saved, real = [], RunDir.save_checkpoint
    monkeypatch.setattr(RunDir, "save_checkpoint", lambda self, m, o, s, step, **k: saved.append(step)
                        or real(self, m, o, s, step, **k))
    run_sft(cfg(env, tmp_path / "a", "train.save_every=0", "train.save_minutes=1e-9"))
    assert saved == list(range(1, 9))
    saved.clear()
    run_sft(cfg(env, tmp_path / "b", "train.save_every=0", "train.save_minutes=0"))
    assert saved == [8]


# ------------------------------------------------------------------ checkpoints and crash leftovers

@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_last_checkpoint_falls_back_to_prev(env, tmp_path, capsys, damage):
    """checkpoint.verify: a truncated state.pt (size) or one flipped byte (sha256; torch.load would
    accept it and train on a corrupt weight) is detected; prev/ is used, with a message."""
    out = tmp_path / "run"
    run_sft(cfg(env, out, "train.stop_after=4"))
    state = out / "checkpoints" / "last" / "state.pt"
    data = bytearray(state.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    capsys.readouterr()
    run_sft(cfg(env, out))
    said = capsys.readouterr().out
    assert ("(truncated?)" if damage == "truncate" else "does not match its sha256") in said
    assert "resuming from" in said and "prev (step 3) instead" in said
    assert (out / "checkpoints" / "corrupt-last" / "state.pt").is_file()
    same_as_reference(env, out)


def test_no_intact_checkpoint_is_a_one_line_error(env, tmp_path, capsys):
    out = tmp_path / "run"
    run_sft(cfg(env, out, "train.stop_after=4"))
    for name in ("last", "prev"):
        (out / "checkpoints" / name / "state.pt").write_bytes(b"garbage")
    before = snapshot(out)
    capsys.readouterr()
    assert main(args(env, out)) == 2
    assert "no intact checkpoint in" in one_line_error(capsys)
    assert snapshot(out) == before


def test_crash_between_removing_last_and_renaming_tmp_resumes_from_the_complete_one(env, tmp_path, capsys):
    """checkpoint._finish_rotation: last/ gone, a complete last.tmp/ (step 4) beside prev/ (step 3), as a
    kill in the middle of a rotation leaves it. The resume must continue from step 4: the row of step 4,
    marked here, is kept (from prev/ or from scratch it would be dropped and redone)."""
    out = tmp_path / "run"
    run_sft(cfg(env, out, "train.stop_after=4"))
    os.replace(out / "checkpoints" / "last", out / "checkpoints" / "last.tmp")
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rows[-1]["marker"] = 1
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    run_sft(cfg(env, out))
    assert "completed the interrupted checkpoint write of step 4" in capsys.readouterr().out
    kept = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert kept[3]["step"] == 4 and kept[3].get("marker") == 1
    same_as_reference(env, out)


def test_crash_before_the_first_checkpoint_does_not_duplicate_rows(env, tmp_path, monkeypatch):
    """engine.fit truncates metrics to the step resumed from, 0 without a checkpoint; RunDir.read_metrics
    drops a half-written last row (a kill during the append)."""
    out = tmp_path / "run"
    real, calls = sft.token_logps, []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real(*a, **k)
    monkeypatch.setattr(sft, "token_logps", crash)
    with pytest.raises(RuntimeError):
        run_sft(cfg(env, out, "train.save_every=0"))
    monkeypatch.undo()
    assert [r[0] for r in H.rows(str(out))] == [1, 2, 3] and not (out / "checkpoints").exists()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    run_sft(cfg(env, out, "train.save_every=0"))
    same_as_reference(env, out)


def test_log_every_window_survives_resume(env, tmp_path):
    """The averaging window of train.log_every travels in the checkpoint: after a resume at step 2 the
    rows of steps 4 and 8 average the same steps as an uninterrupted run's."""
    ref = tmp_path / "ref"
    run_sft(cfg(env, ref, "train.log_every=4"))
    out = tmp_path / "run"
    run_sft(cfg(env, out, "train.log_every=4", "train.stop_after=2"))
    run_sft(cfg(env, out, "train.log_every=4"))
    assert [r[0] for r in H.rows(str(ref))] == [4, 8]
    assert H.rows(str(out)) == H.rows(str(ref))


def test_crash_during_the_final_save_resumes_to_a_complete_summary(env, tmp_path, monkeypatch):
    """RunDir.write_summary publishes final/ only whole, and the last checkpoint carries the counters and
    the last evaluation: a crash while final/ is written leaves no final/ and no summary; the resume
    writes the same final/ and a summary with the uninterrupted run's figures."""
    out = tmp_path / "run"
    real = sft.save_hf

    def half(model, tok, path, **k):
        real(model, tok, path, **k)
        os.remove(os.path.join(path, "model.safetensors"))
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(sft, "save_hf", half)
    with pytest.raises(RuntimeError):
        run_sft(cfg(env, out))
    monkeypatch.undo()
    assert not (out / "final").exists() and not (out / "summary.json").exists()
    summary = run_sft(cfg(env, out))
    ref = json.load(open(os.path.join(env[2], "summary.json")))
    assert summary["finished"] and summary["train_tokens"] == ref["train_tokens"] > 0
    assert summary["eval/loss"] == ref["eval/loss"]
    assert not (out / ".final.partial").exists()
    same_as_reference(env, out)


def test_corrupt_summary_or_metrics_is_a_one_line_error(env, tmp_path, capsys):
    """RunDir.read_summary / read_metrics: exit 2 naming the file (and line), nothing changed."""
    out = tmp_path / "done"
    run_sft(cfg(env, out))
    (out / "summary.json").write_text('{"finished": tr')
    before = snapshot(out)
    capsys.readouterr()
    assert main(args(env, out)) == 2
    assert "summary.json: not valid JSON" in one_line_error(capsys) and snapshot(out) == before
    out = tmp_path / "part"
    run_sft(cfg(env, out, "train.stop_after=3"))
    lines = open(out / "metrics.jsonl").readlines()
    (out / "metrics.jsonl").write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    before = snapshot(out)
    capsys.readouterr()
    assert main(args(env, out)) == 2
    assert "metrics.jsonl:2: not a JSON row" in one_line_error(capsys) and snapshot(out) == before


# ------------------------------------------------------------------ lock

def test_second_process_on_the_same_run_is_refused(env, tmp_path, capsys):
    """rundir._acquire: while a process trains in a directory, another (any config) gets 'in use by pid N'
    and writes nothing; after that process is killed -9 the lock is not stale."""
    out = tmp_path / "run"
    a = args(env, out, "train.max_steps=400", "train.save_every=2")
    proc = H.start(a, str(tmp_path / "log"))
    H.wait_for_rows(str(out), 2, proc)
    config = (out / "config.yaml").read_bytes()
    with pytest.raises(RunInUse, match=f"in use by pid {proc.pid}"):
        run_sft(cfg(env, out, "train.max_steps=400", "train.save_every=2"))
    capsys.readouterr()
    assert main(args(env, out, "seed=5")) == 2
    assert f"is in use by pid {proc.pid}" in one_line_error(capsys)
    proc.kill()
    proc.join()
    assert (out / "config.yaml").read_bytes() == config
    steps = [r[0] for r in H.rows(str(out))]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no duplicated or interleaved rows
    assert run_sft(cfg(env, out, "train.max_steps=400", "train.save_every=2", "train.stop_after=3"))["steps"] >= 3
