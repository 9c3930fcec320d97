"""Several processes (torchrun, gloo on CPU, 2 ranks x 1 thread) give the numbers of one process with the
same global batch: SFT (with gradient accumulation), DPO and PPO under DDP, SFT under FSDP2; a DDP run
stopped and resumed, and an FSDP run whose rank is killed (the job exits, no hang) and then resumed from
its sharded checkpoint, end where the uninterrupted single process ends.

Tolerance: 1e-5 relative, fp32 (the ranks sum the same numbers in another order, ~1e-7). Quantities that
are small differences of much larger terms are compared at 1e-5 absolute instead (1e-5 of their terms'
scale or tighter): PPO's policy loss (whitened advantages of size ~1 that cancel to ~1e-3), approximate
and sequence KL (log-prob differences), and DPO's implicit rewards β·(log π − log π_ref), 0 at step 1."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tinyrlhf.config import PPOConfig, PreferenceConfig, SFTConfig, load_config
from tinyrlhf.train.ppo import run_ppo
from tinyrlhf.train.preference import run_preference
from tinyrlhf.train.sft import run_sft

from conftest import tiny_sft

RTOL = 1e-5
FP32 = ["train.precision=fp32", "model.dropout=0", "train.threads=1", "train.progress=false", "eval.n_prompts=0",
        "train.log_every=1", "train.eval_every=0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data, model = tiny_sft(root, steps=12, sizes=dict(n_train_prompts=96, n_eval_prompts=8, n_pairs=64,
                                                      n_rankings=0, n_binary=0, n_eval_pairs=8))
    return root, data, model


def torchrun(stage: str, args: list[str], log: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tinyrlhf", stage, *args]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            **popen)


def _tree(pid: int) -> list[int]:
    """pid and its descendants (torchrun starts each worker in a session of its own)."""
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return [pid]
    return [pid] + [p for k in kids for p in _tree(int(k))]


def finish(proc: subprocess.Popen, log: str, timeout: float = 400) -> int:
    """The launch's exit status. The timeout is generous (2 shared cores, often loaded): only a hang
    reaches it, and then every process of the job is killed."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in reversed(_tree(proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        raise AssertionError(f"torchrun hung; log:\n{open(log).read()[-3000:]}")


def run2(stage: str, args: list[str], log: str) -> None:
    rc = finish(torchrun(stage, args, log), log)
    assert rc == 0, open(log).read()[-3000:]


def rows(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r or "loss/policy" in r]


def assert_close(a: list[dict], b: list[dict], keys, atol_keys=()):
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for ra, rb in zip(a, b):
        for k in keys:
            tol = RTOL if k in atol_keys else RTOL * abs(rb[k])
            assert abs(ra[k] - rb[k]) <= tol, (ra["step"], k, ra[k], rb[k])


def test_sft_two_ranks_equal_one_process_and_resume(env):
    """grad_accum=2 (no_sync on the first micro-step), a global batch of 8 split 4 + 4; the 2-rank run
    stops after step 3 (stop_after, rank 0 checkpoints with both ranks' RNG) and a second launch resumes."""
    from tinyrlhf import dist
    root, data, model = env
    args = [f"model.path={model}", f"data.dir={data}", "data.task=family_tree", "train.max_steps=6",
            "train.batch_size=8", "train.grad_accum=2", "train.warmup_steps=1", "train.save_every=0", *FP32]
    one = str(root / "sft1")
    run_sft(load_config(SFTConfig, None, [f"out_dir={one}", *args]))
    two = str(root / "sft2")
    run2("sft", [f"out_dir={two}", *args, "train.stop_after=3"], str(root / "sft2.log"))
    assert [r["step"] for r in rows(two)] == [1, 2, 3] and not os.path.isdir(os.path.join(two, "final"))
    # the resume goes through `compare --nproc`'s launcher: the resolved config as --config to torchrun
    summary = dist.torchrun(load_config(SFTConfig, None, [f"out_dir={two}", *args]), 2)
    assert_close(rows(two), rows(one), ("loss", "grad_norm", "completion_nll"))
    assert summary["finished"] and summary["world_size"] == 2
    assert summary["train_tokens"] == json.load(open(os.path.join(one, "summary.json")))["train_tokens"]
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # rank 1 wrote nothing of its own
    assert os.path.isfile(f"{two}.torchrun.log")


