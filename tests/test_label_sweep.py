"""Label-budget curves (study/label_sweep.py): the sweep reuses the comparison's data and SFT, holds the effort
per label constant, and its verdict says only what its numbers show."""
import json
import os

import pytest
import yaml

from tinyrlhf.errors import ConfigError
from tinyrlhf.study import compare as C
from tinyrlhf.study import label_sweep as L

TINY = ["data.n_train_prompts=60", "data.n_pairs=80", "data.n_binary=40", "data.n_rankings=4", "data.n_eval_pairs=8",
        "data.n_eval_prompts=8", "sft.train.max_steps=3", "sft.model.tokenizer_vocab=400", "sft.train.batch_size=8",
        "dpo.train.batch_size=8", "reward.train.max_steps=3", "reward.train.batch_size=8",
        "ppo.rollout.prompts_per_step=8", "ppo.train.batch_size=8", "ppo.ppo.minibatch_size=8",
        "ppo-gold.rollout.prompts_per_step=8", "ppo-gold.train.batch_size=8", "ppo-gold.ppo.minibatch_size=8",
        "train.threads=1"]


def test_budgets_are_parsed_and_bad_ones_named():
    assert L.parse_budgets("2560,640,10240") == (640, 2560, 10240)
    for bad in ("640", "a,b", "640,640", "1,8"):
        with pytest.raises(ConfigError, match="--label-sweep"):
            L.parse_budgets(bad)


def _ci(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def test_the_verdict_names_the_limit_its_numbers_show():
    rising = {"task": "t", "seeds": 3, "sft": _ci(0.30, 0.28, 0.32), "oracle_best_of_8": 0.31,
              "oracle_ppo": {"run": "ppo-gold", "gold": _ci(0.70, 0.65, 0.75)},
              "budgets": {"640": {"ppo": {"gold": _ci(0.32, 0.30, 0.34), "vs_sft": _ci(0.02, 0.0, 0.04)},
                                  "reward_model": {"accuracy_gold": 0.55, "pairs": [400]}},
                          "10240": {"ppo": {"gold": _ci(0.45, 0.43, 0.47), "vs_sft": _ci(0.15, 0.13, 0.17)},
                                    "reward_model": {"accuracy_gold": 0.66, "pairs": [6000]}}}}
    text = " ".join(L.verdict(rising))
    assert "base model limits" in text  # oracle best-of-8 only 0.01 above SFT
    assert "still rising at the largest budget, so more labels would help" in text
    assert "0.550 at 640 labels -> 0.660 at 10,240" in text
    assert "38% of the oracle's gain" in text and "quality limits" in text
    # three budgets: most of the gain by the middle one is not "still rising"
    saturating = json.loads(json.dumps(rising))
    saturating["budgets"]["2560"] = {"ppo": {"gold": _ci(0.44, 0.42, 0.46), "vs_sft": _ci(0.14, 0.12, 0.16)},
                                     "reward_model": {"accuracy_gold": 0.6, "pairs": [1500]}}
    text = " ".join(L.verdict(saturating))
    assert "most of it came by 2,560 labels (then +0.010)" in text and "still rising" not in text
    # a rise split into two steps, the later one larger, each within the noise: neither "most of it came by"
    # nor "still rising"
    gradual = json.loads(json.dumps(rising))
    gradual["budgets"]["2560"] = {"ppo": {"gold": _ci(0.35, 0.33, 0.37), "vs_sft": _ci(0.05, 0.03, 0.07)},
                                  "reward_model": {"accuracy_gold": 0.6, "pairs": [1500]}}
    gradual["budgets"]["10240"]["ppo"]["vs_sft"] = _ci(0.15, 0.09, 0.21)  # noise = half-width 0.06
    gradual["budgets"]["10240"]["ppo"]["gold"] = _ci(0.40, 0.34, 0.46)
    text = " ".join(L.verdict(gradual))
    assert "rising in steps each within the noise (+0.030, then +0.050; ±0.060)" in text
    assert "most of it" not in text and "still rising" not in text
    flat = json.loads(json.dumps(rising))
    flat["oracle_best_of_8"] = 0.6
    flat["budgets"]["10240"]["ppo"]["gold"] = _ci(0.325, 0.30, 0.35)
    flat["oracle_ppo"]["gold"] = _ci(0.33, 0.32, 0.34)
    text = " ".join(L.verdict(flat))
    assert "base model limits" not in text and "flat across budgets" in text and "quality limits" not in text


def test_the_sweep_reuses_sft_and_holds_passes_per_label(tmp_path):
    out = tmp_path / "cmp"
    spec = C.parse_spec("family_tree", "sft,ppo,dpo,ppo-gold", 1, str(out), 16, "", 8, TINY, val_prompts=8,
                        best_of="", temperatures="", labels=16)
    C.run_compare(spec, log=lambda _: None)
    sft_stamp = os.path.getmtime(out / "seed0" / "sft" / "summary.json")
    result = L.run_label_sweep(spec, (8, 24), log=lambda _: None)
    assert os.path.getmtime(out / "seed0" / "sft" / "summary.json") == sft_stamp  # reused, not retrained
    assert not (out / "labels-8" / "seed0" / "sft").exists() and not (out / "labels-8" / "data-seed0").exists()
    for labels in (8, 24):
        sub = out / f"labels-{labels}"
        manifest = json.load(open(sub / "pairs-seed0" / "manifest.json"))
        assert manifest["policy_data"]["prompts"] == labels
        assert manifest["source_model"] == str(out / "seed0" / "sft" / "final")
        rm = yaml.safe_load(open(sub / "seed0" / "reward" / "config.yaml"))
        main_rm = json.load(open(out / "seed0" / "reward" / "summary.json"))
        main_passes = 3 * 8 / main_rm["data/train_records"]
        assert rm["train"]["max_steps"] == 0 and rm["train"]["epochs"] == pytest.approx(main_passes, abs=0.05)
        ppo = yaml.safe_load(open(sub / "seed0" / "ppo" / "config.yaml"))
        assert ppo["reward"] == str(sub / "seed0" / "reward")
        gold = json.load(open(sub / "seed0" / "ppo" / "eval-family_tree.json"))["per_prompt"]["gold"]
        assert result["budgets"][str(labels)]["ppo"]["gold"]["mean"] == pytest.approx(sum(gold) / len(gold))
    assert result["oracle_ppo"]["run"] == "ppo-gold"
    assert yaml.safe_load(open(out / "seed0" / "ppo-gold" / "config.yaml"))["reward"] == "gold"
    text = open(out / "label_sweep.md").read()
    assert "## What limits this task" in text and (out / "label_sweep.png").stat().st_size > 1000
    # a rerun does nothing new
    stamp = os.path.getmtime(out / "labels-24" / "seed0" / "ppo" / "summary.json")
    L.run_label_sweep(spec, (8, 24), log=lambda _: None)
    assert os.path.getmtime(out / "labels-24" / "seed0" / "ppo" / "summary.json") == stamp
