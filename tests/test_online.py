"""Online RL end to end on a tiny model: PPO (shared and separate value, LoRA), RLOO, GRPO (and its loss types),
REINFORCE++ and online DPO run and log; same seed same numbers; resume is exact; reward sources fail clearly;
memory stays flat."""
import json
import os
import sys
import textwrap

import pytest
import torch

from conftest import tiny_sft
from tinyrlhf.cli import main
from tinyrlhf.config import GroupConfig, OnlineDPOConfig, PPOConfig, load_config
from tinyrlhf.errors import ConfigError
from tinyrlhf.rollout import Rollout
from tinyrlhf.train.group import run_group, token_advantages
from tinyrlhf.train.online import truncate_at_stop
from tinyrlhf.train.online_dpo import run_online_dpo
from tinyrlhf.train.ppo import run_ppo
from tinyrlhf.train.rl import KLController, RewardSourceError, prompts_for_step, reward_source

SMALL = dict(n_train_prompts=80, n_eval_prompts=8, n_pairs=64, n_rankings=4, n_binary=16, n_eval_pairs=8)
COMMON = ["train.batch_size=8", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
          "train.save_every=0", "train.progress=false", "eval.n_prompts=8", "eval.max_new_tokens=6",
          "data.task=family_tree", "train.lr=1e-3"]
