"""Defaults by situation: the learning rate, the run's length, its prompt loss and how long it samples depend
on whether a run trains LoRA adapters or all weights, starts from a random-init preset or a pretrained model,
and learns a built-in task or your own data (no data.task). `load_config` applies them to every key that
neither the YAML file nor an override sets; a stage's dataclass defaults stay the tuned family_tree values
(a run with data.task gets exactly those: tests/test_config.py holds them equal to configs/family_tree/*.yaml).

Why each value. Measured here on two small own-data sets of the shape issue 23 describes, each with a
gpt2-tiny SFT model: A, 300 SFT rows and 400 hh-style pairs of short animal questions (answers ~6 tokens);
B, the guide's timing set (tests/test_guide_own_data.py's shape at full size: answers of 2-4 sentences,
~57 tokens at the 95th percentile, 40 % of the pairs with two turns). KL = `tinyrlhf eval --prompts`, KL to
the SFT model on one sample per prompt.
  run length on your own data: the tasks' step counts are about one pass over their large label pools, but
         many passes over a small file.
         sft from a preset: 20 epochs, not 3,000 steps (= 320 epochs of 300 rows). On A the held-out loss was
         lowest near 19 epochs (0.308) and rose to 0.447 by 320. From a pretrained model.path (a hub name
         or a model directory; a tinyrlhf run's final/ counts as the preset it came from): 3 epochs.
         dpo 3 epochs: on B, 150 steps (12 epochs of 400 pairs) reached KL 5.6 and a reward-model win rate
         of 0.63 against SFT; 3 epochs KL 2.3 and 0.70. kto 3 epochs: under LoRA it moved as far in 3 as in
         6 (KL 0.47 against 0.54, B). reward 2 epochs: held-out accuracy 1.0 at 1 and 2 (B); InstructGPT
         trained its reward model for one.
  learning rates, LoRA against full fine-tuning (A, 150 steps from the SFT model):
         kto LoRA 2e-4: at KTO's full-fine-tuning lr 2e-5, LoRA left the policy where it was (KL -0.002
         [-0.007, 0.004]), 2e-4 moved it (KL 0.38) as full fine-tuning at 2e-5 did (0.94).
         dpo LoRA keeps 2e-4: there it moved the policy (KL 2.9; full fine-tuning 1.1), at 1e-4 it did not
         (-0.02). reward LoRA keeps 3e-4 (its head trains in full either way).
         ppo, rloo, grpo, online-dpo: LoRA 10x the full lr (the KTO measurement; Schulman et al. 2025, "LoRA
         Without Regret", find LoRA's best lr about 10x full fine-tuning's). Not measured here.
         sft from a pretrained model.path: lr 5e-5 (transformers' run_clm default), LoRA 5e-4, and no loss
         on prompt tokens (a pretrained model reads already). Not measured here (no pretrained weights offline).
  sampling on your own data (eval.max_new_tokens, rollout.max_new_tokens): 0 = sized on the data's completions
         (1.25 x their 95th percentile in tokens, plus one). PPO with 24 new tokens on B never saw a response
         end: every score carried the missing-EOS penalty, and the KL ran away to 112 nats by step 60 (beta
         raised to 42 in vain); with 72 (from the data) the KL stayed at 0.3-1.0 around its target 0.5 and the
         reward-model score rose from -0.33 to 0.3.
"""
from __future__ import annotations

import os

# stage config class -> (full fine-tuning lr, LoRA lr); SFT from a pretrained model.path has its own row
LR = {"SFTConfig": (2e-3, 2e-3), "RewardConfig": (3e-4, 3e-4), "PreferenceConfig": (2e-4, 2e-4),
      "KTOConfig": (2e-5, 2e-4), "PPOConfig": (3e-5, 3e-4), "GroupConfig": (1e-4, 1e-3),
      "OnlineDPOConfig": (1e-4, 1e-3)}
SFT_PRETRAINED_LR = (5e-5, 5e-4)
SFT_EPOCHS = {"preset": 20.0, "pretrained": 3.0}  # SFT on your own data (no data.task)
OWN_EPOCHS = {"RewardConfig": 2.0, "PreferenceConfig": 3.0, "KTOConfig": 3.0}  # the others on your own data


def _get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def situation(cls, tree: dict) -> dict:
    """{dotted key: value} of the situational defaults for a `cls` config whose given keys are `tree`
    (a key the tree sets is never in the result)."""
    name = cls.__name__
    if name not in LR:
        return {}
    pretrained, lora = _pretrained(_get(tree, "model.path")), _get(tree, "lora.enabled") is True
    out: dict = {}
    lrs = SFT_PRETRAINED_LR if name == "SFTConfig" and pretrained else LR[name]
    out["train.lr"] = lrs[1] if lora else lrs[0]
    if not _get(tree, "data.task"):  # no gold evaluation: sample as long as your data's completions are
        out["eval.max_new_tokens"] = 0
        if name in ("PPOConfig", "GroupConfig", "OnlineDPOConfig"):
            out["rollout.max_new_tokens"] = 0
    if name == "SFTConfig" and pretrained:
        out["train.prompt_loss_weight"] = 0.0
    own_length = _get(tree, "train.max_steps") is None and _get(tree, "train.epochs") is None
    if not _get(tree, "data.task") and own_length and (name == "SFTConfig" or name in OWN_EPOCHS):
        epochs = SFT_EPOCHS["pretrained" if pretrained else "preset"] if name == "SFTConfig" else OWN_EPOCHS[name]
        out.update({"train.max_steps": 0, "train.epochs": epochs})
    return {k: v for k, v in out.items() if _get(tree, k) is None and _free(tree, k)}


def _pretrained(path) -> bool:
    """A model.path that is a pretrained model (a hub name, a model directory), not the final/ of a tinyrlhf
    run (whose directory holds config.yaml): continuing SFT on one of those keeps the preset's values."""
    if not isinstance(path, str) or not path:
        return False
    run_dir = os.path.dirname(os.path.abspath(path.rstrip("/" + os.sep)))
    return not os.path.isfile(os.path.join(run_dir, "config.yaml"))


def _free(tree: dict, dotted: str) -> bool:
    """True when every section on the way to `dotted` is a mapping or absent (`train=5` is build's error)."""
    node = tree
    for part in dotted.split(".")[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return True
        if not isinstance(node, dict):
            return False
    return True
