"""`tinyrlhf eval` and `tinyrlhf compare` on tiny runs: known answers, bad input, resume, report claims."""
import json
import os

import pytest

from conftest import tiny_sft
from tinyrlhf.cli import main
from tinyrlhf.eval import compare as C
from tinyrlhf.eval.evaluate import EvalSettings, evaluate_model

TINY_DATA = ["data.n_train_prompts=60", "data.n_pairs=80", "data.n_binary=40", "data.n_rankings=4",
             "data.n_eval_pairs=8", "data.n_eval_prompts=8"]
TINY = [*TINY_DATA, "sft.train.max_steps=3", "sft.model.tokenizer_vocab=400", "dpo.train.batch_size=8",
        "kto.train.batch_size=8", "sft.train.batch_size=8"]


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
    assert main([*base, "--task", "family_tree", "--methods", "dpo", "bogus.train.lr=1"]) == 2
    assert "expected STAGE.key=value" in capsys.readouterr().err


def test_compare_plan_needs_reward_model_only_for_rl():
    spec = C.parse_spec("family_tree", "dpo,kto", 2, "x", 100, "", 10, [])
    assert spec.methods[0] == "sft" and all(s != "reward" for _, s in C.plan(spec))
    spec = C.parse_spec("family_tree", "ppo", 1, "x", 100, "", 10, [])
    assert [s for _, s in C.plan(spec)] == ["data", "sft", "reward", "ppo", "eval:sft", "eval:ppo"]


def test_compare_runs_resumes_and_reports(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    spec = C.parse_spec("family_tree", "sft,dpo,kto", 1, str(out), 24, "", 8, TINY)
    real = C.run_stage
    calls = []

    def interrupted(spec_, seed, stage):
        calls.append(stage)
        if stage == "kto":
            raise KeyboardInterrupt  # the user pressed Ctrl-C during KTO
        return real(spec_, seed, stage)

    monkeypatch.setattr(C, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.run_compare(spec, log=lambda _: None)
    sft_summary = out / "seed0" / "sft" / "summary.json"
    stamp = os.path.getmtime(sft_summary)
    assert (out / "seed0" / "dpo" / "final").is_dir() and not (out / "seed0" / "kto").exists()

    calls.clear()
    monkeypatch.setattr(C, "run_stage", lambda *a: calls.append(a[2]) or real(*a))
    result = C.run_compare(spec, log=lambda _: None)
    assert os.path.getmtime(sft_summary) == stamp  # finished SFT reused, not retrained
    rows = json.load(open(out / "results.json"))["rows"]
    assert sorted(r["method"] for r in rows) == ["dpo", "kto", "sft"]
    # equal budget: both offline methods saw 24 examples = 3 steps x batch 8
    for m in ("dpo", "kto"):
        assert json.load(open(out / "seed0" / m / "summary.json"))["steps"] == 3
    report = open(result["report"]).read()
    ms = result["results"]["methods"]
    for m in ("dpo", "kto"):  # the words match the numbers
        word = "significant." if ms[m]["significant"] else "Not significant"
        assert f"**{m}**" in report and word in report.split(f"**{m}**")[1].split("\n")[0]
        assert f"{ms[m]['delta']:+.3f}" in report
    for png in ("frontier.png", "vs_sft.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "results.csv").read_text().startswith("method,seed,gold")
    ratings = json.load(open(out / "results.json"))["ratings"]
    assert ratings["matches"] == 3 * 8  # 3 pairs of methods x 8 prompts x 1 seed
    assert ratings["bradley_terry"]["sft"]["rating"] == pytest.approx(1000.0)
    assert set(ratings["elo"]) == {"sft", "dpo", "kto"} and "Bradley–Terry" in report
