"""Reward-model options: mean pooling over the completion, the log-prob feature, rankings as extra pairs."""
import json
import os

import pytest
import torch

from tinyrlhf.config import ModelConfig, RewardConfig, load_config
from tinyrlhf.data.collate import encode, pad
from tinyrlhf.errors import ConfigError
from tinyrlhf.logprobs import sequence_logps
from tinyrlhf.models import RewardModel, build_model, load_reward_model
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.reward import run_reward

SMALL = dict(n_train_prompts=60, n_eval_prompts=8, n_pairs=60, n_rankings=10, n_binary=10, n_eval_pairs=20)
CORPUS = ["- Cal(m): Ann(f), Bob(m)\nQ: parents of Cal?\nA: Ann, Bob."] * 20
PROMPTS = ["- Cal(m): Ann(f), Bob(m)\nQ: parents of Cal?\nA:", "- Dee(f): Eve(f), Gus(m)\nQ: parents of Dee?\nA:"]
COMPLETIONS = [" Ann, Bob.", " Eve"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data") / "ft")
    write_task_data("family_tree", d, seed=0, **SMALL)
    return d


def tiny_lm():
    return build_model(ModelConfig(preset="gpt2-tiny", tokenizer_vocab=300), CORPUS, seed=0)


def batch(tok):
    return pad(encode(tok, PROMPTS, COMPLETIONS, 64), tok.pad_token_id)


def test_default_reads_the_last_token_and_needs_no_completion_mask():
    lm, tok = tiny_lm()
    rm = RewardModel(lm)
    b = batch(tok)
    r = rm.raw(b["input_ids"], b["attention_mask"])
    assert r.shape == (2,) and not rm.logp_feature and rm.pool == "last"
    with pytest.raises(ConfigError):
        RewardModel(lm, pool="max")


def test_mean_pool_averages_completion_hidden_states_only():
    lm, tok = tiny_lm()
    rm = RewardModel(lm, pool="mean")
    b = batch(tok)
    with pytest.raises(ConfigError):
        rm.raw(b["input_ids"], b["attention_mask"])  # the completion mask is required
    r = rm.raw(b["input_ids"], b["attention_mask"], b["completion_mask"])
    hidden = lm.transformer(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    for i in range(2):
        m = b["completion_mask"][i].bool()
        expect = rm.head(hidden[i][m].mean(0)).squeeze()
        assert torch.allclose(r[i], expect, atol=1e-5)
        # and it differs from the last-token reading
        assert not torch.allclose(r[i], rm.head(hidden[i][b["attention_mask"][i].bool()][-1]).squeeze())


def test_logp_feature_adds_the_mean_completion_log_prob():
    lm, tok = tiny_lm()
    plain, with_lp = RewardModel(lm), RewardModel(lm, logp_feature=True)
    with_lp.head.load_state_dict(plain.head.state_dict())
    b = batch(tok)
    diff = with_lp.raw(**b) - plain.raw(b["input_ids"], b["attention_mask"])
    expect = sequence_logps(lm, b, average=True)
    assert torch.allclose(diff, expect, atol=1e-4)
    with_lp.logp_weight.data.fill_(0.0)
    assert torch.allclose(with_lp.raw(**b), plain.raw(b["input_ids"], b["attention_mask"]), atol=1e-6)


def test_options_survive_a_training_run_and_reload(tmp_path, data_dir):
    out = str(tmp_path / "rm")
    cfg = load_config(RewardConfig, None, [
        f"out_dir={out}", "model.tokenizer_vocab=400", "data.task=family_tree", f"data.dir={data_dir}",
        "train.max_steps=3", "train.batch_size=8", "train.progress=false", "train.eval_every=0",
        "train.save_every=0", "normalize_samples=16", "pool=mean", "logp_feature=true", "rankings=true"])
    summary = run_reward(cfg)
    assert summary["finished"] and 0 <= summary["eval/accuracy_gold"] <= 1
    # 60 pairs + 10 rankings of 4 candidates (6 pairs each)
    assert summary["data/train_pairs"] == 60 + 10 * 6
    head = json.load(open(os.path.join(out, "final", "reward_head.json")))
    assert head["pool"] == "mean" and head["logp_feature"] is True
    rm, tok = load_reward_model(os.path.join(out, "final"))
    assert rm.pool == "mean" and rm.logp_feature
    assert float(rm.logp_weight) != 1.0  # trained, then saved and loaded
    b = batch(tok)
    with torch.no_grad():
        r = rm(**b)
    assert r.shape == (2,) and torch.isfinite(r).all()
