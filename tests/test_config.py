import re

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


# ---------------------------------------------------------------- ranges, defaults, provenance, --print-config

import dataclasses  # noqa: E402
import os  # noqa: E402
import typing  # noqa: E402

import yaml  # noqa: E402

from tinyrlhf import config as C  # noqa: E402
from tinyrlhf.cli import main  # noqa: E402

STAGES = {"sft": (C.SFTConfig, []), "reward": (C.RewardConfig, []), "dpo": (C.PreferenceConfig, []),
          "ipo": (C.PreferenceConfig, ["loss=ipo"]), "kto": (C.KTOConfig, []), "ppo": (C.PPOConfig, []),
          "rloo": (C.GroupConfig, ["algo=rloo"]), "grpo": (C.GroupConfig, ["algo=grpo"]),
          "reinforce_pp": (C.GroupConfig, ["algo=reinforce-pp"]), "online_dpo": (C.OnlineDPOConfig, []),
          "rs": (C.RSConfig, [])}
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "family_tree")


def numeric_keys(cls, prefix=""):
    """Every int / float (or optional float) key of a config class, dotted."""
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if dataclasses.is_dataclass(tp):
            yield from numeric_keys(tp, f"{prefix}{f.name}.")
        elif tp in (int, float) or args in ([int], [float]):
            yield f"{prefix}{f.name}", (int if int in (tp, *args) else float)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_numeric_key_has_a_checked_range(stage):
    """Each int/float key of every stage rejects a huge negative value with one line naming the override
    and the key: a new numeric key without a range fails here."""
    cls, extra = STAGES[stage]
    keys = list(numeric_keys(cls))
    assert len(keys) >= 25
    for key, tp in keys:
        item = f"{key}={-10**9 if tp is int else -1e9}"
        with pytest.raises(ConfigError) as e:
            load_config(cls, None, extra + [item])
        assert str(e.value).startswith(f"override '{item}': config key '{key}': must be"), str(e.value)


@pytest.mark.parametrize("override", [
    "train.lr=inf", "train.lr=.nan", "model.dropout=1", "lora.dropout=1.0", "train.betas=[0.9,1.0]",
    "seed=4294967296", "data.seed=-1", "train.device=cuda:x", "train.device=gpu", "eval.temperature=0",
    "model.tokenizer_vocab=256", "lora.target_modules=[]", "out_dir= ", "model.preset=gpt2-huge",
    "model.attention=flash"])
def test_out_of_range_upper_bounds_and_choices(override):
    with pytest.raises(ConfigError, match=f"override '{re.escape(override)}'"):
        load_config(SFTConfig, None, [override])


def test_boundary_values_are_accepted():
    cfg = load_config(SFTConfig, None, ["train.max_steps=0", "train.threads=0", "eval.n_prompts=0",
                                        "train.device=cuda:1", "train.max_grad_norm=0", "data.max_length=2",
                                        "lora.r=1", "model.dropout=0.99"])
    assert cfg.train.max_steps == 0 and cfg.train.device == "cuda:1" and cfg.data.max_length == 2
    ppo = load_config(C.PPOConfig, None, ["rollout.top_p=1", "ppo.gamma=1", "ppo.lam=0", "kl.coef=0"])
    assert ppo.rollout.top_p == 1.0 and ppo.ppo.lam == 0.0
    with pytest.raises(ConfigError, match="online methods"):  # 0 = epochs exists only offline
        load_config(C.PPOConfig, None, ["train.max_steps=0"])


def test_every_field_has_a_doc():
    for cls, _ in STAGES.values():
        stack = [cls]
        while stack:
            c = stack.pop()
            docs = C.field_docs(c)
            for f in dataclasses.fields(c):
                assert docs.get(f.name, "").strip(), f"{c.__name__}.{f.name} has no docstring"
                if dataclasses.is_dataclass(typing.get_type_hints(c)[f.name]):
                    stack.append(typing.get_type_hints(c)[f.name])


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_defaults_are_the_tuned_family_tree_configs(stage):
    """A stage run on a task without --config trains as the README's measured runs did: every key equals
    configs/family_tree/STAGE.yaml except where the runs live and what they read (your own data gets the
    situational defaults of config/situations.py instead)."""
    cls, extra = STAGES[stage]
    default = flat(C.config_to_dict(load_config(cls, None, extra + ["data.task=family_tree"]
                                                + ([] if stage == "sft" else ["model.path=runs/sft/final"]))))
    tuned = flat(C.config_to_dict(load_config(cls, os.path.join(CONFIGS, f"{stage}.yaml"))))
    where = {"out_dir", "model.path", "data.task", "data.dir", "reward", "normalize_on"}
    differ = {k for k in default if default[k] != tuned[k]} - where
    # the configs save only at the end; the defaults keep a checkpoint every 100 steps
    assert differ <= {"train.save_every"}, {k: (default[k], tuned[k]) for k in differ}
    assert default["train.lr"] != 1e-3


