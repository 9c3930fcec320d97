"""Unmerged LoRA outputs load anywhere (peft, transformers, every tinyrlhf stage) and `tinyrlhf export`
writes a directory that plain transformers loads, with a model card."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyrlhf.cli import main
from tinyrlhf.config import LoRAConfig, ModelConfig, PreferenceConfig, RewardConfig, load_config
from tinyrlhf.errors import ConfigError
from tinyrlhf.loading import adapter_base, load_causal_lm
from tinyrlhf.models import add_lora, build_model, load_reward_model, save_hf
from tinyrlhf.train.preference import run_preference
from tinyrlhf.train.reward import run_reward

from conftest import tiny_sft

COMMON = ["train.max_steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.lr=1e-2", "train.progress=false",
          "train.save_every=0", "train.threads=1", "eval.n_prompts=0", "data.task=family_tree", "data.dir=data",
          "ref_cache_dir=cache"]
TEXT = "- Cal(m): Ann(f), Bob(m)\nQ: parents of Cal?\nA: Ann, Bob."


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """root/{data, sft, runs/dpo}: a DPO run with unmerged LoRA adapters, started as a user would from the
    project root with a RELATIVE model.path (which peft alone cannot resolve from elsewhere)."""
    root = tmp_path_factory.mktemp("proj")
    tiny_sft(root)
    here = os.getcwd()
    os.chdir(root)
    try:
        run_preference(load_config(PreferenceConfig, None, ["out_dir=runs/dpo", "model.path=sft/final",
                                                            "lora.enabled=true", "lora.r=4", *COMMON]))
    finally:
        os.chdir(here)
    return root


def logits(model, tokenizer, text=TEXT):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


def tok(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def test_unmerged_final_names_its_base_absolutely_and_loads_from_another_directory(project, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM
    final = str(project / "runs" / "dpo" / "final")
    monkeypatch.chdir(tmp_path)  # nothing resolves relative to the project any more
    with open(os.path.join(final, "adapter_config.json")) as f:
        assert json.load(f)["base_model_name_or_path"] == str(project / "sft" / "final")
    assert not os.path.exists(os.path.join(final, "config.json"))  # would send transformers looking for weights
    t = tok(final)
    peft_logits = logits(AutoPeftModelForCausalLM.from_pretrained(final), t)
    merged = logits(load_causal_lm(final), t)  # tinyrlhf's loader: adapters merged in memory
    plain = logits(AutoModelForCausalLM.from_pretrained(final), t)  # transformers' peft integration
    base = logits(load_causal_lm(str(project / "sft" / "final")), t)
    assert torch.allclose(peft_logits, merged, atol=1e-5, rtol=0)
    assert torch.allclose(peft_logits, plain, atol=1e-5, rtol=0)
    assert (peft_logits - base).abs().max() > 1e-2  # the adapter was trained: it is really applied


def test_a_moved_project_still_loads_through_the_recorded_relative_path(project, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(project, moved)
    config_file = moved / "runs" / "dpo" / "final" / "adapter_config.json"
    cfg = json.loads(config_file.read_text())
    cfg["base_model_name_or_path"] = "/nonexistent/old/place/sft/final"  # where the project used to be
    config_file.write_text(json.dumps(cfg))
    final = str(moved / "runs" / "dpo" / "final")
    assert adapter_base(final) == str(moved / "sft" / "final")
    t = tok(final)
    assert torch.allclose(logits(load_causal_lm(final), t),
                          logits(load_causal_lm(str(project / "runs" / "dpo" / "final")), t), atol=1e-6, rtol=0)


def test_a_relative_base_of_an_older_run_is_found_from_the_run_directory_up(project, tmp_path, monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(project, old)
    final = old / "runs" / "dpo" / "final"
    cfg = json.loads((final / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "sft/final"  # relative to the directory the run was started in
    (final / "adapter_config.json").write_text(json.dumps(cfg))
    os.remove(final / "base_model.json")
    monkeypatch.chdir(tmp_path)
    assert adapter_base(str(final)) == str(old / "sft" / "final")


def test_an_adapter_is_never_applied_to_changed_base_weights(project, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    weights = copy / "sft" / "final" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("c_attn.weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    final = str(copy / "runs" / "dpo" / "final")
    cfg = json.loads(open(final + "/adapter_config.json").read())
    cfg["base_model_name_or_path"] = str(copy / "sft" / "final")  # the copy's own, changed, base
    open(final + "/adapter_config.json", "w").write(json.dumps(cfg))
    with pytest.raises(ConfigError, match="holds other weights than the ones it was trained on"):
        load_causal_lm(final)
    shutil.rmtree(copy / "sft")
    assert main(["eval", final, "--task", "family_tree", "n_prompts=2"]) == 2
    err = capsys.readouterr().err
    assert "its base model" in err and "is not found" in err and "Traceback" not in err


def test_eval_of_an_unmerged_lora_run_from_another_directory(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = str(project / "runs" / "dpo")
    out = str(tmp_path / "eval.json")
    assert main(["eval", run, "--task", "family_tree", "--out", out, "n_prompts=4", "max_new_tokens=6"]) == 0
    result = json.load(open(out))
    # the run's relative model.path (sft/final) is found from the run directory up: the default reference
    assert result["kl_ref"]["reference"] == str(project / "sft" / "final")
    assert result["win_rate"]["judge"] == "gold" and len(result["per_prompt"]["gold"]) == 4
    assert result["kl_ref"]["mean"] != 0.0  # a trained adapter: the policy is not its reference


def test_stages_start_from_an_unmerged_lora_final(project, tmp_path, monkeypatch):
    """model.path = an unmerged LoRA final/: full fine-tuning trains every (merged) weight, and LoRA on it
    saves the merged base in final/base so that peft loads the new adapter from anywhere."""
    final = str(project / "runs" / "dpo" / "final")
    model, t = build_model(ModelConfig(path=final))
    assert all(p.requires_grad for p in model.parameters())
    assert torch.allclose(logits(model, t), logits(load_causal_lm(final), t), atol=1e-6, rtol=0)
    monkeypatch.chdir(project)
    summary = run_preference(load_config(PreferenceConfig, None, [
        f"out_dir={tmp_path / 'dpo2'}", f"model.path={final}", "lora.enabled=true", "lora.r=4", *COMMON]))
    assert summary["finished"]
    from peft import AutoPeftModelForCausalLM
    second = str(tmp_path / "dpo2" / "final")
    assert os.path.isfile(os.path.join(second, "base", "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    assert torch.allclose(logits(AutoPeftModelForCausalLM.from_pretrained(second), t),
                          logits(load_causal_lm(second), t), atol=1e-5, rtol=0)


def test_an_unmerged_adapter_on_a_random_init_preset_saves_its_base(tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM
    model, t = build_model(ModelConfig(preset="gpt2-tiny", tokenizer_vocab=300), corpus=[TEXT] * 20)
    model = add_lora(model, LoRAConfig(enabled=True, r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a non-zero adapter, as after training
    save_hf(model, t, str(tmp_path / "final"), merge_lora=False)
    monkeypatch.chdir(tmp_path.parent)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    assert torch.allclose(logits(loaded, t), logits(model, t), atol=1e-5, rtol=0)


def test_a_lora_run_from_a_preset_names_its_base_by_the_published_final_path(tmp_path, monkeypatch):
    """A run writes final/ as .final.partial and renames it when finished: the base saved inside it must be named
    by its path after the rename, or peft (which reads only adapter_config.json) finds nothing."""
    from peft import AutoPeftModelForCausalLM
    data, _ = tiny_sft(tmp_path, steps=1)
    run = tmp_path / "lora-dpo"  # DPO from the random-init preset: its base exists only in final/base
    keep = [c for c in COMMON if not c.startswith(("data.dir", "ref_cache"))]
    run_preference(load_config(PreferenceConfig, None, [f"out_dir={run}", "model.tokenizer_vocab=400",
                                                        "lora.enabled=true", "lora.r=4", *keep, f"data.dir={data}",
                                                        f"ref_cache_dir={tmp_path / 'cache'}"]))
    base = json.load(open(run / "final" / "adapter_config.json"))["base_model_name_or_path"]
    assert base == str(run / "final" / "base") and os.path.isfile(os.path.join(base, "config.json"))
    monkeypatch.chdir(tmp_path.parent)
    AutoPeftModelForCausalLM.from_pretrained(str(run / "final"))  # loads from another directory


def test_export_merge_loads_with_plain_transformers_elsewhere_and_keeps_the_logits(project, tmp_path, monkeypatch,
                                                                                    capsys):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run = str(project / "runs" / "dpo")
    assert main(["eval", run, "--task", "family_tree", "n_prompts=4", "max_new_tokens=6"]) == 0  # figures for the card
    out = str(tmp_path / "exported")
    assert main(["export", run, "--out", out, "--merge"]) == 0
    assert "a plain model (LoRA adapters merged)" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} \
        <= set(os.listdir(out)) and not os.path.exists(os.path.join(out, "adapter_config.json"))
    monkeypatch.chdir(tmp_path)
    t = AutoTokenizer.from_pretrained(out)
    exported = logits(AutoModelForCausalLM.from_pretrained(out), t)
    assert torch.allclose(exported, logits(AutoPeftModelForCausalLM.from_pretrained(run + "/final"), t),
                          atol=1e-5, rtol=0)
    card = open(os.path.join(out, "README.md")).read()
    assert "Base model: `random-init preset gpt2-tiny`" in card
    assert f"| 1 | sft | `{project / 'sft'}` |" in card and "| 2 | dpo | `" in card
    eval_result = json.load(open(os.path.join(run, "eval-family_tree.json")))
    assert f"KL to reference {eval_result['kl_ref']['mean']:.3f}" in card and "loss: dpo" in card


def test_export_refuses_to_overwrite_or_overlap_unless_forced(project, tmp_path, capsys):
    run = str(project / "runs" / "dpo")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", run, "--out", str(out)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    before = sorted(os.listdir(run + "/final"))
    assert main(["export", run, "--out", run + "/final", "--force"]) == 2
    assert "overlaps the model being exported" in capsys.readouterr().err
    assert sorted(os.listdir(run + "/final")) == before
    assert main(["export", run, "--out", str(out), "--force"]) == 0  # an adapter export, replacing the old
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").exists()
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p] == []
    assert adapter_base(str(out)) == str(project / "sft" / "final")


def test_export_of_a_reward_run_keeps_its_head(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    run_reward(load_config(RewardConfig, None, [f"out_dir={tmp_path / 'rm'}", "model.path=sft/final",
                                                "train.max_steps=2", "train.batch_size=4", "train.progress=false",
                                                "train.threads=1", "data.task=family_tree", "data.dir=data",
                                                "normalize_samples=8"]))
    out = str(tmp_path / "rm-export")
    assert main(["export", str(tmp_path / "rm"), "--out", out]) == 0
    a, t = load_reward_model(str(tmp_path / "rm" / "final"))
    b, _ = load_reward_model(out)
    ids = t(TEXT, return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(a(ids, mask, mask), b(ids, mask, mask))
    assert "load_reward_model" in open(os.path.join(out, "README.md")).read()


def test_reward_normalisation_policy_data_and_ppo_take_an_unmerged_lora_final(project, tmp_path, monkeypatch):
    from tinyrlhf.config import PPOConfig
    from tinyrlhf.study.policy_data import sample_k
    from tinyrlhf.train.ppo import run_ppo
    final = str(project / "runs" / "dpo" / "final")
    monkeypatch.chdir(tmp_path)
    assert len(sample_k(final, [TEXT[:-9]], 2, temperature=1.0, max_new_tokens=4, seed=0)[0]) == 2
    data = str(project / "data")
    base = ["train.progress=false", "train.threads=1", "data.task=family_tree", f"data.dir={data}"]
    rm = run_reward(load_config(RewardConfig, None, [f"out_dir={tmp_path / 'rm'}", f"model.path={final}",
                                                     f"normalize_on={final}", "train.max_steps=1",
                                                     "train.batch_size=4", "normalize_samples=8", *base]))
    assert rm["finished"] and rm["norm/samples"] == 8
    ppo = run_ppo(load_config(PPOConfig, None, [f"out_dir={tmp_path / 'ppo'}", f"model.path={final}", "reward=gold",
                                                "ppo.value_model=separate", f"ppo.value_init={final}",
                                                "train.max_steps=1", "rollout.prompts_per_step=4",
                                                "ppo.minibatch_size=4", "eval.n_prompts=0", *base]))
    assert ppo["finished"]


def test_sft_honours_lora_merge(project, tmp_path, monkeypatch, capsys):
    """sft with LoRA: lora.merge=false (the default) makes final/ an adapter directory, as DPO's, that
    tinyrlhf.loading.load_causal_lm and peft load from anywhere and that `tinyrlhf export --merge` turns into
    plain weights with the same logits; lora.merge=true makes final/ plain merged weights, as before."""
    from peft import AutoPeftModelForCausalLM
    from tinyrlhf.config import SFTConfig
    from tinyrlhf.train.sft import run_sft

    monkeypatch.chdir(project)
    common = ["model.path=sft/final", "lora.enabled=true", "lora.r=4", "train.max_steps=3", "train.batch_size=4",
              "train.lr=1e-2", "train.progress=false", "train.threads=1", "eval.n_prompts=0", "data.task=family_tree",
              "data.dir=data", "learnability_k=0"]
    for merge in ("false", "true"):
        assert run_sft(load_config(SFTConfig, None, [f"out_dir={tmp_path / merge}", f"lora.merge={merge}",
                                                     *common]))["finished"]
    adapter, merged = str(tmp_path / "false" / "final"), str(tmp_path / "true" / "final")
    assert os.path.isfile(os.path.join(adapter, "adapter_config.json"))
    assert not os.path.exists(os.path.join(adapter, "config.json"))
    assert adapter_base(adapter) == str(project / "sft" / "final")
    assert os.path.isfile(os.path.join(merged, "model.safetensors"))
    assert not os.path.exists(os.path.join(merged, "adapter_config.json"))
    monkeypatch.chdir(tmp_path)
    t = tok(adapter)
    ours = logits(load_causal_lm(adapter), t)
    assert torch.allclose(ours, logits(AutoPeftModelForCausalLM.from_pretrained(adapter), t), atol=1e-5, rtol=0)
    assert torch.allclose(ours, logits(load_causal_lm(merged), t), atol=1e-4, rtol=0)  # the same training
    assert (ours - logits(load_causal_lm(str(project / "sft" / "final")), t)).abs().max() > 1e-3
    out = str(tmp_path / "exported")
    assert main(["export", str(tmp_path / "false"), "--out", out, "--merge"]) == 0
    assert "a plain model (LoRA adapters merged)" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(out), t), ours, atol=1e-5, rtol=0)
