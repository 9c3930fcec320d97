"""Helpers for the run-integrity tests: run the CLI in a child process (to SIGKILL/SIGTERM it), inject a
kill at an exact point of a checkpoint or final/ write, and check a run directory for corruption.

Children come from a multiprocessing *forkserver* that has imported torch and transformers once: each
child is a real process (kill -9 is real) but starts in milliseconds instead of ~4 s of imports, which
keeps a dozen kill/resume cycles within the test budget. The forkserver never runs torch code, so its
forks are safe (no OpenMP pool to inherit)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time

_CTX = None


def ctx():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["runhelpers", "tinyrlhf.cli", "tinyrlhf.train.sft",
                                     "tinyrlhf.train.preference", "transformers"])
    return _CTX


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _install(inject):
    """Kill this process at an exact point. inject = (kind, pattern, n):
    replace_before / replace_after: around the n-th os.replace whose source path ends with `pattern`;
    torn_save: the n-th torch.save into a file whose path ends with `pattern` is cut to half, then kill;
    final_save: the final model write (save_hf) leaves half its files, then kill."""
    kind, pattern, n = inject
    count = [0]

    def hit(path) -> bool:
        if str(path).endswith(pattern):
            count[0] += 1
            return count[0] == n
        return False

    if kind.startswith("replace"):
        real = os.replace

        def replace(src, dst, *a, **k):
            due = hit(src)
            if due and kind == "replace_before":
                _die()
            real(src, dst, *a, **k)
            if due:
                _die()
        os.replace = replace
    elif kind == "torn_save":
        import torch
        real_save = torch.save

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            name = getattr(getattr(f, "f", f), "name", f)  # checkpoint.save passes a hashing wrapper
            if hit(name):
                f.flush()
                os.truncate(name, os.path.getsize(name) // 2)
                _die()
        torch.save = save
    elif kind == "final_save":
        from tinyrlhf.train import preference, sft

        def make(real):
            def save_hf(model, tokenizer, out, **k):
                real(model, tokenizer, out, **k)
                files = sorted(os.listdir(out))
                for name in files[len(files) // 2:]:
                    os.remove(os.path.join(out, name))
                _die()
            return save_hf
        sft.save_hf, preference.save_hf = make(sft.save_hf), make(preference.save_hf)


def child_main(argv: list[str], log: str, inject=None):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    import torch
    import tqdm
    torch.set_num_threads(1)
    tqdm.tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock: a killed child would leak it
    if inject:
        _install(inject)
    from tinyrlhf.cli import main
    rc = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _nothing():
    os._exit(0)


def warm():
    """Start the forkserver (its imports take seconds) before anything is timed."""
    p = ctx().Process(target=_nothing)
    p.start()
    p.join()


def start(argv: list[str], log: str, inject=None):
    p = ctx().Process(target=child_main, args=(argv, log, inject))
    p.start()
    return p


def run(argv: list[str], log: str, inject=None, timeout: float = 120) -> int:
    p = start(argv, log, inject)
    p.join(timeout)
    assert p.exitcode is not None, f"child did not finish in {timeout} s: {open(log).read()[-2000:]}"
    return p.exitcode


def wait_for_rows(run_dir: str, n: int, proc, timeout: float = 60):
    """Wait until metrics.jsonl has >= n complete rows (the child is mid-run), or fail."""
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.isfile(path):
            with open(path) as f:
                if sum(1 for line in f if line.endswith("\n")) >= n:
                    return
        assert proc.is_alive(), "the child ended before reaching the wanted step"
        time.sleep(0.01)
    raise AssertionError(f"no {n} rows in {path} after {timeout} s")


def corruption(run_dir: str) -> list[str]:
    """What is broken in a run directory left by a killed process (empty list: nothing). Allowed: a torn
    last metrics line, an incomplete checkpoints/last.tmp, a leftover .final.partial."""
    from tinyrlhf.train import checkpoint as C
    problems = []
    if not os.path.isdir(run_dir):
        return problems
    cfg = os.path.join(run_dir, "config.yaml")
    if os.path.exists(cfg):
        import yaml
        if not isinstance(yaml.safe_load(open(cfg)), dict):
            problems.append("config.yaml")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        lines = open(metrics).readlines()
        for i, line in enumerate(lines):
            try:
                json.loads(line)
            except ValueError:
                if not (i == len(lines) - 1 and not line.endswith("\n")):
                    problems.append(f"metrics.jsonl:{i + 1}")
    for name in ("last", "prev"):
        path = os.path.join(run_dir, "checkpoints", name)
        if os.path.isdir(path):
            manifest, problem = C.verify(path)
            if manifest is None or manifest.get("legacy"):  # this version always writes a manifest
                problems.append(f"checkpoints/{name}: {problem or 'no manifest'}")
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary):
        s = json.load(open(summary))
        if s.get("finished") and not os.path.isfile(os.path.join(run_dir, "final", "model.safetensors")):
            problems.append("summary finished without final/model.safetensors")
    final = os.path.join(run_dir, "final")
    if os.path.isdir(final) and not {"config.json", "model.safetensors"} <= set(os.listdir(final)):
        problems.append("final/ incomplete")
    return problems


def rows(run_dir: str, keys=("step", "loss", "lr", "grad_norm")) -> list[tuple]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [tuple(r.get(k) for k in keys) for r in map(json.loads, f) if keys[1] in r]


def weights(model_dir: str) -> dict:
    from safetensors.torch import load_file
    return load_file(os.path.join(model_dir, "model.safetensors"))


def same_weights(a: str, b: str) -> bool:
    import torch
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


_BASE: dict = {}


def base(tmp_path_factory) -> tuple[str, str]:
    """(data dir, SFT final/) shared by the integrity tests of one session: tiny family_tree data and a
    2-step gpt2-tiny SFT model to start runs from (so children skip tokenizer training)."""
    if "base" not in _BASE:
        from conftest import tiny_sft
        _BASE["base"] = tiny_sft(tmp_path_factory.mktemp("integrity"), steps=2, extra=("train.threads=1",))
    return _BASE["base"]


def sft_args(out: str, data: str, model: str, *extra: str) -> list[str]:
    return ["sft", f"out_dir={out}", f"model.path={model}", f"data.dir={data}", "train.max_steps=8",
            "train.batch_size=8", "train.warmup_steps=2", "train.progress=false", "eval.n_prompts=0",
            "train.save_every=1", "train.threads=1", "train.log_every=1", *extra]


def dpo_args(out: str, data: str, model: str, cache: str, *extra: str) -> list[str]:
    return ["dpo", f"out_dir={out}", f"model.path={model}", f"data.dir={data}", f"ref_cache_dir={cache}",
            "train.max_steps=5", "train.batch_size=8", "train.warmup_steps=1", "train.progress=false",
            "eval.n_prompts=0", "train.save_every=1", "train.threads=1", "train.log_every=1", *extra]


# ------------------------------------------------------------------ in-process SFT runs (test_run_integrity,
# test_nan_guard): env = (data dir, model dir, reference run dir of the uninterrupted 8-step run)

def integrity_env(tmp_path_factory) -> tuple[str, str, str]:
    if "env" not in _BASE:
        from tinyrlhf.train.sft import run_sft
        data, model = base(tmp_path_factory)
        ref = str(tmp_path_factory.mktemp("ref") / "sft")
        run_sft(cfg((data, model, ref), ref))
        _BASE["env"] = (data, model, ref)
    return _BASE["env"]


def args(env, out, *extra) -> list[str]:
    data, model, _ = env
    return sft_args(str(out), data, model, *extra)


def cfg(env, out, *extra):
    from tinyrlhf.config import SFTConfig, load_config
    return load_config(SFTConfig, None, args(env, out, *extra)[1:])


def snapshot(run_dir) -> dict:
    """sha256 of every file under a run directory (the lock file aside)."""
    import hashlib
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            if name != ".lock":
                path = os.path.join(root, name)
                out[os.path.relpath(path, run_dir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def one_line_error(capsys) -> str:
    """The CLI's stderr: exactly one line `error: ...`, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def same_as_reference(env, out):
    """Logged losses equal and final weights bit-identical to the uninterrupted run's."""
    assert rows(str(out)) == rows(env[2])
    assert same_weights(os.path.join(out, "final"), os.path.join(env[2], "final"))


def ppo_cfg(env, out, *extra):
    """A 3-step PPO run on the gold reward from the shared SFT model (save_every=1)."""
    from tinyrlhf.config import PPOConfig, load_config
    data, model, _ = env
    return load_config(PPOConfig, None, [
        f"out_dir={out}", f"model.path={model}", f"data.dir={data}", "reward=gold", "data.task=family_tree",
        "train.max_steps=3", "train.save_every=1", "train.progress=false", "eval.n_prompts=0", "train.threads=1",
        "train.log_every=1", "rollout.prompts_per_step=4", "rollout.max_new_tokens=6", "ppo.minibatch_size=2",
        "ppo.epochs=1", "train.batch_size=4", *extra])


def on_second_call(real, action):
    """`real` (a loop's sample_and_score) that runs `action` first on its second call: a fault in step 2."""
    calls = []

    def sample(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            action()
        return real(*a, **k)
    return sample


def crash():
    raise RuntimeError("simulated crash")


def sigint():
    os.kill(os.getpid(), signal.SIGINT)