def test_stage_defaults_survive_a_partial_section(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_steps: 5\n")
    cfg = load_config(SFTConfig, str(f), ["train.batch_size=4"])
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr, cfg.train.prompt_loss_weight) == (5, 4, 2e-3, 1.0)
    assert load_config(C.KTOConfig, str(f)).train.lr == 2e-5


def test_each_loss_gets_its_own_beta_and_warnings_name_inherited_values():
    assert {loss: load_config(C.PreferenceConfig, None, [f"loss={loss}"]).beta
            for loss in ("dpo", "cdpo", "ipo", "hinge", "simpo", "orpo")} == \
        {"dpo": 0.5, "cdpo": 0.5, "ipo": 0.1, "hinge": 0.5, "simpo": 2.0, "orpo": None}
    for loss in ("dpo", "cdpo", "ipo", "hinge", "orpo"):  # the built-in defaults never warn...
        assert C.loss_warnings(load_config(C.PreferenceConfig, None, [f"loss={loss}"])) == []
    # ...except SimPO at the stage's (DPO's) learning rate, which collapsed it on family_tree
    [lr] = C.loss_warnings(load_config(C.PreferenceConfig, None, ["loss=simpo"]))
    assert "train.lr=0.0002" in lr and "train.lr<=5e-6" in lr
    dpo_yaml = os.path.join(CONFIGS, "dpo.yaml")
    warn = lambda loss, *o: C.loss_warnings(load_config(C.PreferenceConfig, dpo_yaml, [f"loss={loss}", *o]))  # noqa
    assert warn("dpo") == warn("cdpo") == warn("hinge") == []
    beta, lr = warn("simpo")
    assert "beta=0.5 (dpo's value)" in beta and "2.0-2.5" in beta and "train.lr=0.0002" in lr
    assert warn("simpo", "beta=2.5", "train.lr=5e-6") == []
    assert warn("simpo", "beta=2.5", "train.lr=1e-5") == []
    assert len(warn("simpo", "beta=2.5", "train.lr=2e-5")) == 1
    assert len(warn("simpo", "beta=2.5", "train.lr=5e-6", "gamma=5")) == 1
    [ipo] = warn("ipo")
    assert "beta=0.5 (dpo's value)" in ipo and "0.1" in ipo
    assert warn("ipo", "beta=0.2") == []  # a value of its own, not another loss's
    [orpo] = warn("orpo")
    assert "ignores beta=0.5" in orpo and "orpo_lambda" in orpo
    assert len(warn("orpo", "beta=", "orpo_lambda=3")) == 1
    assert C.loss_warnings(load_config(C.KTOConfig)) == []


