"""Offline preference losses: each checked against a hand-derived value, an invariance, or a gradient sign."""
import math

import pytest
import torch

from tinyrlhf.losses import (PREFERENCE_LOSSES, REFERENCE_FREE, cdpo_loss, dpo_loss, hinge_loss,
                             ipo_loss, kto_loss, kto_reference_point, orpo_loss, simpo_loss)

TOL = 1e-6


def t(*values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def close(actual, expected, tol=TOL):
    """Elementwise |actual − expected| ≤ tol·max(1, |expected|)."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = torch.as_tensor(actual, dtype=torch.float64)
    return bool(((actual - expected).abs() <= tol * expected.abs().clamp(min=1)).all())


def softplus(x):
    """−log σ(−x) = log(1 + eˣ), by hand."""
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# A concrete pair: h = (πc − πr) − (refc − refr) = (−1 − −2) − (−1.5 − −1.5) = 1.
PAIR = dict(policy_chosen_logps=t(-1.0), policy_rejected_logps=t(-2.0),
            ref_chosen_logps=t(-1.5), ref_rejected_logps=t(-1.5))


def same_as_reference(B=3):
    """policy == reference, so h = 0 on every row (values differ per row to show it does not matter)."""
    logps = t(-3.0, -7.5, -0.25)[:B]
    other = t(-2.0, -0.5, -11.0)[:B]
    return dict(policy_chosen_logps=logps, policy_rejected_logps=other,
                ref_chosen_logps=logps.clone(), ref_rejected_logps=other.clone())


# ------------------------------------------------------------------------------------------- DPO

def test_dpo_at_reference_is_log2():
    """h = 0 ⇒ −log σ(0) = log 2 on every row, for any β and any ε (both terms are log 2)."""
    for eps in (0.0, 0.3):
        losses, _ = dpo_loss(**same_as_reference(), beta=0.7, label_smoothing=eps)
        assert losses.shape == (3,)
        assert close(losses, [math.log(2)] * 3)


def test_dpo_hand_value():
    """h = 1, β = 0.5 ⇒ −log σ(0.5) = log(1 + e^{−0.5}) ≈ 0.474077.
    Rewards: β·(πc − refc) = 0.5·0.5 = 0.25, β·(πr − refr) = 0.5·(−0.5) = −0.25, margin 0.5."""
    losses, m = dpo_loss(**PAIR, beta=0.5)
    assert close(losses, [softplus(-0.5)])
    assert close(losses, [0.4740769841801067])
    assert close(m["rewards_chosen"], 0.25) and close(m["rewards_rejected"], -0.25)
    assert close(m["reward_margin"], 0.5) and close(m["accuracy"], 1.0)


def test_dpo_label_smoothing_formula():
    """ε = 0.2, β·h = 0.5 ⇒ 0.8·log(1 + e^{−0.5}) + 0.2·log(1 + e^{0.5})."""
    losses, _ = dpo_loss(**PAIR, beta=0.5, label_smoothing=0.2)
    assert close(losses, [0.8 * softplus(-0.5) + 0.2 * softplus(0.5)])
    assert not close(losses, [softplus(-0.5)])   # smoothing changed the value


def test_cdpo_is_dpo_with_default_smoothing_0_1():
    """cdpo default ε = 0.1: 0.9·log(1 + e^{−0.5}) + 0.1·log(1 + e^{0.5})."""
    losses, _ = cdpo_loss(**PAIR, beta=0.5)
    assert close(losses, [0.9 * softplus(-0.5) + 0.1 * softplus(0.5)])
    losses, _ = cdpo_loss(**PAIR, beta=0.5, label_smoothing=0.0)
    assert close(losses, [softplus(-0.5)])


def test_accuracy_counts_rows():
    """References 0, rows with h = 1, −1, 2, 0: 2 of 4 have chosen reward strictly > rejected (a tie
    is not a win). Margin = (1 − 1 + 2 + 0)/4 = 0.5."""
    zeros = t(0.0, 0.0, 0.0, 0.0)
    losses, m = dpo_loss(t(-1.0, -3.0, 0.0, -2.0), t(-2.0, -2.0, -2.0, -2.0), zeros, zeros, beta=1.0)
    assert close(m["accuracy"], 2 / 4)
    assert close(m["reward_margin"], 0.5)
    assert close(losses, [softplus(-1), softplus(1), softplus(-2), math.log(2)])


# ------------------------------------------------------------------------------------------- IPO

def test_ipo_at_reference():
    """h = 0 ⇒ (0 − 1/(2β))² = 1/(4β²); β = 0.1 ⇒ 25."""
    losses, _ = ipo_loss(**same_as_reference(), beta=0.1)
    assert close(losses, [25.0] * 3)


def test_ipo_hand_value():
    """h = 1, β = 0.1 ⇒ (1 − 5)² = 16; β = 0.5 ⇒ (1 − 1)² = 0 (margin exactly on target)."""
    assert close(ipo_loss(**PAIR, beta=0.1)[0], [16.0])
    assert close(ipo_loss(**PAIR, beta=0.5)[0], [0.0])


# ----------------------------------------------------------------------------------------- hinge

def test_hinge_at_reference_is_one():
    """h = 0 ⇒ max(0, 1 − 0) = 1."""
    losses, _ = hinge_loss(**same_as_reference(), beta=3.0)
    assert close(losses, [1.0] * 3)


def test_hinge_hand_value_and_clamp():
    """h = 1: β = 0.5 ⇒ 1 − 0.5 = 0.5; β = 2 ⇒ max(0, −1) = 0."""
    assert close(hinge_loss(**PAIR, beta=0.5)[0], [0.5])
    assert close(hinge_loss(**PAIR, beta=2.0)[0], [0.0])


# ----------------------------------------------------------------------------------------- SimPO

def test_simpo_hand_value_with_gamma():
    """c = −0.5, r = −1.5, β = 2, γ = 0.5 ⇒ −log σ(2·1 − 0.5) = log(1 + e^{−1.5}).
    Rewards are β·avg-logp: −1 and −3."""
    losses, m = simpo_loss(t(-0.5), t(-1.5), beta=2.0, gamma=0.5)
    assert close(losses, [softplus(-1.5)])
    assert close(m["rewards_chosen"], -1.0) and close(m["rewards_rejected"], -3.0)


def test_simpo_identical_is_gamma_shifted_log2():
    """c = r ⇒ −log σ(−γ) = log(1 + e^{γ}); γ = 0 gives log 2."""
    assert close(simpo_loss(t(-2.0, -9.0), t(-2.0, -9.0), beta=2.5, gamma=0.0)[0], [math.log(2)] * 2)
    assert close(simpo_loss(t(-2.0), t(-2.0), beta=2.5, gamma=1.0)[0], [softplus(1.0)])


# ------------------------------------------------------------------------------------------ ORPO

def test_orpo_hand_value():
    """c = log 0.5 ⇒ odds 1, log-odds 0; r = log 0.2 ⇒ odds 0.25, log-odds log 0.25.
    log-odds ratio = log 4 ⇒ −log σ(log 4) = log(1 + 1/4) = log 1.25. nll = 1, λ = 0.5 ⇒ 1 + 0.5·log 1.25."""
    losses, m = orpo_loss(t(math.log(0.5)), t(math.log(0.2)), t(1.0), lam=0.5)
    assert close(losses, [1 + 0.5 * math.log(1.25)])
    assert close(m["log_odds_ratio"], math.log(4))
    assert close(m["nll"], 1.0)


def test_orpo_log_odds_stable_near_zero_and_very_negative():
    """Rejected r = log 0.5 has log-odds 0, so the metric is log-odds(c) itself.
    c = −1e-9: 1 − e^{c} = 1e-9 − 5e-19 + …, so log-odds = c − log(1 − e^{c}) ≈ −1e-9 − (log 1e-9 − 5e-10)
             = −log(1e-9) − 5e-10 ≈ 20.7232658.
    c = −50: 1 − e^{−50} ≈ 1, so log-odds ≈ −50 and the loss is nll + λ·log(1 + e^{50}) ≈ nll + 50λ."""
    _, m = orpo_loss(t(-1e-9), t(math.log(0.5)), t(0.0), lam=1.0)
    assert close(m["log_odds_ratio"], -math.log(1e-9) - 5e-10)
    losses, m = orpo_loss(t(-50.0), t(math.log(0.5)), t(2.0), lam=0.1)
    assert close(m["log_odds_ratio"], -50.0)
    assert close(losses, [2.0 + 0.1 * 50.0])


def test_orpo_certain_completion_is_finite():
    """p = 0 (probability 1) would give log-odds +inf; the clamp keeps loss and gradient finite."""
    c, r = t(0.0, grad=True), t(0.0, grad=True)
    losses, m = orpo_loss(c, r, -c, lam=1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(m["log_odds_ratio"])
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    assert close(losses, [math.log(2)])      # equal log-odds ⇒ −log σ(0); nll = 0


# ------------------------------------------------------------------------------------------- KTO

def test_kto_hand_value_and_weights():
    """r = policy − ref = [0.5, −0.5], rows [desirable, undesirable], z₀ = 0.2, β = 1:
    desirable 1 − σ(0.5 − 0.2) = 1 − σ(0.3); undesirable 1 − σ(0.2 + 0.5) = 1 − σ(0.7).
    Weights w_D = 2, w_U = 3 scale each row by its own weight only."""
    args = (t(-1.0, -2.0), t(-1.5, -1.5), torch.tensor([True, False]), torch.tensor(0.2))
    losses, m = kto_loss(*args, beta=1.0)
    assert close(losses, [1 - sigmoid(0.3), 1 - sigmoid(0.7)])
    weighted, _ = kto_loss(*args, beta=1.0, desirable_weight=2.0, undesirable_weight=3.0)
    assert close(weighted, [2 * (1 - sigmoid(0.3)), 3 * (1 - sigmoid(0.7))])
    only_d, _ = kto_loss(*args, beta=1.0, desirable_weight=2.0)
    assert close(only_d, [2 * (1 - sigmoid(0.3)), 1 - sigmoid(0.7)])
    assert close(m["rewards_desirable"], 0.5) and close(m["rewards_undesirable"], -0.5)
    assert close(m["count_desirable"], 1) and close(m["count_undesirable"], 1)
    assert close(m["kl"], 0.2)


def test_kto_kl_shifts_the_reference_point():
    """When r = z₀ every row sits at σ(0): loss 0.5 for both labels, whatever z₀ is."""
    for kl in (0.0, 0.7, 3.0):
        r = t(kl, kl)
        losses, _ = kto_loss(r, t(0.0, 0.0), torch.tensor([True, False]), torch.tensor(kl), beta=2.0)
        assert close(losses, [0.5, 0.5])
    # Raising z₀ from 0 to 1 with r = 0, β = 1: desirable 1 − σ(−1), undesirable 1 − σ(1).
    losses, _ = kto_loss(t(0.0, 0.0), t(0.0, 0.0), torch.tensor([True, False]), torch.tensor(1.0), beta=1.0)
    assert close(losses, [1 - sigmoid(-1.0), 1 - sigmoid(1.0)])


def test_kto_only_desirable_only_undesirable_and_single_row():
    """Absent groups report reward 0 and count 0 (no 0/0 NaN). r = 1, β = 0.5, z₀ = 0."""
    zero = torch.tensor(0.0)
    losses, m = kto_loss(t(0.0, 0.0), t(-1.0, -1.0), torch.tensor([True, True]), zero, beta=0.5)
    assert close(losses, [1 - sigmoid(0.5)] * 2)
    assert close(m["rewards_desirable"], 0.5) and close(m["rewards_undesirable"], 0.0)
    assert close(m["count_desirable"], 2) and close(m["count_undesirable"], 0)
    losses, m = kto_loss(t(0.0, 0.0), t(-1.0, -1.0), torch.tensor([False, False]), zero, beta=0.5)
    assert close(losses, [1 - sigmoid(-0.5)] * 2)
    assert close(m["rewards_undesirable"], 0.5) and close(m["rewards_desirable"], 0.0)
    assert close(m["count_desirable"], 0) and close(m["count_undesirable"], 2)
    for label in (True, False):
        losses, m = kto_loss(t(0.0), t(-1.0), torch.tensor([label]), zero, beta=0.5)
        assert losses.shape == (1,)
        assert close(losses, [1 - sigmoid(0.5 if label else -0.5)])
        assert all(torch.isfinite(v) for v in m.values())


def test_kto_reference_point_clamps_and_is_detached():
    """mean(policy − ref): [1, −3] ⇒ −1 ⇒ clamped to 0; [1, 2] ⇒ 1.5."""
    policy = t(-1.0, -5.0, grad=True)
    z0 = kto_reference_point(policy, t(-2.0, -2.0))
    assert close(z0, 0.0)
    z0 = kto_reference_point(policy, t(-2.0, -7.0))
    assert close(z0, 1.5)
    assert z0.dim() == 0 and not z0.requires_grad and z0.grad_fn is None


# ------------------------------------------------------------------------------- gradient signs

def pairwise_inputs(name):
    """Leaf policy log-probs (B = 2) plus the remaining positional inputs and kwargs for `name`."""
    c, r = t(-4.0, -6.0, grad=True), t(-5.0, -3.0, grad=True)
    kwargs = {"dpo": dict(beta=0.5), "cdpo": dict(beta=0.5), "ipo": dict(beta=0.1),
              "hinge": dict(beta=0.5), "simpo": dict(beta=2.0, gamma=0.5), "orpo": dict(lam=0.5)}[name]
    if name == "orpo":
        rest = lambda c, r: (-c,)            # noqa: E731 - the SFT NLL of the chosen completion
    elif name in REFERENCE_FREE:
        rest = lambda c, r: ()               # noqa: E731
    else:
        rest = lambda c, r: (t(-4.5, -5.0), t(-4.0, -4.0))   # noqa: E731
    return c, r, rest, kwargs


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_sgd_step_lowers_loss_and_raises_chosen_over_rejected(name):
    """One SGD step on the leaf log-probs: the loss falls and (chosen − rejected) rises on every row.
    The reference log-probs are constants, so a rising chosen-minus-rejected log-prob gap is a rising
    log-ratio margin h."""
    fn = PREFERENCE_LOSSES[name]
    c, r, rest, kwargs = pairwise_inputs(name)
    losses, _ = fn(c, r, *rest(c, r), **kwargs)
    losses.sum().backward()
    with torch.no_grad():
        c2, r2 = c - 0.1 * c.grad, r - 0.1 * r.grad
        after, _ = fn(c2, r2, *rest(c2, r2), **kwargs)
    assert after.sum() < losses.sum()
    assert ((c2 - r2) > (c - r)).all()


def test_kto_sgd_step_raises_desirable_lowers_undesirable():
    """One SGD step on the leaf policy log-probs: desirable r goes up, undesirable r goes down."""
    policy, ref = t(-4.0, -6.0, -5.0, grad=True), t(-4.0, -6.5, -5.5)
    desirable, kl = torch.tensor([True, False, True]), torch.tensor(0.1)
    losses, _ = kto_loss(policy, ref, desirable, kl, beta=1.0)
    losses.sum().backward()
    with torch.no_grad():
        stepped = policy - 0.1 * policy.grad
        after, _ = kto_loss(stepped, ref, desirable, kl, beta=1.0)
    assert after.sum() < losses.sum()
    assert (stepped[desirable] > policy[desirable]).all()
    assert (stepped[~desirable] < policy[~desirable]).all()


# ------------------------------------------------------------------------------ table and metrics

def test_tables():
    assert PREFERENCE_LOSSES == {"dpo": dpo_loss, "ipo": ipo_loss, "cdpo": cdpo_loss,
                                 "hinge": hinge_loss, "simpo": simpo_loss, "orpo": orpo_loss}
    assert REFERENCE_FREE == {"simpo", "orpo"}


def all_metrics():
    """Every loss's metrics from inputs that require grad."""
    out = {}
    for name, fn in PREFERENCE_LOSSES.items():
        c, r, rest, kwargs = pairwise_inputs(name)
        out[name] = fn(c, r, *rest(c, r), **kwargs)[1]
    out["kto"] = kto_loss(t(-1.0, -2.0, grad=True), t(-1.5, -1.5), torch.tensor([True, False]),
                          torch.tensor(0.1, requires_grad=True), beta=1.0)[1]
    return out


def test_metrics_are_detached_scalars():
    for name, metrics in all_metrics().items():
        expected = {"kto": {"rewards_desirable", "rewards_undesirable", "count_desirable",
                            "count_undesirable", "kl"}}.get(
            name, {"rewards_chosen", "rewards_rejected", "reward_margin", "accuracy"})
        assert expected <= set(metrics), name
        for key, value in metrics.items():
            assert value.dim() == 0, (name, key)
            assert not value.requires_grad and value.grad_fn is None, (name, key)


# ---------------------------------------------------------------------------- numerics and dtype

@pytest.mark.parametrize("values", [(-1e4, -1e4, 0.0, 0.0), (-1e4, 0.0, 0.0, -1e4),
                                    (0.0, -1e4, -1e4, 0.0), (-3.0, -3.0, -3.0, -3.0)])
def test_extreme_and_identical_inputs_stay_finite(values):
    """log-probs of −1e4 (and identical chosen/rejected) give finite losses, metrics and gradients."""
    pc, pr, rc, rr = values
    for name, fn in PREFERENCE_LOSSES.items():
        c, r = t(pc, grad=True), t(pr, grad=True)
        if name == "orpo":
            rest = (-c,)
        elif name in REFERENCE_FREE:
            rest = ()
        else:
            rest = (t(rc), t(rr))
        kwargs = pairwise_inputs(name)[3]
        losses, metrics = fn(c, r, *rest, **kwargs)
        losses.sum().backward()
        assert torch.isfinite(losses).all(), name
        assert all(torch.isfinite(v) for v in metrics.values()), name
        assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all(), name
    policy = t(pc, pr, grad=True)
    losses, metrics = kto_loss(policy, t(rc, rr), torch.tensor([True, False]), torch.tensor(0.0), beta=1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(policy.grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_bfloat16_inputs_are_upcast():
    """Math runs in float32. Inputs −200, −2, −0.5, −1.5 are exact in bf16, but bf16 arithmetic is not:
    bf16 has spacing 1 in [128, 256), so −200 − (−0.5) = −199.5 would round to −200 there.
    In float32: chosen ratio −199.5, rejected ratio −0.5, h = −199.
      hinge, β = 0.01: 1 − 0.01·(−199) = 2.99 (bf16 math would give 3.0 or 2.995);
      DPO reward_chosen, β = 0.01: −1.995;
      SimPO, β = 1, γ = 0, c = −200, r = −0.5: −log σ(−199.5) = log(1 + e^{199.5}) ≈ 199.5;
      KTO, β = 1, z₀ = 0, desirable r = −199.5 ⇒ 1 − σ(−199.5), undesirable r = −0.5 ⇒ 1 − σ(0.5)."""
    bf = dict(policy_chosen_logps=t(-200.0, dtype=torch.bfloat16),
              policy_rejected_logps=t(-2.0, dtype=torch.bfloat16),
              ref_chosen_logps=t(-0.5, dtype=torch.bfloat16), ref_rejected_logps=t(-1.5, dtype=torch.bfloat16))
    losses, _ = hinge_loss(**bf, beta=0.01)
    assert losses.dtype == torch.float32 and close(losses, [2.99])
    losses, m = dpo_loss(**bf, beta=0.01)
    assert losses.dtype == torch.float32 and close(m["rewards_chosen"], -1.995)
    losses, _ = simpo_loss(bf["policy_chosen_logps"], bf["ref_chosen_logps"], beta=1.0, gamma=0.0)
    assert losses.dtype == torch.float32 and close(losses, [199.5])
    losses, _ = kto_loss(t(-200.0, -2.0, dtype=torch.bfloat16), t(-0.5, -1.5, dtype=torch.bfloat16),
                         torch.tensor([True, False]), torch.tensor(0.0), beta=1.0)
    assert losses.dtype == torch.float32
    assert close(losses, [1 - sigmoid(-199.5), 1 - sigmoid(0.5)])
