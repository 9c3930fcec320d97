"""Packed (padding-free) batches against padded ones: first-fit decreasing packs as derived by hand; masks and
per-example values travel unchanged; positions restart per sequence; the SFT loss, the reward model's scores
and Bradley-Terry loss and all their gradients equal the padded path's to 1e-5 (fp32) under every attention
implementation; attention never crosses from one sequence into another; an SFT run with packing on logs the
same losses as with it off."""
import copy
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyrlhf import attention
from tinyrlhf.config import SFTConfig, TrainConfig, load_config
from tinyrlhf.errors import ConfigError
from tinyrlhf.data import packing
from tinyrlhf.data.collate import pad
from tinyrlhf.models import RewardModel, trunk_and_head, trunk_hidden
from tinyrlhf.train.engine import batch_tokens, packing_on
from tinyrlhf.train.reward import reward_loss
from tinyrlhf.train.sft import run_sft, sft_loss

V = 64
PAD = 0
# (prompt, completion) token ids of varied lengths; one empty prompt (its first token has no predictor)
LENGTHS = [(3, 4), (9, 11), (1, 2), (5, 1), (0, 6), (12, 7), (2, 2), (4, 9)]


def examples(seed: int = 0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(1, V, (n,), generator=g).tolist()  # noqa: E731
    return [(rand(p), rand(c)) for p, c in lengths]


def tiny_lm(impl: str = attention.NAME, seed: int = 0):
    torch.manual_seed(seed)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=64,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    attention.set_attention(lm, impl)
    return lm


def grads(module):
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


def test_first_fit_decreasing_by_hand():
    """Longest first into the first row with room: 6 | 5 | 4 | 3 (no room left for it) | 2 joins the 4."""
    assert packing.first_fit([5, 3, 4, 2, 6], 6) == [[4], [0], [2, 3], [1]]
    assert packing.first_fit([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]  # ties in batch order
    assert packing.first_fit([7, 1], 4) == [[0], [1]]  # too long for the room: a row of its own


def test_pack_moves_every_per_token_tensor_and_restarts_positions():
    batch = pad(examples(), PAD)
    # a mask the packer cannot have made itself: holes, as several assistant turns would have
    batch["completion_mask"] = (torch.rand(batch["input_ids"].shape, generator=torch.Generator().manual_seed(3))
                                < 0.5).long() * batch["attention_mask"]
    batch["margin"] = torch.arange(8.0)
    packed = packing.pack(batch, PAD)
    seq = packed["seq_ids"]
    assert seq.shape[0] < 8 and seq.shape[1] <= batch["input_ids"].shape[1]  # fewer rows, never wider
    assert torch.equal(packed["margin"], batch["margin"])  # per example: unchanged
    assert "attention_mask" not in packed and batch_tokens(packed) == batch_tokens(batch) == sum(map(sum, LENGTHS))
    pos = packing.positions(seq)
    for i, (p, c) in enumerate(LENGTHS):
        where = seq == i
        n = p + c
        assert int(where.sum()) == n and where.nonzero()[:, 0].unique().numel() == 1  # one row, contiguous
        assert torch.equal(packed["input_ids"][where], batch["input_ids"][i, :n])
        assert torch.equal(packed["completion_mask"][where], batch["completion_mask"][i, :n])
        assert pos[where].tolist() == list(range(n))  # positions restart at 0 for every sequence
    assert (packed["input_ids"][seq < 0] == PAD).all() and (packed["completion_mask"][seq < 0] == 0).all()


def test_pack_to_a_multiple_rounds_the_rows_capacity_and_width():
    """multiple=16 (bench_packing's "packed, width x16"): rows hold up to the longest sequence rounded up to
    16 tokens and the batch is that wide; the same tokens, each sequence whole in one row."""
    batch = pad(examples(), PAD)
    longest = max(p + c for p, c in LENGTHS)
    packed = packing.pack(batch, PAD, multiple=16)
    seq = packed["seq_ids"]
    assert seq.shape[1] % 16 == 0 and seq.shape[1] == longest + (-longest % 16)
    assert batch_tokens(packed) == sum(map(sum, LENGTHS))
    for i, (p, c) in enumerate(LENGTHS):
        where = seq == i
        assert where.nonzero()[:, 0].unique().numel() == 1
        assert torch.equal(packed["input_ids"][where], batch["input_ids"][i, :p + c])


def test_pack_refuses_left_padding():
    batch = pad(examples(), PAD)
    batch["attention_mask"] = batch["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="right-padded"):
        packing.pack(batch, PAD)


def with_turn_masks(exs):
    """The examples as a conversation's encoding gives them: a third list, the loss mask over the prompt
    (earlier assistant turns, data/conversation.py), here every other prompt token."""
    return [(p, c, [i % 2 for i in range(len(p))]) for p, c in exs]


@pytest.mark.parametrize("impl", attention.CHOICES)
@pytest.mark.parametrize("prompt_weight,turns", [(0.0, False), (1.0, False), (0.1, False), (0.0, True),
                                                 (0.1, True)])
def test_sft_loss_and_gradients_equal_padded(impl, prompt_weight, turns):
    padded = pad(with_turn_masks(examples()) if turns else examples(), PAD)
    packed = packing.pack(padded, PAD)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # it did pack
    out = []
    for batch in (padded, packed):
        model = tiny_lm(impl)
        loss, metrics = sft_loss(model, batch, prompt_weight)
        loss.backward()
        out.append((loss.detach(), metrics, grads(model)))
    (l0, m0, g0), (l1, m1, g1) = out
    assert abs(l0.item() - l1.item()) <= 1e-5
    assert torch.allclose(g0, g1, rtol=0, atol=1e-5)
    assert m0.keys() == m1.keys()
    for k in m0:
        assert abs(m0[k].item() - m1[k].item()) <= 1e-5


@pytest.mark.parametrize("impl", attention.CHOICES)
@pytest.mark.parametrize("pool,logp_feature", [("last", False), ("mean", False), ("last", True)])
def test_reward_scores_and_bradley_terry_loss_equal_padded(impl, pool, logp_feature):
    exs = examples(1)
    chosen, rejected = exs[:4], exs[4:]
    padded = pad(chosen + rejected, PAD)
    padded["margin"] = torch.tensor([0.5, 0.0, 1.0, 2.0])
    packed = packing.pack(padded, PAD)
    assert packed["input_ids"].shape[0] < 8
    out = []
    for batch in (padded, packed):
        rm = RewardModel(tiny_lm(impl), pool=pool, logp_feature=logp_feature)
        scores = rm.raw(batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"],
                        seq_ids=batch.get("seq_ids"))
        loss, _ = reward_loss(rm, batch, has_margin=True, center_coef=0.01)
        loss.backward()
        out.append((scores.detach(), loss.detach(), grads(rm)))
    (s0, l0, g0), (s1, l1, g1) = out
    assert torch.allclose(s0, s1, rtol=0, atol=1e-5)
    assert abs(l0.item() - l1.item()) <= 1e-5
    assert torch.allclose(g0, g1, rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", attention.CHOICES)
@pytest.mark.parametrize("training", [True, False])
def test_attention_never_crosses_a_sequence_boundary(impl, training):
    """Two sequences share a row; changing A's tokens leaves B's hidden states as they were (and changes A's).
    The same row under a plain causal mask does let A reach B, so the check can fail."""
    exs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14])]  # 5 tokens each: one row of 10
    batch = packing.pack(pad(exs, PAD), PAD, capacity=10)
    assert batch["seq_ids"].tolist() == [[0] * 5 + [1] * 5]
    changed = copy.deepcopy(batch)
    changed["input_ids"][0, :5] = torch.tensor([20, 21, 22, 23, 24])
    trunk, _ = trunk_and_head(tiny_lm(impl).train(training))
    with torch.no_grad():
        h, h_changed = (trunk_hidden(trunk, b["input_ids"], seq_ids=b["seq_ids"])[0] for b in (batch, changed))
        assert not torch.allclose(h[:5], h_changed[:5], atol=1e-3)  # A itself did change
        assert torch.allclose(h[5:], h_changed[5:], rtol=0, atol=1e-6)
        # B alone, as its own sequence: the same hidden states
        alone = trunk_hidden(trunk, torch.tensor([[10, 11, 12, 13, 14]]), torch.ones(1, 5, dtype=torch.long))[0]
        assert torch.allclose(h[5:], alone, rtol=0, atol=1e-5)
        # control: one causal row over both (no block mask) lets A's change reach B
        pos = packing.positions(batch["seq_ids"])
        crossing = [trunk(input_ids=b["input_ids"], attention_mask=torch.ones(1, 10, dtype=torch.long),
                          position_ids=pos).last_hidden_state[0, 5:] for b in (batch, changed)]
        assert not torch.allclose(*crossing, atol=1e-3)


def test_packing_setting_and_what_auto_means():
    cpu = torch.device("cpu")
    assert packing_on(TrainConfig(packing=True), cpu) and not packing_on(TrainConfig(packing=False), cpu)
    assert packing_on(TrainConfig(), cpu) is False  # auto: not measured faster on CPU (docs/guides/benchmarks.md)
    assert packing_on(TrainConfig(), torch.device("cuda")) is False
    cfg = load_config(SFTConfig, None, ["train.packing=true"])
    assert cfg.train.packing is True
    with pytest.raises(ConfigError, match="train.packing"):
        load_config(SFTConfig, None, ["train.packing=yes-please"])


def test_sft_run_with_packing_logs_the_same_losses(tmp_path, monkeypatch):
    """Six fp32 steps on data of widely varied lengths with packing on and off: the same examples per step
    (the plan is unchanged), so each step's loss and gradient norm agree to 1e-5 relative, and so does the
    held-out loss at the end. The length-bucketed batches hold sequences of about one length, which rows
    no longer than the longest cannot merge; so that the run's batches really are packed, its `pack` here
    fills rows of up to 128 tokens (several sequences each; the capacity rule has its own test above)."""
    words = ["red", "blue", "green", "small", "round", "soft", "loud", "old"]
    rows = [{"prompt": f"Describe item {i}:",
             "completion": " " + " ".join(words[(i + j) % 8] for j in range(1 + (7 * i) % 29))} for i in range(56)]
    data, held_out = tmp_path / "varied.jsonl", tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows[40:]))
    shapes = []
    real_pack = packing.pack
    monkeypatch.setattr(packing, "pack", lambda b, pad_id=0: shapes.append(
        (b["input_ids"].shape[0], (p := real_pack(b, pad_id, capacity=128))["input_ids"].shape[0])) or p)
    logged = {}
    for packs in (False, True):
        out = tmp_path / f"sft-{packs}"
        run_sft(load_config(SFTConfig, None, [
            f"out_dir={out}", "model.tokenizer_vocab=300", f"data.train_file={data}",
            f"data.eval_file={held_out}", "train.max_steps=6",
            "train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.precision=fp32",
            "train.prompt_loss_weight=1.0", "train.progress=false", f"train.packing={str(packs).lower()}"]))
        logged[packs] = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(shapes) == 6 and all(after <= before / 2 for before, after in shapes)  # 2+ sequences a row
    off, on = logged[False], logged[True]
    assert [r["step"] for r in off] == [r["step"] for r in on] == list(range(1, 7))
    for a, b in zip(off, on):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert on[-1]["eval/loss"] == pytest.approx(off[-1]["eval/loss"], rel=1e-5)
