"""`tinyrlhf loop` on tiny runs: two rounds with simulated labels and their report, an interrupted round resumed
with the finished round reused, the static-reward-model baseline and DPO in the same directory, bad input, and
the human path through the feedback store (a fake labeller thread)."""
import json
import os
import threading

import pytest
import yaml

from tinyrlhf.cli import main
from tinyrlhf.eval.ratings import elo_ratings
from tinyrlhf.study import loop as L

TINY = ["data.n_train_prompts=60", "data.n_pairs=80", "data.n_binary=8", "data.n_rankings=0", "data.n_eval_pairs=8",
        "data.n_eval_prompts=8", "sft.train.max_steps=4", "sft.model.tokenizer_vocab=400", "sft.train.batch_size=8",
        "reward.train.max_steps=3", "reward.train.batch_size=8", "ppo.rollout.prompts_per_step=8",
        "ppo.train.batch_size=8", "ppo.ppo.minibatch_size=8", "dpo.train.batch_size=8", "train.threads=1",
        "loop.labels_per_round=12", "loop.policy_steps=2", "loop.eval_prompts=8", "loop.max_new_tokens=8"]


def _loop(out, *extra, rounds=2):
    return main(["loop", "--task", "positive_review", "--rounds", str(rounds), "--labels", "simulated",
                 "--out", str(out), *TINY, *extra])


def _pairs(path):
    return [json.loads(line) for line in open(path)]


def _mtime(path):
    return os.path.getmtime(path)


