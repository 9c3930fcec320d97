"""Our half of benchmarks/bench_ppo.py: one tinyrlhf `run_ppo` in this (child) process, with its rollout
phases timed. The timing and memory hook (`RolloutClock`) is installed by the caller before anything is
built, exactly as for TRL's side (`ppo_trl_child.py`)."""
from __future__ import annotations

from child_process import timed  # benchmarks/ is on sys.path in the child


def _time_our_phases(phases):
    """Wrap the rollout helpers the PPO loop calls by module-level name: generate (in online), the reward
    function (built by online.reward_source), policy_forward under no_grad (old log-probs + values) and
    reference_token_logps (in ppo). The rest of a step is the PPO update."""
    import torch

    from tinyrlhf.train import online, ppo

    online.generate = timed(phases, online.generate, lambda *a: "generate", before=phases.first_rollout)
    inner_source = online.reward_source

    def reward_source(*args, **kwargs):
        fn, rm = inner_source(*args, **kwargs)
        return timed(phases, fn, lambda *a: "reward"), rm

    online.reward_source = reward_source
    ppo.policy_forward = timed(phases, ppo.policy_forward,
                               lambda *a: "update forward" if torch.is_grad_enabled() else "old logprobs+values")
    ppo.reference_token_logps = timed(phases, ppo.reference_token_logps, lambda *a: "reference")


def run_ours(spec: dict, phases):
    from tinyrlhf.config import PPOConfig, load_config
    from tinyrlhf.train import ppo

    _time_our_phases(phases)
    b = spec["batch"]
    overrides = [f"model.path={spec['policy_dir']}", f"reward={spec['ours_reward_dir']}",
                 f"data.dir={spec['data_dir']}",
                 f"data.max_length={spec['prompt_tokens'] + spec['response_tokens'] + 8}",
                 f"out_dir={spec['out_dir']}", "seed=0",
                 f"train.max_steps={spec['warmup'] + spec['steps']}", f"train.batch_size={b}", "train.grad_accum=1",
                 "train.lr=3e-6", "train.schedule=linear", "train.warmup_steps=0",
                 f"train.precision={spec['precision']}", "train.device=cpu", "train.progress=false",
                 "train.eval_every=0", "train.save_every=0", "train.log_every=1000", "train.resume=false",
                 f"train.threads={spec['threads']}",
                 f"rollout.prompts_per_step={b}", f"rollout.max_new_tokens={spec['response_tokens']}",
                 f"rollout.max_prompt_tokens={spec['prompt_tokens']}", "rollout.temperature=1.0",
                 "rollout.missing_eos_penalty=0", "kl.coef=0.05", "kl.adaptive=false", "kl.estimator=k1",
                 f"ppo.epochs={spec['epochs']}", f"ppo.minibatch_size={b}", "ppo.early_stop_kl=0",
                 "ppo.clip=0.2", "ppo.value_clip=0.2", "ppo.vf_coef=0.1", "ppo.gamma=1.0", "ppo.lam=0.95",
                 "ppo.whiten_rewards=false", "ppo.whiten_advantages=true", f"ppo.value_model={spec['value']}",
                 f"lora.enabled={str(spec['lora']).lower()}", "lora.r=16", "lora.alpha=32",
                 f"model.gradient_checkpointing={str(spec['gradient_checkpointing']).lower()}"]
    ppo.run_ppo(load_config(PPOConfig, None, overrides))