def test_dpo_two_ranks_equal_one_process(env):
    root, data, model = env
    args = [f"model.path={model}", f"data.dir={data}", "data.task=family_tree", "train.max_steps=4",
            "train.batch_size=8", "train.warmup_steps=1", "train.save_every=0", "loss=dpo",
            f"ref_cache_dir={root / 'refcache'}", *FP32]
    one, two = str(root / "dpo1"), str(root / "dpo2")
    run_preference(load_config(PreferenceConfig, None, [f"out_dir={one}", *args]))
    # another cache directory: the 2 ranks compute the reference log-probs themselves (half each)
    run2("dpo", [f"out_dir={two}", *args, f"ref_cache_dir={root / 'refcache2'}"], str(root / "dpo2.log"))
    assert_close(rows(two), rows(one), ("loss", "grad_norm", "reward_margin", "rewards_chosen"),
                 atol_keys=("reward_margin", "rewards_chosen"))


def test_ppo_two_ranks_equal_one_process(env):
    """Sampled rollouts (temperature 1): each rank samples its half with the noise those rows get in one
    process, so the episodes, the whitening, GAE and the adaptive KL coefficient are the same."""
    root, data, model = env
    args = [f"model.path={model}", f"data.dir={data}", "data.task=family_tree", "reward=gold",
            "train.max_steps=3", "rollout.prompts_per_step=8", "rollout.max_new_tokens=6",
            "ppo.minibatch_size=4", "ppo.epochs=2", "train.batch_size=2", "kl.adaptive=true",
            "train.save_every=0", *FP32]
    one, two = str(root / "ppo1"), str(root / "ppo2")
    run_ppo(load_config(PPOConfig, None, [f"out_dir={one}", *args]))
    run2("ppo", [f"out_dir={two}", *args], str(root / "ppo2.log"))
    assert_close(rows(two), rows(one), ("loss/policy", "loss/value", "kl/coef", "kl/seq", "objective/scores",
                                        "response/length", "grad_norm", "policy/approx_kl"),
                 atol_keys=("loss/policy", "policy/approx_kl", "kl/seq"))


