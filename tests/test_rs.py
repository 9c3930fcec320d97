"""Rejection-sampling fine-tuning (`tinyrlhf rs`) on a tiny model: the selection by value, a run that logs what
it kept, rounds that resume exactly after a crash and a Ctrl-C, the command line, and rs with REINFORCE++,
Dr. GRPO and DAPO in `tinyrlhf compare` with their rollouts in its budget accounting."""
import json
import os
import signal

import pytest
import torch
import yaml

import runhelpers as H
from conftest import tiny_sft
from tinyrlhf.cli import main
from tinyrlhf.config import RSConfig, load_config
from tinyrlhf.train import rs
from tinyrlhf.train.guard import RunInterrupted

SMALL = dict(n_train_prompts=80, n_eval_prompts=8, n_pairs=64, n_rankings=4, n_binary=16, n_eval_pairs=8)
COMMON = ["train.batch_size=8", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
          "train.save_every=0", "train.progress=false", "eval.n_prompts=8", "eval.max_new_tokens=6",
          "data.task=family_tree", "train.lr=1e-3", "rollout.prompts_per_step=8", "rollout.max_new_tokens=8",
          "minibatch_size=4", "train.threads=1"]
KEYS = ("step", "objective/scores", "rs/kept_score", "loss/sft", "grad_norm", "kl/seq")


@pytest.fixture(autouse=True)
def sigint_deliverable():
    """SIGINT may be inherited ignored (a suite started with `cmd &`); these tests send it themselves."""
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs")
    data, model = tiny_sft(root, steps=4, sizes=SMALL, extra=("train.warmup_steps=0", "train.lr=1e-3"))
    return root, data, model


def cfg(base, name, *extra):
    root, data, model = base
    return load_config(RSConfig, None, [f"out_dir={root / name}", f"model.path={model}", f"data.dir={data}",
                                        "reward=gold", *COMMON, *extra])


def rows(run_dir, keys=KEYS):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [tuple(r.get(k) for k in keys) for r in map(json.loads, f)]


def test_selection_by_hand():
    """k = 3, scores (0.1, 0.5, 0.3 | 0.9, 0.9, 0.2): the best rows are 1 and 3 (the first of two equal bests).
    Quantile 0.5 of the six sorted (0.1, 0.2, 0.3, 0.5, 0.9, 0.9): position 2.5, 0.3 + 0.5·(0.5 − 0.3) = 0.4,
    so rows 1, 3 and 4 are kept; quantile 0 keeps all."""
    scores = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.9, 0.2])
    assert rs.keep_best(scores, 3).tolist() == [1, 3]
    assert rs.keep_quantile(scores, 0.5).tolist() == [1, 3, 4]
    assert rs.keep_quantile(scores, 0.0).tolist() == list(range(6))


def test_rs_runs_and_logs_what_it_kept(base):
    root = base[0]
    # no missing-EOS penalty: the selection then ranks by the very scores logged as objective/scores
    summary = rs.run_rs(cfg(base, "rs", "train.max_steps=2", "k=3", "rollout.missing_eos_penalty=0"))
    assert summary["finished"] and summary["episodes"] == 2 * 8 * 3  # every sample drawn is a rollout
    assert os.path.isfile(root / "rs" / "final" / "config.json") and "gold/mean" in summary
    log = [json.loads(line) for line in open(root / "rs" / "metrics.jsonl")]
    for r in log[:2]:
        assert r["rs/kept"] == 8  # the best of each prompt's 3
        assert r["rs/kept_score"] >= r["objective/scores"] - 1e-6  # the kept are the best by the reward
        assert r["objective/gold"] == pytest.approx(r["objective/scores"], abs=1e-5)  # reward=gold
        assert r["rs/kept_gold"] >= r["objective/gold"] - 1e-6
        assert r["loss/sft"] > 0 and r["grad_norm"] > 0
    quant = rs.run_rs(cfg(base, "rs_q", "train.max_steps=1", "keep=quantile", "quantile=0.5"))
    assert quant["finished"] and 1 <= json.loads(open(root / "rs_q" / "metrics.jsonl").readline())["rs/kept"] <= 32


