"""Online-RL pieces: GAE against a plain loop, KL estimators, clipped PPO losses (clip-higher included), RLOO,
GRPO, Dr. GRPO and REINFORCE++ advantages, and how each loss_type sums token losses, each by a hand computation."""
import math

import pytest
import torch

from tinyrlhf.losses import (POLICY_LOSS_WEIGHTS, dr_grpo_advantages, gae, grpo_advantages, kl_per_token, masked_mean,
                             masked_whiten, ppo_policy_loss, ppo_value_loss, reinforce_pp_advantages, rloo_advantages)


def gae_loop(rewards, values, lengths, gamma, lam):
    """GAE written as the textbook backward loop, one row at a time (the reference for the matrix form)."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        last = 0.0
        for t in reversed(range(lengths[b])):
            next_v = values[b, t + 1].item() if t + 1 < lengths[b] else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_gae_matches_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    lengths = [9, 1, 4, 7, 2]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64) * mask
    values = torch.randn(B, T, generator=g, dtype=torch.float64)  # garbage beyond the mask on purpose
    adv, ret = gae(rewards, values, mask.double(), gamma=gamma, lam=lam)
    expected = gae_loop(rewards, values, lengths, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-12)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-12)
    assert (adv[mask == 0] == 0).all()


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    """λ = γ = 1: A_t = Σ_{s≥t} r_s − V_t (Monte-Carlo return minus the baseline)."""
    rewards = torch.tensor([[0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[1.5, 1.0, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[2.0, 2.0, 2.0]]))


def test_kl_estimators_values():
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.25])
    k1 = kl_per_token(lp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([0.5, 0.0, -0.25]))
    # k3 = (ρ − 1) − log ρ with log ρ = ref − lp
    expected = [math.exp(x) - 1 - x for x in (-0.5, 0.0, 0.25)]
    assert torch.allclose(kl_per_token(lp, ref, "k3"), torch.tensor(expected))
    assert (kl_per_token(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k3"):
        kl_per_token(lp, ref, "k2")


def test_kl_estimators_unbiased_on_samples():
    """Both estimators average to the exact KL of two categoricals over many samples."""
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = (p * (p / q).log()).sum().item()
    idx = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    for est in ("k1", "k3"):
        assert abs(kl_per_token(p.log()[idx], q.log()[idx], est).mean().item() - exact) < 0.01


def test_ppo_policy_loss_clips():
    """ε = 0.2. Row: A = +1 with ρ = e^0.5 ≈ 1.65 → clipped at 1.2 → loss −1.2;
    A = −1 with ρ = e^0.5 → max(1.65, 1.2) = 1.65 (no clipping helps a bad action);
    A = +1 with ρ = 1 → −1; masked token ignored in metrics."""
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.5, 0.5, 0.0, 3.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    losses, m = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    assert torch.allclose(losses[0, :3], torch.tensor([-1.2, math.exp(0.5), -1.0]), atol=1e-6)
    assert math.isclose(m["clipfrac"].item(), 1 / 3, rel_tol=1e-6)
    assert math.isclose(m["approx_kl"].item(), (0.125 + 0.125 + 0) / 3, rel_tol=1e-6)


def test_ppo_policy_gradient_raises_logprob_of_good_action():
    lp = torch.zeros(1, 2, requires_grad=True)
    losses, _ = ppo_policy_loss(lp, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), clip=0.2)
    losses.sum().backward()
    assert lp.grad[0, 0] < 0 and lp.grad[0, 1] > 0  # descent raises the good, lowers the bad


def test_ppo_value_loss_clips():
    """old V = 0, ε = 0.2, return 1: V = 0.5 → clipped 0.2 → ½·max(0.25, 0.64) = 0.32;
    V = 0.1 (inside the clip) → ½·0.81 = 0.405; V = −0.5, R = −1 → clipped −0.2: ½·max(0.25, 0.64)."""
    values = torch.tensor([[0.5, 0.1, -0.5]])
    returns = torch.tensor([[1.0, 1.0, -1.0]])
    losses, m = ppo_value_loss(values, torch.zeros(1, 3), returns, torch.ones(1, 3), clip=0.2)
    assert torch.allclose(losses, torch.tensor([[0.32, 0.405, 0.32]]), atol=1e-6)
    assert math.isclose(m["value_clipfrac"].item(), 2 / 3, rel_tol=1e-6)


def test_rloo_leave_one_out():
    scores = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    adv = rloo_advantages(scores)
    assert torch.allclose(adv[0], torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5]))
    assert (adv[1] == 0).all()
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_grpo_group_normalised():
    scores = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    adv = grpo_advantages(scores, eps=0.0 + 1e-12)
    s = math.sqrt(2.0)  # unbiased std of (1, 3)
    assert torch.allclose(adv[0], torch.tensor([-1 / s, 1 / s]), atol=1e-6)
    assert (grpo_advantages(scores)[1] == 0).all()


def test_masked_whiten_and_mean():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 7.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == 4.0
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-6
    assert abs(masked_mean(w ** 2, mask).item() - 1) < 1e-4
    assert (w[mask == 0] == 0).all()
    kept = masked_whiten(x, mask, shift_mean=False)
    assert abs(masked_mean(kept, mask).item() - 4.0) < 1e-5


def test_ppo_policy_loss_clip_higher():
    """DAPO's ε_low = 0.2, ε_high = 0.28. A = +1, ρ = e^0.5 ≈ 1.649 → clipped at 1.28 → −1.28 (−1.2 symmetric);
    A = −1, ρ = e^−0.5 ≈ 0.607 → max(0.607, 0.8) = 0.8 (the lower bound is still 1 − 0.2);
    A = +1, ρ = e^0.2 ≈ 1.221 → inside [0.8, 1.28]: −1.221 (symmetric would clip it to −1.2)."""
    new = torch.tensor([[0.5, -0.5, 0.2]])
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    losses, m = ppo_policy_loss(new, torch.zeros(1, 3), adv, torch.ones(1, 3), clip=0.2, clip_high=0.28)
    assert torch.allclose(losses, torch.tensor([[-1.28, 0.8, -math.exp(0.2)]]), atol=1e-6)
    assert math.isclose(m["clipfrac"].item(), 2 / 3, rel_tol=1e-6)
    symmetric, _ = ppo_policy_loss(new, torch.zeros(1, 3), adv, torch.ones(1, 3), clip=0.2)
    assert torch.allclose(symmetric, torch.tensor([[-1.2, 0.8, -1.2]]), atol=1e-6)


def test_dr_grpo_advantage_has_no_std_division():
    """Liu et al. 2025: s − group mean. Scores (1, 3) → (−1, +1) where GRPO gives (∓1/√2); 10x the scores
    give 10x the advantages (GRPO's would not change); equal scores give 0."""
    scores = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 6.0]])
    assert torch.allclose(dr_grpo_advantages(scores), torch.tensor([[-1.0, 1.0], [0.0, 0.0], [-3.0, 3.0]]))
    assert torch.allclose(dr_grpo_advantages(10 * scores), 10 * dr_grpo_advantages(scores))
    assert torch.allclose(grpo_advantages(10 * scores), grpo_advantages(scores), atol=1e-4)


