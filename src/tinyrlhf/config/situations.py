"""Defaults by situation: the learning rate, SFT's length and its prompt loss depend on whether a run trains
LoRA adapters or all weights, starts from a random-init preset or a pretrained model, and learns a built-in
task or your own data. `load_config` applies them to every key that neither the YAML file nor an override
sets; a stage's dataclass defaults stay the tuned family_tree values (a run with data.task gets exactly
those; tests/test_config.py holds them equal to configs/family_tree/*.yaml).

Why each value (measured here on a toy set of your-own-data shape: 300 SFT rows and 400 hh-style pairs of
short animal questions, a gpt2-tiny SFT model of 360 steps; KL = `tinyrlhf eval --prompts` to the SFT model,
one sample per prompt, 45 prompts):
  sft    own data from a preset: 20 epochs, not 3,000 steps (= 320 epochs of 300 rows): held-out loss was
         lowest near 19 epochs (0.308) and rose to 0.447 by 320. From a pretrained model.path: 3 epochs, lr
         5e-5 (LoRA 5e-4) and no prompt loss (transformers' run_clm default lr; LoRA's optimal lr is about 10x
         full fine-tuning's: Schulman et al. 2025, "LoRA Without Regret"). Not measured here (no pretrained
         weights offline).
  kto    LoRA 2e-4: at KTO's full-fine-tuning lr 2e-5, LoRA left the policy where it was (KL -0.002 [-0.007,
         0.004], after 150 steps), 2e-4 moved it (KL 0.38) as full fine-tuning at 2e-5 did (0.94).
  dpo    LoRA keeps 2e-4: there it moved the policy (KL 2.9; full fine-tuning 1.1), at 1e-4 it did not (-0.02).
  ppo, rloo, grpo, online-dpo: LoRA 10x the full lr (the KTO measurement, and "LoRA Without Regret").
  reward LoRA keeps 3e-4 (its head trains in full either way).
"""
from __future__ import annotations

# stage config class -> (full fine-tuning lr, LoRA lr); SFT from a pretrained model.path has its own row
LR = {"SFTConfig": (2e-3, 2e-3), "RewardConfig": (3e-4, 3e-4), "PreferenceConfig": (2e-4, 2e-4),
      "KTOConfig": (2e-5, 2e-4), "PPOConfig": (3e-5, 3e-4), "GroupConfig": (1e-4, 1e-3),
      "OnlineDPOConfig": (1e-4, 1e-3)}
SFT_PRETRAINED_LR = (5e-5, 5e-4)
SFT_EPOCHS = {"preset": 20.0, "pretrained": 3.0}  # SFT on your own data (no data.task)


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
    pretrained, lora = bool(_get(tree, "model.path")), _get(tree, "lora.enabled") is True
    out: dict = {}
    lrs = SFT_PRETRAINED_LR if name == "SFTConfig" and pretrained else LR[name]
    out["train.lr"] = lrs[1] if lora else lrs[0]
    if name == "SFTConfig":
        if pretrained:
            out["train.prompt_loss_weight"] = 0.0
        steps, epochs = _get(tree, "train.max_steps"), _get(tree, "train.epochs")
        if not _get(tree, "data.task") and steps is None and epochs is None:
            out.update({"train.max_steps": 0, "train.epochs": SFT_EPOCHS["pretrained" if pretrained else "preset"]})
    return {k: v for k, v in out.items() if _get(tree, k) is None}