def test_rs_crash_then_ctrl_c_then_resume_equals_uninterrupted(base, monkeypatch):
    """A crash in round 2 before any checkpoint leaves round 1's row, which the next attempt drops and redoes;
    SIGINT in round 2 of that attempt stops after round 2's checkpoint; the resumed run's rows, rollouts and
    final weights equal the uninterrupted run's."""
    root = base[0]
    ref = rs.run_rs(cfg(base, "rs_ref", "train.max_steps=3"))
    out, real = root / "rs_run", rs.sample_and_score
    monkeypatch.setattr(rs, "sample_and_score", H.on_second_call(real, H.crash))
    with pytest.raises(RuntimeError):
        rs.run_rs(cfg(base, "rs_run", "train.max_steps=3"))
    assert [r[0] for r in rows(out)] == [1] and not (out / "checkpoints").exists()
    monkeypatch.setattr(rs, "sample_and_score", H.on_second_call(real, H.sigint))
    with pytest.raises(RunInterrupted, match=r"^rs: stopped by SIGINT after step 2 of 3"):
        rs.run_rs(cfg(base, "rs_run", "train.max_steps=3"))
    monkeypatch.undo()
    summary = rs.run_rs(cfg(base, "rs_run", "train.max_steps=3"))
    assert summary["episodes"] == ref["episodes"] == 3 * 8 * 4
    assert rows(out) == rows(root / "rs_ref") and len(rows(out)) == 3
    assert H.same_weights(str(out / "final"), str(root / "rs_ref" / "final"))


def test_rs_command_line(base, capsys):
    root, data, model = base
    assert main(["rs", "--print-config", "k=8", "keep=quantile"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["k"], printed["keep"], printed["rollout"]["prompts_per_step"]) == (8, "quantile", 64)
    assert main(["rs", "k=1"]) == 2 and "'k': must be >= 2, got 1" in capsys.readouterr().err
    assert main(["rs", "quantile=1"]) == 2 and "'quantile': must be in [0, 1)" in capsys.readouterr().err
    assert main(["rs", f"out_dir={root / 'rs_cli'}", f"model.path={model}", f"data.dir={data}", "reward=gold",
                 *COMMON, "train.max_steps=1"]) == 0
    assert "rs_cli" in capsys.readouterr().out and (root / "rs_cli" / "final").is_dir()


def test_compare_runs_rs_and_the_new_rl_variants(tmp_path):
    """`compare --methods rs,reinforce-pp,dr-grpo,dapo`: each trains from the seed's SFT against the reward model
    of the same labels for --budget prompts, with its own config; rs's rollouts are every sample it drew."""
    from test_compare import TINY
    from tinyrlhf.study import compare as C
    out = tmp_path / "cmp"
    group = [f"{m}.{o}" for m in ("reinforce-pp", "dr-grpo", "dapo")
             for o in ("rollout.prompts_per_step=4", "minibatch_size=8", "train.batch_size=8")]
    spec = C.parse_spec("family_tree", "rs,reinforce-pp,dr-grpo,dapo", 1, str(out), 16, "", 8,
                        [*TINY, *group, "rs.rollout.prompts_per_step=8", "rs.train.batch_size=8", "rs.minibatch_size=8",
                         "train.threads=1"], val_prompts=8, best_of="", temperatures="")
    result = C.run_compare(spec, log=lambda _: None)
    res = json.load(open(out / "results.json"))
    row = {r["run"]: r for r in res["rows"]}
    assert sorted(row) == ["dapo", "dr-grpo", "reinforce-pp", "rs", "sft"]
    summary = {m: json.load(open(out / "seed0" / m / "summary.json")) for m in row if m != "sft"}
    config = {m: yaml.safe_load(open(out / "seed0" / m / "config.yaml")) for m in summary}
    assert summary["rs"]["steps"] == 2 and row["rs"]["rollouts"] == summary["rs"]["episodes"] == 2 * 8 * 4
    for m in ("reinforce-pp", "dr-grpo", "dapo"):  # 16 prompts = 4 steps of 4, k = 4 samples each
        assert summary[m]["steps"] == 4 and row[m]["rollouts"] == 4 * 4 * 4
    for m in summary:  # the same labels: the reward model's, for every method
        assert config[m]["reward"].endswith("seed0/reward") and row[m]["labels"] == row["rs"]["labels"] > 0
    assert (config["dapo"]["algo"], config["dapo"]["loss_type"], config["dapo"]["clip_high"]) == ("grpo", "dapo", 0.28)
    assert (config["dr-grpo"]["algo"], config["dr-grpo"]["loss_type"]) == ("grpo", "dr_grpo")
    assert config["reinforce-pp"]["algo"] == "reinforce-pp" and config["rs"]["keep"] == "best"
    report = open(result["report"]).read()
    assert all(f"**{m}**" in report for m in summary)