def test_reinforce_pp_advantage_by_hand():
    """Hu et al. 2025, eqs. 8-10, β = 0.5. Row 0: s = 1, KL (0.1, 0.2, 0.3), KL to go (0.6, 0.5, 0.3),
    A = 1 − 0.5·(0.6, 0.5, 0.3) = (0.70, 0.75, 0.85). Row 1: s = 0, two real tokens with KL (0.4, 0) (the 9.9
    is padding), to go (0.4, 0), A = (−0.2, 0). Over the 5 real tokens: mean 2.1/5 = 0.42, deviations
    (0.28, 0.33, 0.43, −0.62, −0.42), variance 0.933/5 = 0.1866; A_norm = deviation / √0.1866."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 9.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), kl, mask, beta=0.5)
    std = math.sqrt(0.1866)
    expected = torch.tensor([[0.28, 0.33, 0.43], [-0.62, -0.42, 0.0]]) / std
    assert torch.allclose(adv, expected * mask, atol=1e-5)
    assert adv[1, 2] == 0
    # one global baseline: a constant added to every score changes nothing
    assert torch.allclose(reinforce_pp_advantages(torch.tensor([6.0, 5.0]), kl, mask, beta=0.5), adv, atol=1e-5)
    # β = 0: A = (1, 1, 1 | 0, 0), mean 0.6, variance (3·0.4² + 2·0.6²)/5 = 0.24
    flat = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), kl, mask, beta=0.0)
    assert torch.allclose(flat, torch.tensor([[0.4, 0.4, 0.4], [-0.6, -0.6, 0.0]]) / math.sqrt(0.24), atol=1e-5)


def test_loss_type_weights_by_hand():
    """Token losses l = (1, 2, 3 | 4) on responses of 3 and 1 real tokens (100 = padding), max_tokens = 4.
    token_mean and dapo: (1+2+3+4)/4 = 2.5. grpo: ((1+2+3)/3 + 4/1)/2 = 3.0 (the 1-token response's token
    weighs 1/2, each of the 3-token response's 1/6). dr_grpo: (1+2+3+4)/(2·4) = 1.25."""
    losses = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    expected = {"token_mean": 2.5, "dapo": 2.5, "grpo": 3.0, "dr_grpo": 1.25}
    assert set(POLICY_LOSS_WEIGHTS) == set(expected)
    for name, value in expected.items():
        w = POLICY_LOSS_WEIGHTS[name](mask, 4)
        assert math.isclose((losses * w).sum().item(), value, rel_tol=1e-6), name
        assert (w[mask == 0] == 0).all()
        # weights of the whole minibatch: its rows split into micro-batches add up to the same loss
        parts = (losses[:1] * w[:1]).sum() + (losses[1:] * w[1:]).sum()
        assert math.isclose(parts.item(), value, rel_tol=1e-6), name
    assert torch.allclose(POLICY_LOSS_WEIGHTS["grpo"](mask, 4)[1, 0], torch.tensor(0.5))
