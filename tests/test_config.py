import pytest

from tinyrlhf.config import RewardConfig, SFTConfig, load_config, replace
from tinyrlhf.errors import ConfigError


def test_yaml_and_dotted_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("out_dir: runs/x\ntrain:\n  lr: 0.01\n  max_steps: 5\nlora:\n  target_modules: [c_attn]\n")
    cfg = load_config(SFTConfig, str(f), ["train.lr=3e-4", "model.preset=gpt2-mini", "train.betas=[0.8,0.9]"])
    assert cfg.out_dir == "runs/x"
    assert cfg.train.lr == 3e-4  # override wins over the file
    assert cfg.train.max_steps == 5
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.lora.target_modules == ("c_attn",)
    assert cfg.model.preset == "gpt2-mini"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, ["train.lrr=1"])
    msg = str(e.value)
    assert "train.lrr" in msg and "train.lr" in msg and "train.max_steps" in msg


def test_bad_value_names_key(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps.*integer"):
        load_config(SFTConfig, None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="train.schedule"):
        load_config(SFTConfig, None, ["train.schedule=exponential"])
    with pytest.raises(ConfigError, match="lora.enabled.*true or false"):
        load_config(RewardConfig, None, ["lora.enabled=3"])


def test_bad_yaml_file_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+"):
        load_config(SFTConfig, str(f))
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, str(tmp_path / "missing.yaml"))


def test_replace_is_a_validated_copy():
    cfg = load_config(SFTConfig)
    new = replace(cfg, **{"train.lr": 0.5})
    assert new.train.lr == 0.5 and cfg.train.lr != 0.5
    with pytest.raises(ConfigError):
        replace(cfg, **{"train.nope": 1})
