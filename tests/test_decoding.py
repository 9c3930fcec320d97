"""Decoding as part of the method (study/decoding.py, study/report_decoding.py): the KL of tempered sampling
against an exact enumeration, the temperature chosen on validation only, and Holm over the table's family."""
import json
import math
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyrlhf.eval.metrics import holm_adjust
from tinyrlhf.logprobs import token_logps
from tinyrlhf.rollout import generate
from tinyrlhf.study.decoding import best_temperature, tempered_kl
from tinyrlhf.study.report_decoding import curve_at, decoding_matched
from tinyrlhf.study.spec import parse_spec

V, EOS, PROMPT = 6, 0, [3, 4]


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=8, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=EOS, eos_token_id=EOS)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)  # a peaked, far-from-uniform next-token distribution
    return model


def _next_logps(model, prefix, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prefix])).logits[0, -1].double()
    return torch.log_softmax(logits / temperature, -1)


def _sequences(model, temperature):
    """Every response of at most 2 tokens with its exact log-prob under softmax(logits / T):
    [EOS] alone, or [a, b] for a != EOS and any b (the second token ends the response either way)."""
    first = _next_logps(model, PROMPT, temperature)
    out = {(EOS,): first[EOS].item()}
    for a in range(1, V):
        second = _next_logps(model, PROMPT + [a], temperature)
        for b in range(V):
            out[(a, b)] = first[a].item() + second[b].item()
    return out


@pytest.mark.parametrize("temperature", [0.5, 0.7])
def test_tempered_kl_matches_the_exact_small_vocabulary_value(toy, temperature):
    """KL(pi_T || pi) = sum_y pi_T(y) (log pi_T(y) - log pi(y)) over all 31 responses, against the estimator of
    decode_run (one sample per row from the rollout engine at T, log pi_T - log pi by token_logps): the mean of
    4,000 samples lies within 4 standard errors, and each sample's log pi_T equals the sampler's own log-probs."""
    lp_t, lp_1 = _sequences(toy, temperature), _sequences(toy, 1.0)
    assert sum(math.exp(v) for v in lp_t.values()) == pytest.approx(1.0, abs=1e-9)
    exact = sum(math.exp(lp_t[y]) * (lp_t[y] - lp_1[y]) for y in lp_t)
    n = 4000
    ro = generate(toy, torch.tensor([PROMPT]), torch.ones(1, 2, dtype=torch.long), max_new_tokens=2,
                  eos_token_id=EOS, pad_token_id=EOS, temperature=temperature, seed=1, n_per_prompt=n)
    seq = ro.sequences()
    with torch.no_grad():
        own = token_logps(toy, **seq, temperature=temperature)[:, 1:].sum(-1).double()
        ref = token_logps(toy, **seq)[:, 1:].sum(-1).double()
    assert torch.allclose(own, ro.logprobs.sum(-1).double(), atol=1e-5)
    for row, (ids, mask) in enumerate(zip(ro.response_ids.tolist()[:50], ro.response_mask.tolist()[:50])):
        y = tuple(t for t, m in zip(ids, mask) if m)
        assert own[row].item() == pytest.approx(lp_t[y], abs=1e-5) and ref[row].item() == pytest.approx(lp_1[y], abs=1e-5)
    est = tempered_kl(own, ref, temperature)
    se = est.std().item() / math.sqrt(n)
    assert exact > 0.05 and abs(est.mean().item() - exact) < 4 * se


def test_greedy_kl_is_minus_the_log_prob_of_the_greedy_response(toy):
    """A greedy policy is a point mass on y*: KL(delta || pi) = -log pi(y*) exactly."""
    ro = generate(toy, torch.tensor([PROMPT]), torch.ones(1, 2, dtype=torch.long), max_new_tokens=2,
                  eos_token_id=EOS, pad_token_id=EOS, temperature=0.0)
    y = tuple(t for t, m in zip(ro.response_ids[0].tolist(), ro.response_mask[0].tolist()) if m)
    lp_1 = _sequences(toy, 1.0)
    first = _next_logps(toy, PROMPT, 1.0)
    assert y[0] == int(first.argmax())  # greedy picks the most likely token at each step
    seq = ro.sequences()
    with torch.no_grad():
        ref = token_logps(toy, **seq)[:, 1:].sum(-1).double()
    kl = tempered_kl(torch.tensor([123.0]), ref, 0.0)  # the policy's own log-prob is ignored at T=0
    assert kl.item() == pytest.approx(-lp_1[y], abs=1e-5)


def test_curve_interpolates_linearly_and_is_flat_beyond_its_ends():
    curve = [(4.0, 0.6), (0.0, 0.2), (1.0, 0.4)]
    assert curve_at(curve, 0.5) == pytest.approx(0.3) and curve_at(curve, 2.5) == pytest.approx(0.5)
    assert curve_at(curve, -1) == 0.2 and curve_at(curve, 9) == 0.6


def _write(path, temps):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"settings": {}, "temperatures": temps}, f)


