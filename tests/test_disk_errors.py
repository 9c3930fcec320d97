"""Disks that refuse bytes: every writer (checkpoint, final save, metrics, `tinyrlhf data`, `eval` results,
loop state, the run lock) turns a full disk or a read-only directory into one `error:` line with exit 2,
removes its temporary files, and loses nothing already written; a run whose checkpoint failed for lack of
space resumes from the previous checkpoint once space is back, and ends as an uninterrupted run does.

Tests run as root, where chmod does not stop a write: a full disk is a stub file object whose write raises
OSError(ENOSPC) once a byte budget is spent (or torch.save raising the RuntimeError a failed zip write
gives), and a read-only directory is an `open` / `os.open` stub raising OSError(EROFS) for paths inside
it. Each stub is installed only on the module that writes (monkeypatch), and named in each test."""
from __future__ import annotations

import builtins
import errno
import json
import os

import pytest
import torch

import runhelpers as H
from tinyrlhf import diskio
from tinyrlhf.cli import main
from tinyrlhf.train import checkpoint, rundir, sft

args, snapshot, one_line_error, same_as_reference = H.args, H.snapshot, H.one_line_error, H.same_as_reference
TORCH_FAILED = ("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/2: "
                "file write failed")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return H.integrity_env(tmp_path_factory)


class FullDisk:
    """`open` with `free` bytes left on the disk: writes succeed until they would pass it, then the write
    raises OSError(ENOSPC) (having written nothing of that chunk, as a short write would not)."""

    def __init__(self, free: int):
        self.free = free

    def open(self, path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        return _Limited(f, self) if any(c in mode for c in "wax") else f


class _Limited:
    def __init__(self, f, disk: FullDisk):
        self.f, self.disk = f, disk

    def write(self, data):
        n = len(data.encode("utf-8") if isinstance(data, str) else data)
        if n > self.disk.free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(self.f, "name", None))
        self.disk.free -= n
        return self.f.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def read_only(root: str):
    """(open, os.open) stubs raising EROFS for a path under `root` opened to write or create."""
    root = os.path.abspath(root)
    real_os_open = os.open

    def inside(path) -> bool:
        return os.path.abspath(str(path)).startswith(root + os.sep) or os.path.abspath(str(path)) == root

    def fake_open(path, mode="r", *a, **k):
        if inside(path) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return builtins.open(path, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_os_open(path, flags, *a, **k)
    return fake_open, fake_os_open


def leftovers(root) -> list[str]:
    """Temporary files and directories anywhere under root."""
    out = []
    for d, dirs, files in os.walk(root):
        out += [os.path.join(d, n) for n in dirs + files if ".tmp" in n or n == ".final.partial"]
    return out


# ------------------------------------------------------------------ checkpoints and the final save

@pytest.mark.parametrize("failure", ["torch-runtime-error", "enospc"])
def test_full_disk_during_a_checkpoint_then_resume_from_the_previous_one(env, tmp_path, monkeypatch, capsys, failure):
    """checkpoint.save / RunDir.save_checkpoint: the 3rd checkpoint's state.pt hits a full disk (torch.save
    raising its RuntimeError, or the file under it raising ENOSPC, which torch turns into 'unexpected pos').
    One line naming the checkpoints and the step kept, exit 2; last.tmp/ removed, last/ still step 2. With
    the space back the same command resumes from step 2 and ends bit-identical to the uninterrupted run."""
    out = tmp_path / "run"
    calls = [0]
    real_save = torch.save

    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 3:
            if failure == "torch-runtime-error":
                f.write(b"PK\x03\x04" + b"\0" * 512)  # a part written, then the zip writer gives up
                raise RuntimeError(TORCH_FAILED)
            return real_save(obj, _Limited(f, FullDisk(600)), *a, **k)
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(args(env, out)) == 2
    err = one_line_error(capsys)
    assert f"could not write the checkpoint of step 3 in {out / 'checkpoints'}" in err
    assert "the checkpoint of step 2 is kept: the same command resumes from it" in err
    assert ("PytorchStreamWriter failed" if failure == "torch-runtime-error" else "unexpected pos") in err
    assert leftovers(out) == [] and json.load(open(out / "checkpoints" / "last" / "manifest.json"))["step"] == 2
    monkeypatch.undo()
    assert main(args(env, out)) == 0
    capsys.readouterr()
    same_as_reference(env, out)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), RuntimeError(TORCH_FAILED)],
                         ids=["enospc", "torch-runtime-error"])
