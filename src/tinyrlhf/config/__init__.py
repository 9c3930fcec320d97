"""Typed, frozen dataclass configs: YAML files plus dotted CLI overrides (`train.lr=3e-4`).

    load.py     reading YAML and overrides into a dataclass: type checks, ranges, one error naming the key
    base.py     the sections every run shares (model, lora, data, train, eval) and RunConfig
    offline.py  SFT, reward model, the DPO family, KTO
    online.py   PPO, RLOO/GRPO/REINFORCE++, online DPO, rejection sampling (rollout, KL, PPO hyper-parameters)

Every field has a docstring under it and every numeric field a checked range (`__post_init__`): an unknown key,
a value of the wrong type or out of range is one ConfigError naming the key and where it was set. Importers use
this package (`from tinyrlhf.config import PPOConfig, load_config`). May import: errors only.
"""
from .base import (DEVICE, MAX_SEED, ColumnsConfig, DataConfig, EvalConfig, LoRAConfig, ModelConfig, RunConfig,
                   TrainConfig)
from .load import (FieldError, check_range, coerce, config_to_dict, field_docs, load_config, parse_overrides,
                   read_yaml, render_yaml, replace)
from .offline import (LOSS_BETA, SIMPO_MAX_LR, KTOConfig, PreferenceConfig, RewardConfig, SFTConfig,
                      loss_warnings)
from .online import (GroupConfig, KLConfig, OnlineDPOConfig, PPOConfig, PPOHyper, RewardHTTPConfig, RolloutConfig,
                     RSConfig)

__all__ = [
    "DEVICE", "MAX_SEED", "ColumnsConfig", "DataConfig", "EvalConfig", "LoRAConfig", "ModelConfig", "RunConfig",
    "TrainConfig",
    "FieldError", "check_range", "coerce", "config_to_dict", "field_docs", "load_config", "parse_overrides",
    "read_yaml", "render_yaml", "replace", "LOSS_BETA", "SIMPO_MAX_LR", "KTOConfig", "PreferenceConfig",
    "RewardConfig", "SFTConfig", "loss_warnings", "GroupConfig", "KLConfig", "OnlineDPOConfig", "PPOConfig",
    "PPOHyper", "RewardHTTPConfig", "RolloutConfig", "RSConfig",
]
