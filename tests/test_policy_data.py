"""Preference data on a model's own samples, judged by the base data's annotator pool."""
import json
import os

import pytest

from conftest import tiny_sft
from tinyrlhf.cli import main
from tinyrlhf.data.records import read_records
from tinyrlhf.study.policy_data import write_policy_data


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdata")
    data, model = tiny_sft(root, steps=2, sizes=dict(n_train_prompts=40, n_eval_prompts=8, n_pairs=40,
                                                     n_rankings=4, n_binary=8, n_eval_pairs=8))
    return root, data, model

def test_pairs_come_from_the_model_and_the_base_annotators(base):
    root, data, model = base
    out = str(root / "p1")
    counts = write_policy_data(model, data, out, seed=3, n_prompts=12, k=3, max_new_tokens=6)
    pairs = read_records(os.path.join(out, "pairs.jsonl"), "pair")
    base_ids = {a["id"] for a in json.load(open(os.path.join(data, "manifest.json")))["annotators"]["pool"]}
    assert counts["pairs"] == len(pairs) == 12 - counts["identical_samples"]
    assert all(p.chosen != p.rejected and p.meta["source"] == "policy" for p in pairs)
    assert {p.meta["annotator"] for p in pairs} <= base_ids
    sft_prompts = [json.loads(line)["prompt"] for line in open(os.path.join(data, "sft.jsonl"))][:12]
    assert {p.prompt for p in pairs} <= set(sft_prompts)
    assert len(read_records(os.path.join(out, "binary.jsonl"), "binary")) == 12
    for name in ("sft.jsonl", "eval_pairs.jsonl", "eval_prompts.jsonl", "manifest.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    # both agreements are stated: with gold, and between the labeller and a second, distinct annotator
    info = json.load(open(os.path.join(out, "manifest.json")))["policy_data"]
    nonzero = [p for p in pairs if p.meta["gold_chosen"] != p.meta["gold_rejected"]]
    if nonzero:
        agree = sum(p.meta["gold_chosen"] > p.meta["gold_rejected"] for p in nonzero) / len(nonzero)
        assert info["agreement_measured"] == pytest.approx(agree, abs=1e-12)
        assert counts["inter_annotator"] == info["inter_annotator_measured"]
        assert info["inter_annotator_measured"] * len(nonzero) == pytest.approx(
            round(info["inter_annotator_measured"] * len(nonzero)), abs=1e-9)   # a share of these pairs
    else:
        assert info["agreement_measured"] is None and info["inter_annotator_measured"] is None
        assert info["agreement_expected"] is None and info["inter_annotator_expected"] is None
    # same seed -> same bytes; another seed -> other samples
    write_policy_data(model, data, str(root / "p2"), seed=3, n_prompts=12, k=3, max_new_tokens=6)
    assert open(os.path.join(out, "pairs.jsonl")).read() == open(str(root / "p2" / "pairs.jsonl")).read()
    assert open(os.path.join(out, "manifest.json")).read() == open(str(root / "p2" / "manifest.json")).read()
    write_policy_data(model, data, str(root / "p3"), seed=4, n_prompts=12, k=3, max_new_tokens=6)
    assert open(os.path.join(out, "pairs.jsonl")).read() != open(str(root / "p3" / "pairs.jsonl")).read()


def test_more_labels_than_prompts_label_the_prompts_again_on_fresh_samples(base):
    root, data, model = base
    n = len({json.loads(line)["prompt"] for line in open(os.path.join(data, "sft.jsonl"))})
    out = str(root / "again")
    counts = write_policy_data(model, data, out, seed=3, n_prompts=n + 10, k=2, max_new_tokens=6)
    info = json.load(open(os.path.join(out, "manifest.json")))["policy_data"]
    assert (info["prompts"], info["distinct_prompts"]) == (n + 10, n)
    assert counts["pairs"] == n + 10 - counts["identical_samples"]
    pairs = read_records(os.path.join(out, "pairs.jsonl"), "pair")
    by_prompt = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt, []).append((p.chosen, p.rejected))
    twice = [v for v in by_prompt.values() if len(v) == 2]
    assert twice and any(set(a) != set(b) for a, b in twice)  # a second label is on other samples


def test_cli_checks_its_arguments(base, capsys, tmp_path):
    root, data, model = base
    args = ["data", "family_tree", "--out", str(tmp_path / "o"), "--from-model", model]
    assert main(args) == 2 and "needs --base" in capsys.readouterr().err
    assert main([*args, "--base", str(tmp_path)]) == 2 and "no manifest.json" in capsys.readouterr().err
    assert main([*args, "--base", data, "k=1"]) == 2 and "need k >= 2" in capsys.readouterr().err
    assert main([*args, "--base", data, "n_prompts=4", "k=2", "max_new_tokens=4"]) == 0


def test_manifest_states_both_agreements(tmp_path, monkeypatch):
    """With scripted 'samples' (two candidates per prompt, so most pairs differ in gold), the manifest's
    agreement with gold is the labels' share and the inter-annotator agreement is close to what the base
    pool predicts on these gaps (1,500 prompts: sd ~ 0.012)."""
    import random

    from tinyrlhf.study import policy_data
    from tinyrlhf.tasks import get_task
    from tinyrlhf.tasks.annotators import AnnotatorPool
    from tinyrlhf.tasks.generate import write_task_data

    base = str(tmp_path / "base")
    write_task_data("family_tree", base, seed=0, n_train_prompts=1500, n_eval_prompts=5, n_pairs=1500,
                    n_rankings=2, n_binary=2, n_eval_pairs=2)
    task, rng = get_task("family_tree"), random.Random(0)
    monkeypatch.setattr(policy_data, "sample_k", lambda model_dir, prompts, k, **kw:
                        [task.candidates(p, k, rng) for p in prompts])
    counts = policy_data.write_policy_data("unused", base, str(tmp_path / "out"), seed=1, n_prompts=1500, k=2)
    info = json.load(open(tmp_path / "out" / "manifest.json"))
    pairs = read_records(str(tmp_path / "out" / "pairs.jsonl"), "pair")
    nonzero = [p for p in pairs if p.meta["gold_chosen"] != p.meta["gold_rejected"]]
    assert len(nonzero) > 1000
    agree = sum(p.meta["gold_chosen"] > p.meta["gold_rejected"] for p in nonzero) / len(nonzero)
    assert info["policy_data"]["agreement_measured"] == pytest.approx(agree, abs=1e-12)
    pool = policy_data.annotator_pool(info)
    gaps = [p.meta["gold_chosen"] - p.meta["gold_rejected"] for p in nonzero]
    assert isinstance(pool, AnnotatorPool)
    assert counts["inter_annotator"] == info["policy_data"]["inter_annotator_measured"]
    assert info["policy_data"]["inter_annotator_expected"] == pytest.approx(pool.expected_inter_agreement(gaps))
    assert info["policy_data"]["agreement_expected"] == pytest.approx(pool.expected_agreement(gaps))
    assert counts["inter_annotator"] == pytest.approx(pool.expected_inter_agreement(gaps), abs=0.04)
    assert agree == pytest.approx(pool.expected_agreement(gaps), abs=0.04)
    assert agree > counts["inter_annotator"] + 0.03