def test_full_disk_during_the_final_save(env, tmp_path, monkeypatch, capsys, error):
    """parallel.save_final: save_hf writes half the final model, then the disk is full. One line, exit 2,
    the staging directory .final.partial removed, no final/ and no summary; the rerun writes them whole."""
    out = tmp_path / "run"
    real = sft.save_hf

    def half(model, tok, path, **k):
        real(model, tok, path, **k)
        os.remove(os.path.join(path, "model.safetensors"))
        raise error
    monkeypatch.setattr(sft, "save_hf", half)
    assert main(args(env, out)) == 2
    err = one_line_error(capsys)
    assert "could not write the final model in" in err and "the checkpoint of step 8 is kept" in err
    assert leftovers(out) == [] and not (out / "final").exists() and not (out / "summary.json").exists()
    monkeypatch.undo()
    assert main(args(env, out)) == 0
    capsys.readouterr()
    same_as_reference(env, out)


def test_full_disk_while_logging_a_metrics_row(env, tmp_path, monkeypatch, capsys):
    """RunDir.log: the append of a metrics row hits ENOSPC (a stub `open` in train/rundir.py with no bytes
    free from the 5th row on): one line naming metrics.jsonl, and the rerun resumes cleanly."""
    out = tmp_path / "run"
    rows = [0]

    def fake_open(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            rows[0] += 1
            if rows[0] >= 5:
                return _Limited(builtins.open(path, mode, *a, **k), FullDisk(0))
        return builtins.open(path, mode, *a, **k)
    monkeypatch.setattr(rundir, "open", fake_open, raising=False)
    assert main(args(env, out)) == 2
    err = one_line_error(capsys)
    assert f"could not append a row to {out / 'metrics.jsonl'}" in err and "no space left" in err
    monkeypatch.undo()
    assert main(args(env, out)) == 0
    capsys.readouterr()
    same_as_reference(env, out)


def test_read_only_run_directory_in_a_rerun(env, tmp_path, monkeypatch, capsys):
    """runlock.acquire: re-running a finished run whose directory became read-only (an os.open stub raising
    EROFS for files inside it) is one line naming the lock file, exit 2, and nothing in it changes."""
    out = tmp_path / "run"
    assert main(args(env, out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    fake_open, fake_os_open = read_only(str(out))
    monkeypatch.setattr(os, "open", fake_os_open)
    assert main(args(env, out)) == 2
    err = one_line_error(capsys)
    assert f"run directory '{out}': cannot open its lock file .lock" in err and "read-only" in err
    monkeypatch.undo()
    assert snapshot(out) == before


# ------------------------------------------------------------------ tinyrlhf data, eval

def test_data_on_a_full_disk_leaves_no_temporary_and_no_partial_data(tmp_path, monkeypatch, capsys):
    """write_task_data through diskio.atomic_write: ENOSPC in the 3rd file (a stub `open` in diskio.py with
    a byte budget). One line naming the file, exit 2; no *.tmpPID, and the files written before it are
    removed (no data directory without its manifest); with space back the same command (no --force) works
    and writes the same bytes as a run that never failed."""
    argv = ["data", "family_tree", "--out", str(tmp_path / "d"), "n_train_prompts=30", "n_pairs=20"]
    assert main([*argv[:3], str(tmp_path / "ref"), *argv[4:]]) == 0
    sizes = sorted((p.name, p.stat().st_size) for p in (tmp_path / "ref").iterdir())
    budget = sum(size for name, size in sizes if name in ("sft.jsonl", "pairs.jsonl")) + 100
    monkeypatch.setattr(diskio, "open", FullDisk(budget).open, raising=False)
    capsys.readouterr()
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "no space left" in err and "the data files written so far were removed" in err
    assert os.listdir(tmp_path / "d") == []
    monkeypatch.undo()
    assert main(argv) == 0
    capsys.readouterr()
    assert sorted((p.name, p.stat().st_size) for p in (tmp_path / "d").iterdir()) == sizes


def test_data_into_a_read_only_directory(tmp_path, monkeypatch, capsys):
    """`tinyrlhf data --out DIR` where DIR is read-only (diskio `open` stub raising EROFS): one line."""
    fake_open, _ = read_only(str(tmp_path / "d"))
    monkeypatch.setattr(diskio, "open", fake_open, raising=False)
    assert main(["data", "family_tree", "--out", str(tmp_path / "d"), "n_train_prompts=30", "n_pairs=20"]) == 2
    err = one_line_error(capsys)
    assert f"cannot write {tmp_path / 'd' / 'sft.jsonl'}" in err and "read-only" in err
    assert leftovers(tmp_path) == []


def test_eval_result_into_a_read_only_run_directory(env, tmp_path, monkeypatch, capsys):
    """eval.write_result: the default RUN/eval-TASK.json in a read-only run directory (diskio `open` stub):
    one line naming it, no .tmp left; `--out <existing directory>` is refused before evaluating."""
    run = env[2]
    before = snapshot(run)
    fake_open, _ = read_only(run)
    monkeypatch.setattr(diskio, "open", fake_open, raising=False)
    assert main(["eval", run, "--task", "family_tree", "n_prompts=2", "max_new_tokens=4"]) == 2
    err = one_line_error(capsys)
    assert f"cannot write {os.path.join(run, 'eval-family_tree.json')}" in err and "read-only" in err
    assert snapshot(run) == before and leftovers(run) == []
    monkeypatch.undo()
    assert main(["eval", run, "--task", "family_tree", "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_line_error(capsys)


# ------------------------------------------------------------------ loop state

def test_loop_state_is_atomic_and_a_corrupt_one_is_named(tmp_path, monkeypatch, capsys):
    """study/spec.write_json goes through diskio.atomic_write (a full disk: DiskError, the old file intact,
    no temporary); a truncated OUT/loop-ppo.json is one line naming it and saying how to recover."""
    from tinyrlhf.study import loop as L
    from tinyrlhf.study.spec import write_json

    out = tmp_path / "loop"
    tiny = ["loop.labels_per_round=8", "loop.policy_steps=2", "loop.eval_prompts=4"]
    L.write_spec(L.parse_loop("positive_review", 1, "simulated", "ppo", 1, str(out), tiny))
    spec_file = out / "loop-ppo.json"
    intact = spec_file.read_bytes()
    monkeypatch.setattr(diskio, "open", FullDisk(10).open, raising=False)
    with pytest.raises(diskio.DiskError, match="no space left"):
        write_json(str(spec_file), {"x": "y" * 100})
    monkeypatch.undo()
    assert spec_file.read_bytes() == intact and leftovers(out) == []
    spec_file.write_bytes(intact[: len(intact) // 2])
    argv = ["loop", "--task", "positive_review", "--rounds", "1", "--labels", "simulated", "--out", str(out), *tiny]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"{spec_file}: not valid JSON" in err and "delete it and run the same command again" in err
    spec_file.write_text("[1, 2]")
    assert main(argv) == 2
    assert "not a loop spec" in one_line_error(capsys)


def test_model_export_on_a_full_disk_restores_the_previous_export(env, tmp_path, monkeypatch, capsys):
    """tinyrlhf export: the model files hit ENOSPC half way (a stub for export._write that writes one file,
    then raises). One line, exit 2; no .tmp-PID directory; a --force over an earlier export puts it back."""
    from tinyrlhf import export as export_mod
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("the earlier export")
    real = export_mod._write

    def half(model_dir, tmp, final_out, merge):
        real(model_dir, tmp, final_out, merge)
        os.remove(os.path.join(tmp, "model.safetensors"))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(export_mod, "_write", half)
    assert main(["export", env[2], "--out", str(out), "--force"]) == 2
    err = one_line_error(capsys)
    assert f"could not export to {out}" in err and "no space left" in err and "nothing was changed there" in err
    assert sorted(os.listdir(tmp_path)) == ["exported"] and os.listdir(out) == ["keep.txt"]
