"""The TRL half of benchmarks/bench_ppo.py: one trl.experimental.ppo.PPOTrainer run in this (child) process.

Imported only by the child that runs TRL, so the parent and our own side never import trl. The timing
and memory hook (`RolloutClock`) is installed by the caller before anything is built, exactly as for ours.
Models are set up as TRL's own example (examples/scripts/ppo/ppo.py) does: policy and reference from
the policy directory (no reference with LoRA: adapters disabled), reward model and value model both
AutoModelForSequenceClassification(num_labels=1) from the reward-model directory.
"""
from __future__ import annotations

import json
import os

from child_process import timed  # benchmarks/ is on sys.path in the child

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def _time_phases(module, phases, reward_model):
    """Wrap the trainer module's helpers so the caller can split a step into phases: generate
    (batch_generation), reference (forward under no_grad: only the reference pass runs so), update
    forward (forward with grad: the policy+value wrapper in the PPO epochs), value and reward
    (get_reward on the critic / on the reward model)."""
    import torch

    module.batch_generation = timed(phases, module.batch_generation, lambda *a: "generate",
                                    before=phases.first_rollout)
    module.forward = timed(phases, module.forward,
                           lambda *a: "update forward" if torch.is_grad_enabled() else "reference")
    module.get_reward = timed(phases, module.get_reward,
                              lambda model, *a: "reward" if model is reward_model else "value")


def run_trl(spec: dict, phases):
    """Build TRL's PPOTrainer on the shared model directories and prompts, then train until the clock
    (installed by the caller) ends the process after the last timed rollout batch."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    from tinyrlhf.models import load_tokenizer

    tokenizer = load_tokenizer(spec["policy_dir"])
    tokenizer.padding_side = "left"  # as TRL's example: prompts are left-padded for generation
    prompts = read_prompts(spec["prompts_file"])
    rows = [{"input_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    assert all(len(r["input_ids"]) == spec["prompt_tokens"] for r in rows), "prompt lengths differ from the setup"

    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    ref_policy = None if spec["lora"] else AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(spec["trl_reward_dir"], num_labels=1,
                                                                      dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(spec["trl_reward_dir"], num_labels=1,
                                                                     dtype=torch.float32)
    peft_config = None
    if spec["lora"]:
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                                 target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    n_batches = spec["warmup"] + spec["steps"]
    args = PPOConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=spec["epochs"], local_rollout_forward_batch_size=spec["batch"],
        total_episodes=10 * n_batches * spec["batch"],  # the clock stops the run long before this
        response_length=spec["response_tokens"], stop_token=None, temperature=1.0, missing_eos_penalty=None,
        kl_coef=0.05, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
        whiten_rewards=False, learning_rate=3e-6, num_sample_generations=0,
        bf16=spec["precision"] == "bf16", use_cpu=True, report_to=[], logging_strategy="no",
        eval_strategy="no", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"], seed=0,
    )
    _time_phases(module, phases, reward_model)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=Dataset.from_list(rows),
                         value_model=value_model, peft_config=peft_config)
    trainer.train()