@pytest.mark.parametrize("stage", ["grpo", "rs"])
def test_grpo_loss_type_and_rs_two_ranks_equal_one_process(env, stage):
    """GRPO's per-response mean (loss_type=grpo, 2 epochs: clipping active) and rejection sampling's token mean:
    their weights are computed over the whole minibatch, each rank sums its own rows' share, so two ranks give
    the losses and gradients of one process."""
    from tinyrlhf.config import GroupConfig, RSConfig
    from tinyrlhf.train.group import run_group
    from tinyrlhf.train.rs import run_rs
    root, data, model = env
    args = [f"model.path={model}", f"data.dir={data}", "data.task=family_tree", "reward=gold", "train.max_steps=2",
            "rollout.prompts_per_step=8", "rollout.max_new_tokens=6", "train.save_every=0", "k=2", *FP32]
    if stage == "grpo":
        args += ["algo=grpo", "loss_type=grpo", "epochs=2", "minibatch_size=8", "train.batch_size=4"]
        small = ("loss/policy", "loss/kl", "kl/seq")
        keys = (*small, "objective/scores", "grad_norm")
    else:
        args += ["minibatch_size=4", "train.batch_size=2"]
        keys, small = ("loss/sft", "rs/kept_score", "objective/scores", "grad_norm"), ()
    one, two = str(root / f"{stage}1"), str(root / f"{stage}2")
    (run_group if stage == "grpo" else run_rs)(load_config(GroupConfig if stage == "grpo" else RSConfig, None,
                                                           [f"out_dir={one}", *args]))
    run2(stage, [f"out_dir={two}", *args], str(root / f"{stage}2.log"))
    one_rows = [r for r in map(json.loads, open(os.path.join(one, "metrics.jsonl")))]
    two_rows = [r for r in map(json.loads, open(os.path.join(two, "metrics.jsonl")))]
    assert_close(two_rows, one_rows, keys, atol_keys=small)


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of worker `rank` among torchrun's children (read from their environment)."""
    try:
        kids = open(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read().split()
    except OSError:
        return None
    for pid in kids:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_fsdp_killed_rank_exits_and_resumes_to_the_single_process_numbers(env):
    """FSDP2 (sharded checkpoints every step): rank 1 is killed after step 3 is logged; torchrun stops the
    job with a non-zero status (well within the timeout: no hang); the same command resumes from the last
    sharded checkpoint and ends with the losses of one process (so FSDP equals DDP equals one process)."""
    root, data, model = env
    args = [f"model.path={model}", f"data.dir={data}", "data.task=family_tree", "train.max_steps=16",
            "train.batch_size=8", "train.warmup_steps=1", "train.save_every=1", "train.save_minutes=0", *FP32]
    one, two = str(root / "fs1"), str(root / "fs2")
    run_sft(load_config(SFTConfig, None, [f"out_dir={one}", *args]))
    log = str(root / "fs2.log")
    proc = torchrun("sft", [f"out_dir={two}", *args, "train.parallel=fsdp"], log)
    deadline, victim = time.time() + 400, None
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(os.path.join(two, "metrics.jsonl")) and len(rows(two)) >= 3:
            victim = _rank_pid(proc.pid, 1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.05)
    assert victim is not None, f"the run ended before a rank could be killed:\n{open(log).read()[-2000:]}"
    t0 = time.time()
    rc = finish(proc, log, timeout=300)
    assert rc != 0 and time.time() - t0 < 300
    assert not os.path.isdir(os.path.join(two, "final"))
    assert os.path.isfile(os.path.join(two, "checkpoints", "last", "sharded", ".metadata"))
    run2("sft", [f"out_dir={two}", *args, "train.parallel=fsdp"], str(root / "fs2b.log"))
    assert_close(rows(two), rows(one), ("loss", "grad_norm"))
    assert os.path.isfile(os.path.join(two, "final", "config.json"))


def test_single_process_identities():
    """Without torchrun every helper is the identity the loops relied on before (same numbers)."""
    import torch
    from tinyrlhf import dist
    assert not dist.active() and dist.world() == 1 and dist.is_main() and dist.rank_seed(7) == 7
    count = torch.tensor(0)
    assert dist.global_count(count) == 1 and dist.global_count(torch.tensor(12)) == 12
    assert dist.mean_metrics({"a": torch.tensor(0.5), "b": 2}) == {"a": 0.5, "b": 2.0}
    assert dist.any_true(True, False) == (True, False)
    assert [dist.shard_range(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert len({dist.rank_seed(7, r) for r in range(4)}) == 4


def test_compare_nproc_is_checked_and_commands_map_every_stage():
    from tinyrlhf import config as C
    from tinyrlhf import dist
    from tinyrlhf.errors import ConfigError
    from tinyrlhf.study.compare import parse_spec
    with pytest.raises(ConfigError, match="--nproc"):
        parse_spec("family_tree", "sft,dpo", 1, "/tmp/x", 100, "", 10, [], nproc=0)
    assert parse_spec("family_tree", "sft,dpo", 1, "/tmp/x", 100, "", 10, [], nproc=2).nproc == 2
    # every training config class has a command to launch it with (GroupConfig: its algo)
    for cls in (C.SFTConfig, C.RewardConfig, C.PreferenceConfig, C.KTOConfig, C.PPOConfig, C.OnlineDPOConfig):
        assert cls.__name__ in dist.COMMANDS