def test_loop_two_rounds_report_resume_static_and_dpo(tmp_path, monkeypatch, capsys):
    out = tmp_path / "loop"
    real = L.policy_stage

    def interrupted(spec, seed, r):
        if r == 2:
            raise KeyboardInterrupt  # Ctrl-C while round 2 trains its policy
        return real(spec, seed, r)

    monkeypatch.setattr(L, "policy_stage", interrupted)
    assert _loop(out) == 130
    r1, r2 = out / "seed0" / "ppo" / "round-1", out / "seed0" / "ppo" / "round-2"
    assert (r1 / "policy" / "final").is_dir() and (r2 / "reward" / "final").is_dir()
    assert not (r2 / "policy").exists()
    stamps = {p: _mtime(p) for p in (r1 / "policy" / "summary.json", r1 / "reward" / "summary.json",
                                     r1 / "labels" / "pairs.jsonl", r2 / "labels" / "pairs.jsonl",
                                     r2 / "reward" / "summary.json", out / "seed0" / "sft" / "summary.json")}
    partial = json.load(open(out / "report-ppo.json"))  # written after round 1 was evaluated
    assert [r["round"] for r in partial["rounds"]] == [0, 1]

    monkeypatch.setattr(L, "policy_stage", real)
    capsys.readouterr()
    assert _loop(out) == 0
    log = capsys.readouterr().out
    assert all(_mtime(p) == t for p, t in stamps.items())  # round 1, round 2's labels and RM: reused
    assert "round 2 labels" in log and "(reused)" in log

    # round 2: its labels mix the round-1 policy with SFT; its RM saw every label so far; its policy went on
    # from round 1's, against round 2's reward model
    labels1, labels2 = _pairs(r1 / "labels" / "pairs.jsonl"), _pairs(r2 / "labels" / "pairs.jsonl")
    assert {p["meta"]["model_chosen"] for p in labels1} == {"sft"}
    assert "round-1" in {p["meta"][k] for p in labels2 for k in ("model_chosen", "model_rejected")}
    assert len(_pairs(r2 / "rm-data" / "pairs.jsonl")) == len(labels1) + len(labels2)
    rm2 = json.load(open(r2 / "reward" / "summary.json"))
    assert rm2["data/train_records"] == len(labels1) + len(labels2)
    cfg2 = yaml.safe_load(open(r2 / "policy" / "config.yaml"))
    assert cfg2["model"]["path"] == str(r1 / "policy" / "final") and cfg2["reward"] == str(r2 / "reward")
    assert cfg2["train"]["max_steps"] == 2 and cfg2["train"]["threads"] == 1

    # the report: every round with gold and its CI, proxy, KL to SFT, RM accuracy on fresh samples, Elo
    rep = json.load(open(out / "report-ppo.json"))
    rounds = {r["round"]: r for r in rep["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    assert rounds[1]["labels"] == len(labels1) and rounds[2]["labels"] == len(labels1) + len(labels2)
    ev2 = json.load(open(r2 / "policy" / "eval-loop.json"))
    assert rounds[2]["gold"]["mean"] == pytest.approx(sum(ev2["per_prompt"]["gold"]) / 8)
    g = rounds[2]["gold"]
    assert g["low"] <= g["mean"] <= g["high"]
    assert rounds[2]["kl"] == pytest.approx(ev2["kl_ref"]["mean"]) and ev2["kl_ref"]["reference"].endswith("sft")
    assert rounds[2]["proxy"] == pytest.approx(ev2["rm_score"]["mean"])
    assert ev2["rm_score"]["reward"] == str(r2 / "reward")
    fresh = ev2["rm_accuracy_fresh"]
    assert 0 <= fresh["pairs"] <= 8 and (fresh["accuracy"] is None) == (fresh["pairs"] == 0)
    elo = {row["round"]: row["elo"] for row in rep["per_seed"]}
    assert sorted(elo) == [0, 1, 2] and all(e["low"] <= e["rating"] <= e["high"] for e in elo.values())
    # Elo from gold-judged games: every pair of models plays each held-out prompt, the higher gold wins
    gold = {name: json.load(open(d / "eval-loop.json"))["per_prompt"]["gold"] for name, d in
            (("sft", out / "seed0" / "sft"), ("round-1", r1 / "policy"), ("round-2", r2 / "policy"))}
    names = list(gold)
    games = [(a, b, 1.0 if x > y else 0.5 if x == y else 0.0) for i, a in enumerate(names) for b in names[i + 1:]
             for x, y in zip(gold[a], gold[b])]
    expected = elo_ratings(games, seed=0)
    assert [elo[r] for r in (0, 1, 2)] == [expected[n] for n in names]
    md = open(out / "report-ppo.md").read()
    assert "| 2 | 1 | " in md and "RM acc. fresh" in md and (out / "report-ppo.png").stat().st_size > 1000

    # the static baseline in the same directory: same data and SFT (reused), one RM on 2 x 12 SFT-sample labels
    assert _loop(out, "--static-rm") == 0
    assert _mtime(out / "seed0" / "sft" / "summary.json") == stamps[out / "seed0" / "sft" / "summary.json"]
    s1, s2 = out / "seed0" / "ppo-static-rm" / "round-1", out / "seed0" / "ppo-static-rm" / "round-2"
    static = _pairs(s1 / "labels" / "pairs.jsonl")
    assert json.load(open(s1 / "labels" / "manifest.json"))["prompts"] == 24
    assert {p["meta"][k] for p in static for k in ("model_chosen", "model_rejected")} == {"sft"}
    assert not (s2 / "reward").exists() and not (s2 / "labels").exists()
    assert yaml.safe_load(open(s2 / "policy" / "config.yaml"))["reward"] == str(s1 / "reward")
    rep_s = json.load(open(out / "report-ppo-static-rm.json"))
    assert [r["labels"] for r in rep_s["rounds"][1:]] == [len(static)] * 2
    # ... and it refuses a different number of rounds (its one RM was sized for two)
    assert _loop(out, "--static-rm", rounds=3) == 2
    assert "rounds: 2 -> 3" in capsys.readouterr().err

    # DPO: no reward model, trained on every label so far from the previous round's policy
    assert _loop(out, "--method", "dpo", rounds=1) == 0
    d1 = out / "seed0" / "dpo" / "round-1"
    assert not (d1 / "reward").exists()
    assert yaml.safe_load(open(d1 / "policy" / "config.yaml"))["data"]["dir"] == str(d1 / "rm-data")
    assert json.load(open(out / "report-dpo.json"))["rounds"][1]["proxy"] is None


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--method", "ppq"], "--method 'ppq': unknown"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--labels", "crowd"], "--labels 'crowd': expected one of simulated, human"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--method", "dpo", "--static-rm"], "--static-rm: dpo trains on the labels directly"),
    (["loop.mix_earlier=2"], "mix_earlier"),
    (["loop.labels_per_rund=3"], "labels_per_rund"),
    (["ppq.train.lr=1"], "override 'ppq.train.lr=1': unknown config key 'ppq'"),
    (["--config", "nope.yaml"], "--config 'nope.yaml': no such file"),
])
def test_loop_bad_input_is_one_clear_error(tmp_path, capsys, args, message):
    base = {"--task": "positive_review", "--rounds": "2", "--labels": "simulated", "--out": str(tmp_path / "o")}
    flags = [a for a in args if a.startswith("--")]
    argv = ["loop"] + [x for k, v in base.items() if k not in flags for x in (k, v)] + args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize("content", [b"not sqlite at all\n" * 50, "foreign"], ids=["garbage", "foreign-sqlite"])
