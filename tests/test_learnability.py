"""What preference learning can work with (train/policy_eval.learnability): the oracle best-of-k, coverage and
coin-flip rate, checked by value on hand-made samples; SFT's summary reports the same numbers a fresh look at
its final model gives; the data manifest and the compare report carry the task card."""
import json
import os

import pytest
import torch

from tinyrlhf.config import SFTConfig, load_config
from tinyrlhf.errors import ConfigError
from tinyrlhf.eval.evaluate import load_eval_model
from tinyrlhf.study.report_md import task_lines
from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.policy_eval import learnability, sample_groups
from tinyrlhf.train.sft import run_sft


class NumberTask:
    """Gold = the number written in the completion (max 1.0): samples are their own gold."""
    max_gold = 1.0

    def gold_reward(self, prompt, completion):
        return float(completion)


def test_learnability_by_hand():
    """Three prompts, 4 samples each.
    p1: golds 0.1, 0.9, 0.1, 0.2 -> best 0.9 (>= 0.5: covered); first two distinct texts "0.1", "0.9": a real pair.
    p2: "0.3", "0.30", "0.3", "0.3" -> best 0.3 (not covered); two distinct texts with equal gold 0.3: a coin flip.
    p3: all "0.6" -> best 0.6 (covered); one distinct text: no pair at all (identical).
    oracle best-of-4 = (0.9 + 0.3 + 0.6) / 3 = 0.6; coverage 2/3; coin flips 1 of 2 pairs; identical 1/3;
    sample gold = (1.3 + 1.2 + 2.4) / 12 = 4.9 / 12."""
    groups = [["0.1", "0.9", "0.1", "0.2"], ["0.3", "0.30", "0.3", "0.3"], ["0.6"] * 4]
    out = learnability(NumberTask(), ["p1", "p2", "p3"], groups)
    assert out["learn/oracle_best_of_4"] == pytest.approx(0.6, abs=1e-12)
    assert out["learn/coverage@4"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["learn/coin_flips"] == 0.5
    assert out["learn/identical"] == pytest.approx(1 / 3, abs=1e-12)
    assert out["learn/sample_gold"] == pytest.approx(4.9 / 12, abs=1e-12)
    assert out["learn/k"] == 4


def test_sft_reports_learnability_of_its_final_model(tmp_path, capsys):
    data = str(tmp_path / "data")
    write_task_data("family_tree", data, seed=0, n_train_prompts=60, n_eval_prompts=8, n_pairs=40, n_rankings=4,
                    n_binary=16, n_eval_pairs=8)
    out = str(tmp_path / "sft")
    summary = run_sft(load_config(SFTConfig, None, [
        f"out_dir={out}", "model.tokenizer_vocab=400", "data.task=family_tree", f"data.dir={data}",
        "train.max_steps=4", "train.batch_size=8", "train.progress=false", "eval.n_prompts=6",
        "eval.max_new_tokens=8", "learnability_k=4"]))
    assert "learnability (6 eval prompts, 4 samples each at T=1): oracle best-of-4 gold" in capsys.readouterr().out
    task = get_task("family_tree")
    prompts = task.prompts("eval", 6, 0)
    model, tok = load_eval_model(os.path.join(out, "final"), torch.device("cpu"))
    groups = sample_groups(model, tok, prompts, 4, temperature=1.0, max_new_tokens=8, seed=0,
                           device=torch.device("cpu"))
    again = learnability(task, prompts, groups)
    for key, value in again.items():
        assert summary[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert json.load(open(os.path.join(out, "summary.json")))["learn/k"] == 4


def test_learnability_k_of_one_is_refused():
    with pytest.raises(ConfigError, match="learnability_k"):
        load_config(SFTConfig, None, ["learnability_k=1"])


def test_data_manifest_carries_the_task_card(tmp_path):
    counts = write_task_data("family_tree", str(tmp_path), seed=0, n_train_prompts=40, n_eval_prompts=30,
                             n_pairs=60, n_rankings=0, n_binary=0, n_eval_pairs=4)
    m = json.load(open(tmp_path / "manifest.json"))
    from tinyrlhf.tasks.baselines import best_baseline, heuristic_rules
    task = get_task("family_tree")
    name, value = best_baseline(task, task.prompts("eval", 30, 0))
    assert m["gold"]["heuristic"] == {"name": name, "mean": pytest.approx(value, abs=1e-6)}
    assert name in heuristic_rules(task)  # on family_tree a rule that reads the prompt, not a trick
    pairs = [json.loads(line) for line in open(tmp_path / "pairs.jsonl")]
    ties = sum(p["meta"]["gold_chosen"] == p["meta"]["gold_rejected"] for p in pairs) / len(pairs)
    assert m["annotators"]["zero_gap_share"] == pytest.approx(ties, abs=1e-6) == counts["coin_flips"]


def test_report_warns_when_labels_are_mostly_coin_flips():
    card = {"max_gold": 1.2, "demonstrations": 0.98, "heuristic": 0.52, "sft_by_temperature": {"1": 0.2, "0": 0.38},
            "sft_oracle_best_of_8": 0.45, "sft_coverage@8": 0.31, "sft_coin_flips": 0.8, "coin_flip_labels": 0.84,
            "inter_annotator": 0.73, "agreement_with_gold": 0.82}
    text = "\n".join(task_lines(card))
    assert text.startswith("**Warning:** 84% of the preference labels are coin flips")
    assert "| SFT at T=1 | 0.200 |\n| SFT at T=0 | 0.380 |" in text
    assert "| prompts with a right answer among 8 SFT samples | 31% |" in text
    good = dict(card, coin_flip_labels=0.3, **{"sft_coverage@8": 0.8})
    assert "Warning" not in "\n".join(task_lines(good))


def test_task_settings_flow_from_the_data_to_every_stage(tmp_path):
    """Data written with a task override (max_children=2) is scored as that task everywhere: the manifest's task
    config comes back from task_of_data (used by begin_run, compare's stages and eval), and compare's data stage
    reads --config-dir's data.yaml under the data.key=value overrides."""
    from tinyrlhf.study.spec import seed_task
    from tinyrlhf.study.stages import data_settings
    from tinyrlhf.tasks.generate import task_of_data
    from tinyrlhf.train.data import begin_run
    data = tmp_path / "data"
    write_task_data("family_tree", str(data), seed=0, max_children=2, n_train_prompts=30, n_eval_prompts=4,
                    n_pairs=20, n_rankings=0, n_binary=0, n_eval_pairs=2)
    task = task_of_data(str(data), "family_tree")
    assert task.config.max_children == 2 and get_task("family_tree").config.max_children == 3
    assert task_of_data(str(data), "positive_review").name == "positive_review"  # another task's data: defaults
    cfg = load_config(SFTConfig, None, [f"out_dir={tmp_path / 'run'}", "data.task=family_tree", f"data.dir={data}",
                                        "model.tokenizer_vocab=400", "train.max_steps=1", "train.progress=false"])
    start = begin_run(cfg, "sft")
    assert start.task.config.max_children == 2
    start.run.close()
    conf = tmp_path / "configs"
    conf.mkdir()
    (conf / "data.yaml").write_text("max_children: 2\nn_train_prompts: 50\n")
    from tinyrlhf.study.spec import parse_spec
    spec = parse_spec("family_tree", "sft", 1, str(tmp_path / "cmp"), 8, str(conf), 4, ["data.n_train_prompts=40"])
    assert data_settings(spec) == {"max_children": 2, "n_train_prompts": 40}
    os.makedirs(tmp_path / "cmp", exist_ok=True)
    os.symlink(data, tmp_path / "cmp" / "data-seed0")
    assert seed_task(spec, 0).config.max_children == 2
