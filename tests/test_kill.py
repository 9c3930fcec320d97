"""kill -9 at random moments and at every step of a checkpoint or final/ write, then resume: no run
directory is ever corrupt, and the resumed run ends with the same losses and bit-identical weights as
an uninterrupted one. The children are real processes running the CLI (runhelpers: forkserver)."""
import os
import random
import time

import pytest

import runhelpers as H


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data, model = H.base(tmp_path_factory)
    root = tmp_path_factory.mktemp("kill")
    cache = str(root / "cache")
    H.warm()  # the forkserver's one-time imports must not count in the reference durations
    refs = {}
    for name, args in (("sft", H.sft_args(str(root / "ref-sft"), data, model)),
                       ("dpo", H.dpo_args(str(root / "ref-dpo"), data, model, cache))):
        t0 = time.time()
        assert H.run(args, str(root / f"ref-{name}.log")) == 0
        refs[name] = (args, time.time() - t0)
    return root, data, model, cache, refs


def _same_as_reference(root, name, out):
    ref = str(root / f"ref-{name}")
    assert H.rows(out) == H.rows(ref), f"{out}: logged losses differ from the uninterrupted run"
    assert H.same_weights(os.path.join(out, "final"), os.path.join(ref, "final")), f"{out}: final weights differ"


def _kill_chains(root, name, make_args, duration, kills, seed):
    """Start a run, SIGKILL it at a random moment in [0, duration], check the directory, resume, ... A run
    that finishes before its kill ends the chain (compared with the reference) and a new one starts,
    until `kills` kills have landed. Returns (kills, kills that left a checkpoint write half done)."""
    rng = random.Random(seed)
    landed = mid_write = chain = 0
    corrupt = []
    while landed < kills:
        chain += 1
        out = str(root / f"{name}-chain{chain}")
        while True:
            proc = H.start(make_args(out), str(root / f"{name}-chain{chain}.log"))
            proc.join(rng.uniform(0.0, duration))
            if proc.exitcode is None:
                proc.kill()  # SIGKILL
                proc.join()
                landed += 1
                mid_write += os.path.isdir(os.path.join(out, "checkpoints", "last.tmp"))
                corrupt += [f"{out}: {p}" for p in H.corruption(out)]
                continue
            assert proc.exitcode == 0, open(root / f"{name}-chain{chain}.log").read()[-3000:]
            break
        _same_as_reference(root, name, out)
    assert corrupt == []
    return landed, mid_write


def test_sft_killed_at_12_random_moments_resumes_to_the_same_run(setup):
    root, data, model, _, refs = setup
    landed, mid_write = _kill_chains(root, "sft", lambda out: H.sft_args(out, data, model),
                                     refs["sft"][1], kills=12, seed=0)
    print(f"sft: {landed} kills, {mid_write} during a checkpoint write")


def test_dpo_killed_at_4_random_moments_resumes_to_the_same_run(setup):
    root, data, model, cache, refs = setup
    _kill_chains(root, "dpo", lambda out: H.dpo_args(out, data, model, cache), refs["dpo"][1], kills=4, seed=1)


# every point of the write protocol where a kill leaves something half done (checkpoint.save, _rotate,
# RunDir.write_summary, RunDir.truncate_metrics); each child must die there (exit -9), in this order
INJECTED = [
    ("torn_save", "state.pt", 2),             # state.pt of the 2nd checkpoint half written, no manifest
    ("replace_before", ".metrics.jsonl.tmp", 1),  # resuming, while dropping the rows after checkpoint 1
    ("replace_before", "/last", 1),           # last.tmp complete, rotation not begun
    ("replace_after", "/last", 1),            # last -> prev done, last.tmp not yet renamed: no last/
    ("replace_after", "/last.tmp", 2),        # renamed, the old prev (prev.del) not yet deleted
    ("final_save", "", 0),                    # final model half written to the staging directory
    ("replace_after", ".final.partial", 1),   # final/ published, summary.json not yet written
]
# DPO shares that protocol; its own final save and a kill without a last/ are enough there
INJECTED_DPO = [INJECTED[0], INJECTED[3], INJECTED[5], INJECTED[6]]


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_kill_at_each_point_of_a_checkpoint_or_final_write(setup, stage):
    root, data, model, cache, _ = setup
    out = str(root / f"{stage}-injected")
    args = H.sft_args(out, data, model) if stage == "sft" else H.dpo_args(out, data, model, cache)
    for i, inject in enumerate(INJECTED if stage == "sft" else INJECTED_DPO):
        log = str(root / f"{stage}-injected-{i}.log")
        assert H.run(args, log, inject=inject) == -9, f"{inject} was never reached: {open(log).read()[-2000:]}"
        assert H.corruption(out) == [], inject
    assert H.run(args, str(root / f"{stage}-injected-end.log")) == 0
    _same_as_reference(root, stage, out)
