"""`tinyrlhf eval` and `tinyrlhf compare` on tiny runs: known answers, bad input, resume, report claims."""
import json
import os

import pytest
import yaml

from conftest import tiny_sft
from tinyrlhf.cli import main
from tinyrlhf.errors import ConfigError
from tinyrlhf.eval.metrics import cluster_bootstrap_ci
from tinyrlhf.study import compare as C
from tinyrlhf.study import stages as S
from tinyrlhf.eval.evaluate import EvalSettings, evaluate_model

TINY_DATA = ["data.n_train_prompts=60", "data.n_pairs=80", "data.n_binary=40", "data.n_rankings=4",
             "data.n_eval_pairs=8", "data.n_eval_prompts=8"]
TINY = [*TINY_DATA, "sft.train.max_steps=3", "sft.model.tokenizer_vocab=400", "dpo.train.batch_size=8",
        "kto.train.batch_size=8", "sft.train.batch_size=8", "reward.train.max_steps=3", "reward.train.batch_size=8"]
TINY_RL = ["ppo.rollout.prompts_per_step=8", "ppo.train.batch_size=8", "ppo.ppo.minibatch_size=8"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    tiny_sft(root, steps=3, sizes=dict(n_train_prompts=60, n_eval_prompts=8, n_pairs=40, n_rankings=4,
                                       n_binary=8, n_eval_pairs=8))
    return str(root / "sft")

def test_eval_against_itself_has_zero_kl_and_only_ties(sft_run):
    s = EvalSettings(n_prompts=12, max_new_tokens=6)
    result = evaluate_model(sft_run, "family_tree", reference=sft_run, settings=s)
    assert result["kl_ref"]["mean"] == pytest.approx(0.0, abs=1e-6)  # same model, same samples
    assert result["win_rate"]["rate"] == 0.5 and set(result["per_prompt"]["win"]) == {0.5}
    g = result["gold"]
    assert g["low"] <= g["mean"] <= g["high"] and len(result["per_prompt"]["gold"]) == 12
    assert sum(result["per_prompt"]["gold"]) / 12 == pytest.approx(g["mean"])
    assert 0 <= result["rouge_l"] <= 1 and 0 <= result["bleu"] <= 100  # family_tree has reference answers
    assert result["settings"]["n_prompts"] == 12


def test_eval_cli_refuses_a_run_of_another_task(sft_run, capsys):
    assert main(["eval", sft_run, "--task", "positive_review"]) == 2
    assert "was trained on task 'family_tree', not 'positive_review'" in capsys.readouterr().err
    assert main(["eval", sft_run + "/nope", "--task", "family_tree"]) == 2
    assert "no such model or run directory" in capsys.readouterr().err


def test_eval_cli_writes_json(sft_run, tmp_path, capsys):
    out = str(tmp_path / "e.json")
    assert main(["eval", sft_run, "--task", "family_tree", "--out", out, "n_prompts=6", "max_new_tokens=4"]) == 0
    saved = json.load(open(out))
    assert saved["settings"]["n_prompts"] == 6 and "kl_ref" not in saved  # an SFT run from a preset: no reference
    assert len(open(str(tmp_path / "e.samples.jsonl")).readlines()) == 6
    assert main(["eval", sft_run, "--task", "family_tree", "n_promts=6"]) == 2
    assert "unknown eval setting 'n_promts'" in capsys.readouterr().err


def test_compare_rejects_bad_input(tmp_path, capsys):
    base = ["compare", "--out", str(tmp_path / "c")]
    assert main([*base, "--task", "nope"]) == 2
    assert main([*base, "--task", "family_tree", "--methods", "sft,ppq"]) == 2
    assert "unknown method(s) ppq" in capsys.readouterr().err
    assert main([*base, "--task", "family_tree", "--methods", "dpo", "sft.train"]) == 2
    assert "expected STAGE.key=value" in capsys.readouterr().err
    assert main([*base, "--task", "family_tree", "--methods", "dpo", "model.path=x"]) == 2
    assert "compare sets 'model.path' itself" in capsys.readouterr().err
    assert main([*base, "--task", "family_tree", "--methods", "dpo,kto", "--trials", "2",
                 "--grid", "dpo.beta=0.1,0.2,0.3"]) == 2
    assert "3 values but --trials 2" in capsys.readouterr().err
    assert main([*base, "--task", "family_tree", "--methods", "dpo", "--best-of", "4,x"]) == 2
    assert "--best-of" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing written for a refused comparison


def test_compare_plan_labels_before_the_reward_model_and_baselines_before_evals():
    spec = C.parse_spec("family_tree", "dpo,kto", 2, "x", 100, "", 10, [], best_of="")
    assert spec.methods[0] == "sft" and all(s != "reward" for _, s in C.plan(spec))
    spec = C.parse_spec("family_tree", "ppo", 1, "x", 100, "", 10, [])
    assert [s for _, s in C.plan(spec)] == ["data", "sft", "pairs", "reward", "ppo", "baselines", "eval:sft",
                                            "eval:ppo", "decode:sft", "decode:ppo"]
    spec = C.parse_spec("family_tree", "ppo", 1, "x", 100, "", 10, [], temperatures="")  # T=1 only
    assert not [s for _, s in C.plan(spec) if s.startswith("decode:")]
    for bad in ("1,x", "1,1", "3", "-0.5"):
        with pytest.raises(ConfigError, match="--temperatures"):
            C.parse_spec("family_tree", "ppo", 1, "x", 100, "", 10, [], temperatures=bad)
    # the reward model on the task's scripted pairs needs no on-policy labels
    spec = C.parse_spec("family_tree", "ppo", 1, "x", 100, "", 10, [], rm_data="task")
    assert "pairs" not in [s for _, s in C.plan(spec)]
    # best-of-n needs a reward model even when no method does
    spec = C.parse_spec("family_tree", "dpo", 1, "x", 100, "", 10, [])
    assert [s for _, s in C.plan(spec)][:4] == ["data", "sft", "pairs", "reward"]


def test_trials_give_every_method_the_same_number_of_settings():
    spec = C.parse_spec("family_tree", "sft,dpo,ppo,kto", 1, "x", 100, "", 10, [], trials=3,
                        grid=["kto.beta=0.1,0.2,0.4"], tune="key")
    grids = {m: trials for m, trials in spec.grids}
    assert grids["dpo"] == ((("beta", 1.0),), (("beta", 0.3),), (("beta", 0.05),))  # both ends and the middle
    assert grids["ppo"] == ((("kl.target", 0.25),), (("kl.target", 1.0),), (("kl.target", 4.0),))
    assert grids["kto"] == ((("beta", 0.1),), (("beta", 0.2),), (("beta", 0.4),))
    assert [r for r, _ in C.runs_of(spec, "dpo")] == ["dpo@beta=1", "dpo@beta=0.3", "dpo@beta=0.05"]
    assert C.runs_of(spec, "sft") == [("sft", {})]
    spec = C.parse_spec("family_tree", "dpo", 1, "x", 100, "", 10, ["train.threads=1", "dpo.beta=0.2"])
    assert spec.global_overrides == ("train.threads=1",) and spec.overrides == ("dpo.beta=0.2",)
    assert C.runs_of(spec, "dpo") == [("dpo", {})]


def test_trials_tune_the_learning_rate_and_the_offline_passes_with_the_same_design_for_every_method(tmp_path):
    # configs/family_tree: dpo lr 2e-4, ppo lr 3e-5; a stage override moves the centre of the lr axis
    spec = C.parse_spec("family_tree", "dpo,ppo,kto", 1, "x", 100, "", 10, ["kto.train.lr=1e-5"], trials=3)
    assert C.runs_of(spec, "dpo") == [
        ("dpo@beta=1,lr=6.67e-05,epochs=4", {"beta": 1.0, "train.lr": 6.67e-05, "train.epochs": 4.0}),
        ("dpo@beta=0.3,lr=0.0002,epochs=1", {"beta": 0.3, "train.lr": 2e-4, "train.epochs": 1.0}),
        ("dpo@beta=0.05,lr=0.0006,epochs=2", {"beta": 0.05, "train.lr": 6e-4, "train.epochs": 2.0})]
    # online methods have no passes over labels: their budget is rollout prompts
    assert [s for _, s in C.runs_of(spec, "ppo")] == [{"kl.target": 0.25, "train.lr": 1e-5},
                                                      {"kl.target": 1.0, "train.lr": 3e-5},
                                                      {"kl.target": 4.0, "train.lr": 9e-5}]
    assert [s["train.lr"] for _, s in C.runs_of(spec, "kto")] == [1e-5 / 3, 1e-5, 3e-5] or \
        [s["train.lr"] for _, s in C.runs_of(spec, "kto")] == [3.33e-06, 1e-05, 3e-05]
    # an explicit grid replaces its axis and keeps the others
    spec = C.parse_spec("family_tree", "dpo", 1, "x", 100, "", 10, [], trials=2,
                        grid=["dpo.train.lr=1e-4,5e-4"], tune="key,lr")
    assert [s for _, s in C.runs_of(spec, "dpo")] == [{"beta": 1.0, "train.lr": 1e-4}, {"beta": 0.05, "train.lr": 5e-4}]
    # an integer key keeps integer values (rs's k samples per prompt)
    spec = C.parse_spec("family_tree", "rs", 1, "x", 100, "", 10, [], trials=2, grid=["rs.k=2,8"], tune="key")
    assert [s for _, s in C.runs_of(spec, "rs")] == [{"k": 2}, {"k": 8}]
    assert all(type(s["k"]) is int for _, s in C.runs_of(spec, "rs"))
    for bad in ("key,depth", ""):
        with pytest.raises(ConfigError, match="--tune"):
            C.parse_spec("family_tree", "dpo", 1, "x", 100, "", 10, [], trials=2, tune=bad)
    with pytest.raises(ConfigError, match="same number of trials"):
        C.parse_spec("family_tree", "dpo", 1, "x", 100, "", 10, [], trials=3, grid=["dpo.train.lr=1e-4,5e-4"])
    with pytest.raises(ConfigError, match="missing"):
        C.parse_spec("family_tree", "dpo", 1, "x", 100, str(tmp_path), 10, [], trials=2)


def test_the_oracle_learns_from_the_gold_reward_without_labels():
    spec = C.parse_spec("family_tree", "sft,ppo-gold", 1, "x", 100, "", 10, [], best_of="")
    stages = [s for _, s in C.plan(spec)]
    assert "pairs" not in stages and "reward" not in stages and "ppo-gold" in stages
    assert C.METHODS["ppo-gold"][3] == ["reward=gold"]


def _summary(out, seed, run):
    return json.load(open(out / f"seed{seed}" / run / "summary.json"))


def test_compare_runs_resumes_and_reports(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    spec = C.parse_spec("family_tree", "sft,dpo,kto,ppo", 1, str(out), 24, "", 8, [*TINY, *TINY_RL, "train.threads=1"],
                        val_prompts=8, best_of="2,4")
    real = S.run_stage
    calls = []

    def interrupted(spec_, seed, stage):
        calls.append(stage)
        if stage == "kto":
            raise KeyboardInterrupt  # the user pressed Ctrl-C during KTO
        return real(spec_, seed, stage)

    monkeypatch.setattr(S, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.run_compare(spec, log=lambda _: None)
    sft_summary = out / "seed0" / "sft" / "summary.json"
    stamp = os.path.getmtime(sft_summary)
    assert (out / "seed0" / "dpo" / "final").is_dir() and not (out / "seed0" / "kto").exists()

    monkeypatch.setattr(S, "run_stage", real)
    result = C.run_compare(spec, log=lambda _: None)
    assert os.path.getmtime(sft_summary) == stamp  # finished SFT reused, not retrained
    res = json.load(open(out / "results.json"))
    rows = {r["run"]: r for r in res["rows"]}
    assert sorted(rows) == ["dpo", "kto", "ppo", "sft"]
    # equal budget: both offline methods saw 24 examples = 3 steps x batch 8
    for m in ("dpo", "kto"):
        assert _summary(out, 0, m)["steps"] == 3
    # equal labels: the reward model trained on exactly the pairs DPO learned from (the SFT samples' labels),
    # without the SFT log-prob term; the report's rows state the labels each method consumed
    pairs = sum(1 for _ in open(out / "pairs-seed0" / "pairs.jsonl"))
    rm_cfg = yaml.safe_load(open(out / "seed0" / "reward" / "config.yaml"))
    assert rm_cfg["data"]["dir"].endswith("pairs-seed0") and rm_cfg["logp_feature"] is False
    assert _summary(out, 0, "reward")["data/train_records"] == pairs == _summary(out, 0, "dpo")["data/train_records"]
    assert rows["dpo"]["labels"] == min(pairs, 24) and rows["dpo"]["label_kind"] == "pairs"
    assert rows["ppo"]["labels"] == pairs and rows["kto"]["label_kind"] == "binary"
    assert rows["ppo"]["rollouts"] == _summary(out, 0, "ppo")["episodes"] > 0 and rows["sft"]["labels"] == 0
    # global overrides reached every training stage
    for run in ("sft", "reward", "dpo", "kto", "ppo"):
        assert yaml.safe_load(open(out / "seed0" / run / "config.yaml"))["train"]["threads"] == 1
    # the baselines' T=1 samples are the SFT evaluation's own samples (same prompts, same sampling call)
    base = json.load(open(out / "seed0" / "baselines.json"))
    sft_eval = json.load(open(out / "seed0" / "sft" / "eval-family_tree.json"))
    assert base["temperature"]["1"]["per_prompt"] == sft_eval["per_prompt"]["gold"]
    assert set(base["best_of"]) == {"2", "4"} and len(base["best_of"]["4"]["per_prompt"]) == 8
    assert base["heuristic"]["name"] in base["battery"]
    # the oracle reranks the same T=1 samples by gold: never below the reward model's pick, prompt by prompt
    oracle, by_rm = base["oracle_best_of"]["4"]["per_prompt"], base["best_of"]["4"]["per_prompt"]
    assert len(oracle) == 8 and all(o >= r for o, r in zip(oracle, by_rm))
    # the reward model scored on the policies' own samples
    ppo_eval = json.load(open(out / "seed0" / "ppo" / "eval-family_tree.json"))
    assert ppo_eval["rm_accuracy_own"]["pairs"] <= 8 and len(ppo_eval["per_prompt"]["kl"]) == 8
    report = open(result["report"]).read()
    runs = result["results"]["runs"]
    for m in ("dpo", "kto", "ppo"):  # the words match the numbers, for every baseline
        line = report.split(f"- **{m}**")[1].split("\n")[0]
        for b, what in (("sft", "vs SFT"), ("heuristic", "vs the best heuristic"), ("best-of-4", "vs best-of-4")):
            d = runs[m]["vs"][b]
            part = line.split(what + " ")[1].split(";")[0].rstrip(".")
            assert part.startswith(f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
            assert part.endswith(" *") == d["significant"] == (d["low"] > 0 or d["high"] < 0)
    for b, what in (("sft", "SFT"), ("heuristic", "the best heuristic")):  # the summary lines name the winners
        summary = report.split(f"- Significantly better than {what}: ")[1].split("\n")[0]
        winners = [m for m in ("dpo", "kto", "ppo") if runs[m]["vs"][b]["significant"] and runs[m]["vs"][b]["mean"] > 0]
        assert summary.split(";")[0].rstrip(".") == (", ".join(winners) or "none")
    for png in ("frontier.png", "vs_sft.png", "overopt.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "results.csv").read_text().startswith("method,run,seed,gold")
    # the task card: each number is the one its stage wrote (one seed, so the means are the values)
    card, sft = res["task_card"], _summary(out, 0, "sft")
    manifest = json.load(open(out / "data-seed0" / "manifest.json"))
    pool = json.load(open(out / "pairs-seed0" / "manifest.json"))["policy_data"]
    assert card["demonstrations"] == manifest["gold"]["sft_mean"] and card["heuristic"] == base["heuristic"]["gold"]
    assert card["sft_by_temperature"] == {t: v["gold"] for t, v in base["temperature"].items()}
    assert card["sft_oracle_best_of_8"] == sft["learn/oracle_best_of_8"]
    assert card["sft_coverage@8"] == sft["learn/coverage@8"] and card["sft_coin_flips"] == sft["learn/coin_flips"]
    assert card["coin_flip_labels"] == pool["zero_gap_pairs"] / pool["pairs"]
    assert f"| oracle best-of-8 of SFT (gold picks) | {card['sft_oracle_best_of_8']:.3f} |" in report
    # decoding: its T=1 samples are the evaluation's own (same gold, same KL per prompt); greedy gold is kept per
    # prompt, so greedy against greedy has a cluster interval like every other comparison
    dec = json.load(open(out / "seed0" / "ppo" / "decoding-family_tree.json"))["temperatures"]
    sft_dec = json.load(open(out / "seed0" / "sft" / "decoding-family_tree.json"))["temperatures"]
    assert sorted(dec, key=float) == ["0", "0.3", "0.5", "0.7", "1"]
    assert dec["1"]["eval"] == pytest.approx(ppo_eval["per_prompt"]["gold"], abs=1e-12)
    assert dec["1"]["kl"] == pytest.approx(ppo_eval["per_prompt"]["kl"], abs=1e-5)
    assert len(dec["0"]["eval"]) == len(dec["0"]["val"]) == len(dec["0"]["kl"]) == 8
    assert all(k == pytest.approx(0.0, abs=1e-5) for k in sft_dec["1"]["kl"])  # SFT at T=1 against itself
    g = res["decoding"]["rows"]["ppo"]["greedy_vs_sft_greedy"]
    expected = cluster_bootstrap_ci([[a - b for a, b in zip(dec["0"]["eval"], sft_dec["0"]["eval"])]], seed=0)
    assert (g["mean"], g["low"], g["high"]) == pytest.approx(expected, abs=1e-12)
    assert "## Decoding-matched comparison (primary)" in report and (out / "frontier_decoding.png").stat().st_size > 1000
    ratings = res["ratings"]
    assert ratings["matches"] == 6 * 8  # 6 pairs of methods x 8 prompts x 1 seed
    assert ratings["bradley_terry"]["sft"]["rating"] == pytest.approx(1000.0)
    # the length-controlled column: the stored samples' lengths (words) as the covariate, SFT still the anchor
    lc = ratings["length_controlled"]
    assert set(lc["ratings"]) == set(ratings["bradley_terry"]) and lc["ratings"]["sft"]["rating"] == pytest.approx(1000.0)
    assert "BT, length-controlled" in report and f"Length effect: {lc['length']['coef']:+.2f}" in report
    # another label budget in the same directory would mix two comparisons: refused, nothing retrained
    other = C.parse_spec("family_tree", "sft,dpo", 1, str(out), 24, "", 8, TINY, labels=12)
    with pytest.raises(ConfigError, match="labels"):
        C.run_compare(other, log=lambda _: None)


def test_compare_trials_pick_the_best_on_validation(tmp_path):
    out = tmp_path / "trials"
    spec = C.parse_spec("family_tree", "sft,dpo", 1, str(out), 16, "", 8, TINY, val_prompts=8, best_of="",
                        trials=2, grid=["dpo.beta=0.05,1.0", "dpo.train.epochs=1,2"])
    result = C.run_compare(spec, log=lambda _: None)
    runs, chosen = result["results"]["runs"], result["results"]["chosen"]
    # configs/family_tree/dpo.yaml: lr 2e-4, so the lr axis is 2e-4 / 3 and x 3
    names = {"dpo@beta=0.05,lr=6.67e-05,epochs=1": (0.05, 6.67e-05, 1), "dpo@beta=1,lr=0.0006,epochs=2": (1.0, 6e-4, 2)}
    assert set(runs) == {"sft", *names}
    for run, (beta, lr, epochs) in names.items():
        cfg = yaml.safe_load(open(out / "seed0" / run / "config.yaml"))
        assert (cfg["beta"], cfg["train"]["lr"], cfg["train"]["epochs"]) == (beta, lr, epochs)
        summary = _summary(out, 0, run)  # the passes over the labels, not --budget, set the steps
        assert summary["steps"] == -(-epochs * summary["data/train_records"] // cfg["train"]["batch_size"]) or \
            summary["steps"] == epochs * summary["data/train_records"] // cfg["train"]["batch_size"]
    assert [round(runs[r]["budget"][0]["passes"]) for r in names] == [1, 2]
    vals = {r: runs[r]["val_gold"] for r in names}
    assert chosen["dpo"] == max(vals, key=vals.get)
    report = open(result["report"]).read()
    assert "## Every trial" in report and f"{chosen['dpo'].split('@')[1].replace(',', ', ')} (chosen)" in report
    assert "passes)" in report