def test_loop_refuses_a_db_that_is_no_feedback_database_before_any_stage(tmp_path, capsys, content):
    """parse_loop checks --db through a read-only look (feedback/dbfile.py): one line naming it, nothing
    written under --out (no data, no SFT), and the file byte for byte as it was."""
    import sqlite3
    db = tmp_path / "fb.db"
    if content == "foreign":
        con = sqlite3.connect(str(db))
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        con.commit()
        con.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    assert main(["loop", "--task", "positive_review", "--rounds", "1", "--labels", "human", "--db", str(db),
                 "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --db ") and str(db) in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb.db"]


def test_loop_refuses_other_settings_in_a_finished_directory(tmp_path, capsys):
    out = tmp_path / "o"
    assert L.write_spec(L.parse_loop("positive_review", 1, "simulated", "ppo", 1, str(out), TINY)) is None
    assert main(["loop", "--task", "positive_review", "--rounds", "1", "--labels", "simulated", "--out", str(out),
                 *TINY, "loop.policy_steps=5"]) == 2
    assert "loop.policy_steps: 2 -> 5" in capsys.readouterr().err


def test_loop_human_labels_through_the_store(tmp_path, capsys):
    from tinyrlhf.feedback import store as store_mod
    from tinyrlhf.tasks import get_task
    task = get_task("positive_review")
    out, db = tmp_path / "h", str(tmp_path / "feedback.db")
    done, clicked = threading.Event(), {}

    def labeller():  # a person who prefers the answer with the higher gold reward, through the store's API only
        store = store_mod.Store(db)
        store.add_labellers(["fake"])
        n = 0
        while not done.is_set():
            item = store.next_item("fake")
            if item is None:
                done.wait(0.05)
                continue
            a, b = item["outputs"]
            choice = "A" if task.gold_reward(item["prompt"], a) >= task.gold_reward(item["prompt"], b) else "B"
            clicked[(item["prompt"], a, b)] = choice
            store.submit("fake", item["item_id"], f"fake-{n:06d}", {"choice": choice})
            n += 1
        store.close()

    t = threading.Thread(target=labeller, daemon=True)
    t.start()
    try:
        assert main(["loop", "--task", "positive_review", "--rounds", "1", "--labels", "human", "--db", db,
                     "--out", str(out), *TINY, "loop.poll_s=0.1", "loop.wait_s=120"]) == 0
    finally:
        done.set()
        t.join(10)
    assert "tinyrlhf label" in capsys.readouterr().out  # the loop said how to start the app
    labels = _pairs(out / "seed0" / "ppo" / "round-1" / "labels" / "pairs.jsonl")
    assert labels and len(labels) <= len(clicked)
    for p in labels:  # every exported pair is ordered as the labeller clicked
        shown = [k for k in clicked if k[0] == p["prompt"] and {k[1], k[2]} == {p["chosen"], p["rejected"]}]
        assert shown and all((k[1] if clicked[k] == "A" else k[2]) == p["chosen"] for k in shown)
    assert (out / "seed0" / "ppo" / "round-1" / "policy" / "final").is_dir()
    rep = json.load(open(out / "report-ppo.json"))
    assert rep["labels"] == "human"
    human = rep["per_seed"][1]["human"]  # round 1: who labelled, from the export's summary
    assert human["per_labeller"] == {"fake": human["labels"]} and human["labels"] >= len(labels)
    assert "people's labels" in open(out / "report-ppo.md").read()