def test_temperature_is_chosen_on_validation_and_holm_covers_the_table(tmp_path):
    """Hand-made decoding files, one seed, 40 prompts. SFT's validation gold is best greedy (0.3); DPO's is best
    at T=0.3 (0.6) although on the EVALUATION prompts DPO would look better greedy (0.9 vs 0.4): the report must
    show DPO at T=0.3 with its evaluation gold there (0.4), never the greedy 0.9 it could have peeked at."""
    spec = parse_spec("family_tree", "sft,dpo", 1, str(tmp_path), 8, "", 40, [], best_of="",
                      temperatures="1,0.3,0")
    n = 40
    alt = lambda a, b: [a if i % 2 else b for i in range(n)]  # noqa: E731  (spread, so intervals have width)
    _write(str(tmp_path / "seed0" / "sft" / "decoding-family_tree.json"), {
        "1": {"val": [0.1] * n, "eval": alt(0.0, 0.2), "kl": [0.0] * n},
        "0.3": {"val": [0.2] * n, "eval": alt(0.1, 0.3), "kl": [1.0] * n},
        "0": {"val": [0.3] * n, "eval": alt(0.2, 0.4), "kl": [3.0] * n}})
    _write(str(tmp_path / "seed0" / "dpo" / "decoding-family_tree.json"), {
        "1": {"val": [0.2] * n, "eval": alt(0.1, 0.3), "kl": [0.5] * n},
        "0.3": {"val": [0.6] * n, "eval": alt(0.3, 0.5), "kl": [1.5] * n},
        "0": {"val": [0.5] * n, "eval": alt(0.8, 1.0), "kl": [4.0] * n}})
    base = {0: {"heuristic": {"per_prompt": alt(0.5, 0.7)}}}
    dm = decoding_matched(spec, base)
    assert best_temperature({"1": [[0.1]], "0.3": [[0.2]], "0": [[0.3]]}) == "0"
    sft, dpo = dm["rows"]["sft"], dm["rows"]["dpo"]
    assert sft["temperature"] == 0.0 and sft["gold"]["mean"] == pytest.approx(0.3)
    assert dpo["temperature"] == 0.3 and dpo["gold"]["mean"] == pytest.approx(0.4)
    assert dpo["kl"]["mean"] == pytest.approx(1.5)
    assert dpo["vs"]["sft"]["mean"] == pytest.approx(0.1) and dpo["vs"]["heuristic"]["mean"] == pytest.approx(-0.2)
    # the tempered-SFT curve at DPO's KL 1.5: between (1.0, 0.2) and (3.0, 0.3) -> 0.225
    assert dpo["vs_curve"]["curve"] == pytest.approx(0.225)
    # Holm over the family of this table: DPO vs SFT and DPO vs the heuristic
    assert dm["family_size"] == 2
    raw = {"sft": dpo["vs"]["sft"]["p"], "heuristic": dpo["vs"]["heuristic"]["p"]}
    adjusted = holm_adjust(raw)
    for b in raw:
        assert dpo["vs"][b]["p_holm"] == adjusted[b] and dpo["vs"][b]["significant"] == (adjusted[b] <= 0.05)
    assert dpo["greedy_vs_sft_greedy"]["mean"] == pytest.approx(0.6)
    # an oracle (PPO on the gold reward) is a bound: shown, never part of the family or the method pairs
    spec = parse_spec("family_tree", "sft,dpo,ppo-gold", 1, str(tmp_path), 8, "", 40, [], best_of="",
                      temperatures="1,0.3,0")
    _write(str(tmp_path / "seed0" / "ppo-gold" / "decoding-family_tree.json"), {
        "1": {"val": [0.9] * n, "eval": alt(0.8, 1.0), "kl": [2.0] * n},
        "0.3": {"val": [0.8] * n, "eval": alt(0.7, 0.9), "kl": [2.5] * n},
        "0": {"val": [0.7] * n, "eval": alt(0.6, 0.8), "kl": [5.0] * n}})
    dm2 = decoding_matched(spec, base)
    assert dm2["family_size"] == 2 and list(dm2["method_pairs"]) == []
    assert dm2["rows"]["dpo"]["vs"]["sft"]["p_holm"] == dpo["vs"]["sft"]["p_holm"]
    oracle = dm2["rows"]["ppo-gold"]["vs"]["sft"]
    assert oracle["mean"] == pytest.approx(0.6) and oracle["p_holm"] == oracle["p"] and oracle["significant"]


def test_every_policy_of_a_task_is_sampled_to_the_same_answer_length():
    """Summaries (references up to ~21 tokens, long demonstrations ~36) get 32 new tokens everywhere in a study;
    the short-answer tasks 24: the decoding sweep, the baselines, the labels and the evaluation agree."""
    from tinyrlhf.study import baselines, decoding
    from tinyrlhf.study.spec import parse_spec
    for task, tokens in (("summarize", 32), ("family_tree", 24), ("positive_review", 24)):
        spec = parse_spec(task, "dpo", 1, "x", 100, "", 10, [])
        assert decoding.decoding_settings(spec, 0)["max_new_tokens"] == tokens
        assert baselines._settings(spec, 0)["max_new_tokens"] == tokens