def test_cli_prints_the_loss_warning(capsys):
    assert main(["dpo", "--config", os.path.join(CONFIGS, "dpo.yaml"), "loss=simpo", "--print-config"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: loss=simpo with beta=0.5") and err.count("\n") == 2
    assert err.splitlines()[1].startswith("warning: loss=simpo at train.lr=0.0002")


def test_group_kl_placement_follows_the_command(capsys):
    assert load_config(C.GroupConfig, None, ["algo=rloo"]).kl_in == "reward"
    assert load_config(C.GroupConfig, None, ["algo=grpo"]).kl_in == "loss"
    assert load_config(C.GroupConfig, None, ["algo=grpo", "kl_in=reward"]).kl_in == "reward"
    assert main(["grpo", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["algo"] == "grpo" and printed["kl_in"] == "loss"
    assert main(["rloo", "algo=grpo", "--print-config"]) == 2
    assert load_config(C.GroupConfig, None, ["algo=reinforce-pp"]).kl_in == "reward"
    assert main(["reinforce-pp", "algo=rloo", "--print-config"]) == 2


def test_group_loss_type_and_clip_higher():
    """loss_type=dapo brings DAPO's clip-higher (0.28) unless clip_high is given; the others keep the symmetric
    clip (empty); k=1 is only REINFORCE++'s (rloo and grpo need a group)."""
    assert load_config(C.GroupConfig, None, ["algo=grpo"]).loss_type == "token_mean"
    assert load_config(C.GroupConfig, None, ["algo=grpo", "loss_type=dapo"]).clip_high == 0.28
    assert load_config(C.GroupConfig, None, ["algo=grpo", "loss_type=dapo", "clip_high=0.3"]).clip_high == 0.3
    assert load_config(C.GroupConfig, None, ["algo=grpo", "loss_type=dr_grpo"]).clip_high is None
    assert load_config(C.GroupConfig, None, ["algo=reinforce-pp", "k=1"]).k == 1
    with pytest.raises(ConfigError, match="'loss_type': 'seq' is not one of"):
        load_config(C.GroupConfig, None, ["loss_type=seq"])
    with pytest.raises(ConfigError, match="'clip_high': must be > 0"):
        load_config(C.GroupConfig, None, ["clip_high=0"])


def test_duplicate_yaml_key_names_file_and_both_lines(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("seed: 1\ntrain:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key 'train\.lr' \(first at line 3\)"):
        load_config(SFTConfig, str(f))
    f.write_text("train:\n  lr: 0.1\nseed: 1\ntrain:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: duplicate key 'train'"):
        load_config(SFTConfig, str(f))


def test_errors_name_the_override_or_the_file_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 0\ntrain:\n  max_steps: 3\n  warmup_steps: -2\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, str(f), ["train.lrr=1"])
    assert str(e.value).startswith("override 'train.lrr=1': unknown config key 'train.lrr' (did you mean 'train.lr'?)")
    assert "c.yaml" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^.*c\.yaml:4: config key 'train\.warmup_steps': must be >= 0, got -2$"):
        load_config(SFTConfig, str(f))
    # the override fixes the file's bad value: no error at all
    assert load_config(SFTConfig, str(f), ["train.warmup_steps=2"]).train.warmup_steps == 2


def test_string_keys_take_the_override_text_as_typed():
    cfg = load_config(C.PPOConfig, None, ["out_dir=runs/a: b", "rollout.stop_token=yes", "data.format=1e3"])
    assert (cfg.out_dir, cfg.rollout.stop_token, cfg.data.format) == ("runs/a: b", "yes", "1e3")


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "kto", "ppo", "rloo", "grpo", "reinforce-pp", "online-dpo",
                                   "rs"])
def test_print_config_is_the_resolved_config_with_docs(stage, tmp_path, capsys):
    """--print-config prints YAML that loads back to the same config, a comment above every key, and runs
    nothing (the out_dir is not created)."""
    out_dir = tmp_path / "never"
    assert main([stage, "--print-config", f"out_dir={out_dir}", "train.lr=3e-4", "seed=7"]) == 0
    text = capsys.readouterr().out
    assert not out_dir.exists()
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    cls = {"sft": C.SFTConfig, "reward": C.RewardConfig, "dpo": C.PreferenceConfig, "kto": C.KTOConfig,
           "ppo": C.PPOConfig, "rloo": C.GroupConfig, "grpo": C.GroupConfig, "reinforce-pp": C.GroupConfig,
           "online-dpo": C.OnlineDPOConfig, "rs": C.RSConfig}[stage]
    extra = [f"algo={stage}"] if stage in ("rloo", "grpo", "reinforce-pp") else []
    assert load_config(cls, str(saved)) == load_config(cls, None, extra + [f"out_dir={out_dir}", "train.lr=3e-4",
                                                                          "seed=7"])
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[a-z_0-9]+:", line)]
    assert len(keys) >= 40
    assert all(lines[i - 1].lstrip().startswith("# ") for i in keys)


def test_literal_choices_match_the_code_that_uses_them():
    from tinyrlhf.attention import CHOICES
    from tinyrlhf.models import PRESETS
    hints = typing.get_type_hints(C.ModelConfig)
    assert list(typing.get_args(hints["preset"])) == list(PRESETS)
    assert list(typing.get_args(hints["attention"])) == list(CHOICES)


# ---------------------------------------------------------------- every task's config directory

def test_every_task_has_every_method_config_and_each_loads():
    """configs/TASK/ holds one YAML per stage that compare and loop read, for every built-in task, and each loads
    with its stage's class and names its own task: a task added without configs, or a bad key, fails here."""
    from tinyrlhf.study.loop_spec import LoopConfig
    from tinyrlhf.study.spec import METHODS
    from tinyrlhf.tasks import task_names
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    stages = {"sft": (C.SFTConfig, []), "reward": (C.RewardConfig, []), "loop": (LoopConfig, []),
              **{file: (cls, extra) for file, cls, _, extra, _ in METHODS.values()}}
    for task in task_names():
        files = sorted(f[:-5] for f in os.listdir(os.path.join(root, task)) if f.endswith(".yaml"))
        # data.yaml (optional): the task and data settings of compare's data stage, checked by write_task_data
        assert [f for f in files if f != "data"] == sorted(stages), task
        for name, (cls, extra) in stages.items():
            cfg = load_config(cls, os.path.join(root, task, f"{name}.yaml"), extra)
            assert name == "loop" or cfg.data.task == task, (task, name)
        if "data" in files:
            from tinyrlhf.tasks import task_config_keys
            from tinyrlhf.tasks.generate import TaskDataConfig
            with open(os.path.join(root, task, "data.yaml")) as f:
                keys = set(yaml.safe_load(f))
            assert keys <= set(task_config_keys(task)) | {f.name for f in dataclasses.fields(TaskDataConfig)}