ROLL = ["rollout.prompts_per_step=8", "rollout.max_new_tokens=8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    data, model = tiny_sft(root, steps=4, sizes=SMALL, extra=("train.warmup_steps=0", "train.lr=1e-3"))
    # a module with reward callables, importable as 'toy_rewards:...'
    (root / "toy_rewards.py").write_text(textwrap.dedent("""
        def length(prompts, completions):
            return [float(len(c)) / 10 for c in completions]
        def wrong_shape(prompts, completions):
            return [0.0]
        def nan(prompts, completions):
            return [float("nan")] * len(completions)
        def boom(prompts, completions):
            raise RuntimeError("service down")
        def text(prompts, completions):
            return "good"
    """))
    sys.path.insert(0, str(root))
    yield root, data, model
    sys.path.remove(str(root))


def cfg(cls, root, data, model, name, *extra):
    return load_config(cls, None, [f"out_dir={root / name}", f"model.path={model}", f"data.dir={data}",
                                   *COMMON, *ROLL, *extra])


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_ppo_runs_and_logs_every_detail(base):
    root, data, model = base
    summary = run_ppo(cfg(PPOConfig, root, data, model, "ppo", "reward=gold", "train.max_steps=3",
                          "ppo.minibatch_size=4", "ppo.epochs=2", "ppo.early_stop_kl=0"))
    assert summary["finished"] and summary["steps"] == 3 and summary["episodes"] == 24
    assert os.path.isfile(root / "ppo" / "final" / "config.json")
    log = rows(root / "ppo")
    assert [r["step"] for r in log] == [1, 2, 3]
    for key in ("objective/scores", "objective/gold", "kl/seq", "kl/coef", "loss/policy", "loss/value",
                "policy/clipfrac", "policy/approx_kl", "val/clipfrac", "response/length", "rollout/logprob_gap",
                "ppo/minibatches", "episodes_per_s", "mem/rss_mib"):
        assert key in log[0], key
    # the score is the gold reward here, so the two columns must agree exactly
    assert all(abs(r["objective/scores"] - r["objective/gold"]) < 1e-5 for r in log)
    # sampling and the trainer's recompute agree on the log-probs of the sampled tokens
    assert all(r["rollout/logprob_gap"] < 0.1 for r in log)
    assert log[0]["ppo/minibatches"] == 4  # 2 epochs x (8 episodes / 4), no early stop configured
    assert "gold/mean" in summary and "kl/ref" in summary


def test_ppo_same_seed_same_numbers_and_exact_resume(base):
    root, data, model = base
    args = ("reward=gold", "train.max_steps=4", "ppo.minibatch_size=4", "ppo.epochs=1")
    run_ppo(cfg(PPOConfig, root, data, model, "ppo_a", *args))
    run_ppo(cfg(PPOConfig, root, data, model, "ppo_b", *args))
    keys = ("objective/scores", "loss/policy", "loss/value", "kl/seq", "kl/coef")
    a = [[r[k] for k in keys] for r in rows(root / "ppo_a")]
    assert a == [[r[k] for k in keys] for r in rows(root / "ppo_b")]
    first = run_ppo(cfg(PPOConfig, root, data, model, "ppo_r", *args, "train.stop_after=2"))
    assert not first["finished"] and first["steps"] == 2
    run_ppo(cfg(PPOConfig, root, data, model, "ppo_r", *args))
    assert [[r[k] for k in keys] for r in rows(root / "ppo_r")] == a
    run_ppo(cfg(PPOConfig, root, data, model, "ppo_s1", *args, "seed=1"))
    assert [[r[k] for k in keys] for r in rows(root / "ppo_s1")] != a


def test_adaptive_kl_controller_moves_beta_towards_target():
    up = KLController(0.1, True, target=1.0, horizon=100)
    up.update(5.0, 10)  # error clipped at +0.2 -> beta * (1 + 0.2 * 10 / 100)
    assert up.value == pytest.approx(0.1 * 1.02)
    down = KLController(0.1, True, target=1.0, horizon=100)
    down.update(0.5, 10)  # below the target before ever reaching it: beta is not lowered (the start)
    assert down.value == 0.1 and not down.reached
    down.update(1.0, 10)  # reached (error 0: unchanged) ...
    down.update(0.5, 10)  # ... from then on, error -0.5 clipped to -0.2
    assert down.reached and down.value == pytest.approx(0.1 * 0.98)
    fixed = KLController(0.1, False, target=1.0, horizon=100)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1


def test_prompts_for_step_is_a_pure_function_of_step():
    prompts = [f"p{i}" for i in range(10)]
    first_epoch = prompts_for_step(prompts, 1, 4, 0) + prompts_for_step(prompts, 2, 4, 0) \
        + prompts_for_step(prompts, 3, 4, 0)[:2]
    assert sorted(first_epoch) == sorted(prompts)  # an epoch covers every prompt once
    assert prompts_for_step(prompts, 3, 4, 0) == prompts_for_step(prompts, 3, 4, 0)
    assert prompts_for_step(prompts, 1, 4, 0) != prompts_for_step(prompts, 1, 4, 1)


def test_truncate_at_stop_token_ends_the_row():
    ro = Rollout(prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
                 response_ids=torch.tensor([[5, 7, 9, 3], [5, 5, 5, 5]]),
                 response_mask=torch.ones(2, 4, dtype=torch.long),
                 logprobs=torch.full((2, 4), -1.0), finished=torch.tensor([False, False]))
    truncate_at_stop(ro, stop_id=7, pad_id=0)
    assert ro.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert ro.response_ids.tolist() == [[5, 7, 0, 0], [5, 5, 5, 5]]
    assert ro.logprobs[0].tolist() == [-1.0, -1.0, 0.0, 0.0]
    assert ro.finished.tolist() == [True, False]


@pytest.mark.parametrize("spec,message", [
    ("toy_rewards:wrong_shape", "returned shape (1,) for 3 completions"),
    ("toy_rewards:nan", "non-finite"),
    ("toy_rewards:boom", "failed: RuntimeError: service down"),
    ("toy_rewards:text", "not numbers"),
])
def test_bad_reward_sources_fail_clearly(base, spec, message):
    fn, _ = reward_source(spec, None, torch.device("cpu"), "fp32")
    with pytest.raises(RewardSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fn(["a", "b", "c"], ["x", "y", "z"])


def test_reward_source_specs_are_checked(base, tmp_path):
    root, _, model = base
    assert reward_source("toy_rewards:length", None, torch.device("cpu"), "fp32")[0](["p"], ["abcd"]).tolist() \
        == [pytest.approx(0.4)]
    with pytest.raises(Exception, match="cannot import"):
        reward_source("no_such_module_xyz:f", None, torch.device("cpu"), "fp32")
    with pytest.raises(Exception, match="not 'gold', not a reward run directory"):
        reward_source(str(tmp_path), None, torch.device("cpu"), "fp32")
    with pytest.raises(Exception, match="needs data.task"):
        reward_source("gold", None, torch.device("cpu"), "fp32")


def test_cli_reports_a_failing_reward_and_keeps_no_partial_final(base, capsys):
    root, data, model = base
    code = main(["ppo", f"out_dir={root / 'ppo_bad'}", f"model.path={model}", f"data.dir={data}", *COMMON, *ROLL,
                 "reward=toy_rewards:wrong_shape", "train.max_steps=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: reward 'toy_rewards:wrong_shape' returned shape (1,)")
    assert "Traceback" not in err
    assert not os.path.exists(root / "ppo_bad" / "final")


def test_ppo_lora_uses_no_reference_copy_and_separate_critic(base):
    root, data, model = base
    summary = run_ppo(cfg(PPOConfig, root, data, model, "ppo_lora", "reward=toy_rewards:length",
                          "train.max_steps=2", "lora.enabled=true", "lora.r=4", "ppo.value_model=separate",
                          "ppo.minibatch_size=8", "ppo.epochs=1"))
    assert summary["finished"]
    assert os.path.isfile(root / "ppo_lora" / "final" / "adapter_config.json")
    log = rows(root / "ppo_lora")
    assert all(abs(r["kl/seq"]) < 5 for r in log) and log[0]["loss/value"] > 0


@pytest.mark.parametrize("algo,extra", [("rloo", []), ("grpo", ["kl_in=loss", "epochs=2"])])
def test_group_methods_run(base, algo, extra):
    root, data, model = base
    summary = run_group(cfg(GroupConfig, root, data, model, algo, f"algo={algo}", "reward=gold", "k=2",
                            "train.max_steps=2", "minibatch_size=8", *extra))
    assert summary["finished"] and summary["episodes"] == 2 * 8 * 2
    log = rows(root / algo)
    assert "adv/zero_groups" in log[0] and 0 <= log[0]["adv/zero_groups"] <= 1
    assert ("loss/kl" in log[0]) == (algo == "grpo")


@pytest.mark.parametrize("algo,extra", [("grpo", ["loss_type=grpo"]), ("grpo", ["loss_type=dr_grpo"]),
                                        ("grpo", ["loss_type=dapo", "epochs=2"]), ("reinforce-pp", ["epochs=2"]),
                                        ("reinforce-pp", ["k=1", "kl.coef=0.5"])])
def test_group_variants_run(base, algo, extra):
    root, data, model = base
    name = f"{algo}-" + "-".join(e.replace("=", "") for e in extra)
    args = ["k=2", *extra] if not any(e.startswith("k=") for e in extra) else extra
    summary = run_group(cfg(GroupConfig, root, data, model, name, f"algo={algo}", "reward=gold",
                            "train.max_steps=2", "minibatch_size=8", *args))
    k = 1 if "k=1" in extra else 2
    assert summary["finished"] and summary["episodes"] == 2 * 8 * k
    log = rows(root / name)
    assert all(r["grad_norm"] >= 0 and abs(r["loss/policy"]) < 10 for r in log)
    assert ("adv/zero_groups" in log[0]) == (k >= 2)
    clip_high = load_config(GroupConfig, os.path.join(root, name, "config.yaml")).clip_high
    assert clip_high == (0.28 if "loss_type=dapo" in extra else None)


def test_token_advantages_of_each_algorithm():
    """Scores (1, 3 | 5, 5), k = 2, no KL. RLOO: s − the other (−2, 2, 0, 0). GRPO: (∓1/√2, 0, 0) (std of (1, 3)
    is √2). Dr. GRPO: s − group mean (−1, 1, 0, 0). REINFORCE++ w/ baseline: the same, over the batch's 8 tokens
    mean 0, variance 4/8, so (∓√2, 0, 0). Plain REINFORCE++ (k = 1): batch mean 3.5, deviations
    (−2.5, −0.5, 1.5, 1.5), variance 11/4. Each row's advantage fills its 2 real tokens."""
    scores, mask, kl = torch.tensor([1.0, 3.0, 5.0, 5.0]), torch.ones(4, 2), torch.zeros(4, 2)

    def adv(*o):
        return token_advantages(load_config(GroupConfig, None, list(o)), scores, kl, mask, 0.05)[:, 0].tolist()
    assert adv("algo=rloo", "k=2") == pytest.approx([-2, 2, 0, 0])
    assert adv("algo=grpo", "k=2") == pytest.approx([-2 ** -0.5, 2 ** -0.5, 0, 0], abs=1e-4)
    assert adv("algo=grpo", "k=2", "loss_type=dapo") == adv("algo=grpo", "k=2")
    assert adv("algo=grpo", "k=2", "loss_type=dr_grpo") == pytest.approx([-1, 1, 0, 0])
    assert adv("algo=reinforce-pp", "k=2") == pytest.approx([-2 ** 0.5, 2 ** 0.5, 0, 0], abs=1e-5)
    assert adv("algo=reinforce-pp", "k=1") == pytest.approx([x / 2.75 ** 0.5 for x in (-2.5, -0.5, 1.5, 1.5)], abs=1e-5)


def test_loss_types_are_exact_across_micro_batches(base):
    """The loss of a minibatch is Σ w·loss with w over the whole minibatch, so micro-batches of 2 prompts
    give the same run as one micro-batch of 4 (fp32), for GRPO's per-response mean and Dr. GRPO's sum."""
    root, data, model = base
    for loss_type in ("grpo", "dr_grpo"):
        logs = []
        for micro in (8, 4):
            name = f"micro-{loss_type}-{micro}"
            run_group(cfg(GroupConfig, root, data, model, name, "algo=grpo", f"loss_type={loss_type}", "k=2",
                          "reward=gold", "train.precision=fp32", "train.max_steps=2", "minibatch_size=8",
                          f"train.batch_size={micro}"))
            logs.append([r[k] for r in rows(root / name) for k in ("loss/policy", "loss/kl", "grad_norm")])
        assert logs[0] == pytest.approx(logs[1], abs=1e-5), loss_type


def test_group_needs_two_samples(base):
    root, data, model = base
    with pytest.raises(ConfigError, match="config key 'k': must be >= 2, got 1"):
        run_group(cfg(GroupConfig, root, data, model, "rloo1", "reward=gold", "k=1", "train.max_steps=1"))


def test_online_dpo_runs_and_drops_ties(base):
    root, data, model = base
    summary = run_online_dpo(cfg(OnlineDPOConfig, root, data, model, "odpo", "reward=toy_rewards:length",
                                 "train.max_steps=2"))
    assert summary["finished"] and summary["episodes"] == 2 * 16
    log = rows(root / "odpo")
    assert all(r["pairs/kept"] + r["pairs/tied"] == 8 for r in log)


def test_memory_stays_flat_over_many_steps(base):
    """60 PPO steps: resident memory after step 60 is within 25 MiB of what it was after step 15."""
    root, data, model = base
    run_ppo(cfg(PPOConfig, root, data, model, "ppo_mem", "reward=gold", "train.max_steps=60",
                "ppo.minibatch_size=8", "ppo.epochs=1", "rollout.prompts_per_step=4", "rollout.max_new_tokens=6"))
    rss = {r["step"]: r["mem/rss_mib"] for r in rows(root / "ppo_mem")}
    assert rss[60] - rss[15] < 25, rss


def test_dropout_is_off_in_every_model(base):
    """RLHF detail: dropout off in policy, reference, reward and value models, even if the config set it."""
    from tinyrlhf.train.online import open_online
    from tinyrlhf.train.rl import build_value
    root, data, model = base
    S = open_online(cfg(PPOConfig, root, data, model, "ppo_dropout", "reward=gold", "train.max_steps=1",
                        "model.dropout=0.3"))
    critic = build_value(S.policy, "separate", "", None, torch.device("cpu"))
    modules = [S.policy, S.reference, critic]
    ps = [m.p for mod in modules for m in mod.modules() if isinstance(m, torch.nn.Dropout)]
    assert ps and all(p == 0.0 for p in ps)


@pytest.mark.parametrize("method", ["grpo", "online-dpo"])
def test_prefix_sharing_gives_the_same_run(base, method):
    """train.share_prompt (each prompt once for its k samples) changes the layout, not the numbers: fp32,
    same seed, the same logged losses and KL with it on and off."""
    root, data, model = base
    logs = {}
    for share in ("true", "false"):
        name = f"share-{method}-{share}"
        extra = ["train.precision=fp32", f"train.share_prompt={share}", "train.max_steps=2"]
        if method == "grpo":
            run_group(cfg(GroupConfig, root, data, model, name, "algo=grpo", "reward=gold", "k=4",
                          "kl_in=loss", "epochs=2", "minibatch_size=16", *extra))
            keys = ("loss/policy", "loss/kl", "kl/seq", "grad_norm")
        else:
            run_online_dpo(cfg(OnlineDPOConfig, root, data, model, name, "reward=toy_rewards:length", *extra))
            keys = ("loss/dpo", "kl/seq", "grad_norm")
        logs[share] = [r[k] for r in rows(root / name) for k in keys]
    assert len(logs["true"]) == 2 * len(keys)
    assert logs["true"] == pytest.approx(logs["false"], abs=1e-5)
