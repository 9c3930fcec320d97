"""End-to-end DPO-family and KTO runs on a tiny model: every loss runs, the reference is cached and
reused, LoRA uses the adapter-disabled network as reference, and the KTO edge cases hold."""
import json
import os

import pytest
import torch

from tinyrlhf.config import KTOConfig, PreferenceConfig, SFTConfig, load_config
from tinyrlhf.data.collate import encode_groups
from tinyrlhf.errors import DataError
from tinyrlhf.models import add_lora, build_model
from tinyrlhf.config import LoRAConfig, ModelConfig
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.kto import mismatch, run_kto
from tinyrlhf.train.preference import run_preference
from tinyrlhf.train.reference import reference_logps
from tinyrlhf.train.sft import run_sft

SMALL = dict(n_train_prompts=80, n_eval_prompts=8, n_pairs=64, n_rankings=4, n_binary=64, n_eval_pairs=16)
COMMON = ["train.max_steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1",
          "train.eval_every=0", "train.save_every=0", "train.progress=false", "eval.n_prompts=4",
          "eval.max_new_tokens=6", "data.task=family_tree"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    data = str(root / "data")
    write_task_data("family_tree", data, seed=0, **SMALL)
    sft = str(root / "sft")
    run_sft(load_config(SFTConfig, None, [f"out_dir={sft}", "model.tokenizer_vocab=400", f"data.dir={data}",
                                          *COMMON]))
    return root, data, f"{sft}/final"


def cfg(cls, root, data, model, name, *extra):
    return load_config(cls, None, [f"out_dir={root / name}", f"model.path={model}", f"data.dir={data}",
                                   f"ref_cache_dir={root / 'cache'}", *COMMON, *extra])


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo", "hinge", "simpo", "orpo"])
def test_every_preference_loss_runs_end_to_end(base, loss):
    root, data, model = base
    summary = run_preference(cfg(PreferenceConfig, root, data, model, f"run-{loss}", f"loss={loss}"))
    assert summary["finished"] and summary["loss"] == loss
    rows = [json.loads(x) for x in open(root / f"run-{loss}" / "metrics.jsonl")]
    trained = [r for r in rows if "loss" in r]
    assert len(trained) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in trained)
    assert "gold/mean" in summary and "kl/ref" in summary
    assert os.path.isfile(root / f"run-{loss}" / "final" / "config.json")


def test_dpo_first_step_loss_is_log2(base):
    """Policy == reference at step 1 (the policy starts as the SFT model), so the DPO loss is log 2."""
    root, data, model = base
    run_preference(cfg(PreferenceConfig, root, data, model, "log2", "loss=dpo", "train.max_steps=1"))
    first = [json.loads(x) for x in open(root / "log2" / "metrics.jsonl") if '"loss"' in x][0]
    assert abs(first["loss"] - 0.6931471805599453) < 1e-3  # bf16 autocast: policy and ref agree to ~1e-4


def test_reference_is_cached_and_reused(base):
    root, data, model_dir = base
    model, tok = build_model(ModelConfig(path=model_dir))
    answers = [" Ann, Bob.", " Bob.", " None."]
    ex = encode_groups(tok, ["- Cal(m): Ann(f), Bob(m)\nQ: parents of Cal?\nA:"], [answers], 64)
    cache = str(root / "refcache")
    sums, counts = reference_logps(model, ex, tok.pad_token_id, torch.device("cpu"), "fp32", cache)
    expected = [[len(tok(a, add_special_tokens=False).input_ids) + 1] for a in answers]  # + EOS
    assert len(os.listdir(cache)) == 1 and counts.tolist() == expected
    with torch.no_grad():  # poison the weights: a cache hit must not recompute
        for p in model.parameters():
            p.add_(1.0)
    again, _ = reference_logps(model, ex, tok.pad_token_id, torch.device("cpu"), "fp32", cache)
    assert len(os.listdir(cache)) == 2  # new weights -> new key, not the stale entry
    model2, _ = build_model(ModelConfig(path=model_dir))
    hit, _ = reference_logps(model2, ex, tok.pad_token_id, torch.device("cpu"), "fp32", cache)
    assert torch.equal(hit, sums) and not torch.equal(again, sums)


def test_lora_reference_is_the_adapter_disabled_network(base):
    root, data, model_dir = base
    model, tok = build_model(ModelConfig(path=model_dir))
    ex = encode_groups(tok, ["- Cal(m): Ann(f), Bob(m)\nQ: parents of Cal?\nA:"], [[" Ann, Bob."]], 64)
    plain, _ = reference_logps(model, ex, tok.pad_token_id, torch.device("cpu"), "fp32", str(root / "c1"))
    lora = add_lora(model, LoRAConfig(enabled=True, r=4))
    with torch.no_grad():  # make the adapters matter
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()
    via_lora, _ = reference_logps(lora, ex, tok.pad_token_id, torch.device("cpu"), "fp32", str(root / "c2"))
    assert torch.allclose(plain, via_lora, atol=1e-5)


def test_lora_dpo_runs(base):
    root, data, model = base
    summary = run_preference(cfg(PreferenceConfig, root, data, model, "lora-dpo", "lora.enabled=true", "lora.r=4"))
    assert summary["finished"] and "kl/ref" in summary


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_lora_bf16_base_trains_exactly_like_the_fp32_base(base, method):
    """Under bf16 autocast the adapted layers' matmuls run in bf16 whatever the stored dtype: keeping the
    frozen base in bf16 must give the same reference, losses and gradients, and a merged final/ equal to
    the fp32 base's (the merge reloads the fp32 weights). (Evaluation samples differ: a bf16 base samples
    under bf16 autocast, an fp32 one in fp32.)"""
    root, data, model = base
    cls, run = (PreferenceConfig, run_preference) if method == "dpo" else (KTOConfig, run_kto)
    finals = {}
    for on in ("true", "false"):
        name = f"{method}-bf16base-{on}"
        run(cfg(cls, root, data, model, name, "lora.enabled=true", "lora.r=4", "lora.merge=true",
                "train.precision=bf16", f"lora.bf16_base={on}", f"ref_cache_dir={root / name}-cache"))
        rows = [json.loads(x) for x in open(root / name / "metrics.jsonl")]
        finals[on] = (rows, build_model(ModelConfig(path=str(root / name / "final")))[0].state_dict())
    (rows_bf16, sd_bf16), (rows_fp32, sd_fp32) = finals["true"], finals["false"]
    assert [r["loss"] for r in rows_bf16 if "loss" in r] == [r["loss"] for r in rows_fp32 if "loss" in r]
    assert [r.get("grad_norm") for r in rows_bf16] == [r.get("grad_norm") for r in rows_fp32]
    assert all(t.dtype == torch.float32 and torch.equal(t, sd_fp32[k]) for k, t in sd_bf16.items())


def test_lora_bf16_base_stores_only_the_adapted_layers_in_bf16(base):
    from tinyrlhf.models import store_frozen_base
    _, _, model_dir = base
    lora = add_lora(build_model(ModelConfig(path=model_dir))[0], LoRAConfig(enabled=True, r=4))
    assert store_frozen_base(lora, torch.bfloat16) > 0
    low = {n for n, p in lora.named_parameters() if p.dtype == torch.bfloat16}
    assert low and all(".base_layer." in n for n in low)
    assert all(p.dtype == torch.float32 for n, p in lora.named_parameters() if "lora_" in n or "wte" in n or "ln_" in n)


def test_lora_merge_refuses_a_base_directory_changed_during_the_run(base, tmp_path):
    import shutil
    from tinyrlhf.errors import ConfigError
    from tinyrlhf.models import save_hf, store_frozen_base
    _, _, model_dir = base
    copy = str(tmp_path / "base")
    shutil.copytree(model_dir, copy)
    model, tok = build_model(ModelConfig(path=copy))
    lora = add_lora(model, LoRAConfig(enabled=True, r=4))
    store_frozen_base(lora, torch.bfloat16)
    changed, _ = build_model(ModelConfig(path=copy))
    with torch.no_grad():
        changed.transformer.h[0].attn.c_attn.weight.mul_(1.5)
    changed.save_pretrained(copy)
    with pytest.raises(ConfigError, match="c_attn.weight.*lora.merge=false"):
        save_hf(lora, tok, str(tmp_path / "out"), merge_lora=True)


def test_kto_runs_with_batches_of_one_kind(base, tmp_path):
    root, data, model = base
    # all desirable: every batch has only desirable rows -> still finite losses
    only_good = tmp_path / "good.jsonl"
    rows = [json.loads(x) for x in open(os.path.join(data, "binary.jsonl"))]
    only_good.write_text("".join(json.dumps({**r, "label": True}) + "\n" for r in rows))
    s = run_kto(cfg(KTOConfig, root, data, model, "kto-good", f"data.train_file={only_good}"))
    assert s["finished"] and s["undesirable"] == 0
    s = run_kto(cfg(KTOConfig, root, data, model, "kto-mixed", "train.batch_size=1"))
    assert s["finished"] and s["desirable"] > 0 and s["undesirable"] > 0
    losses = [json.loads(x)["loss"] for x in open(root / "kto-mixed" / "metrics.jsonl") if '"loss"' in x]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)


def test_kto_mismatch_never_pairs_an_example_with_itself():
    other = mismatch(50, seed=3)
    assert all(j != i for i, j in enumerate(other)) and other == mismatch(50, seed=3)
    with pytest.raises(DataError, match="at least 2"):
        mismatch(1, seed=0)


def test_identical_chosen_and_rejected_is_a_clear_data_error(base, tmp_path):
    root, data, model = base
    bad = tmp_path / "same.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "chosen": " A.", "rejected": " B."}) + "\n"
                   + json.dumps({"prompt": "Q", "chosen": " A.", "rejected": " A."}) + "\n")
    with pytest.raises(DataError, match=r"same.jsonl:2.*identical"):
        run_preference(cfg(PreferenceConfig, root, data, model, "same", f"data.train_file={bad}"))


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_prefix_sharing_trains_like_separate_rows(base, method):
    """train.share_prompt changes how the work is laid out, not the numbers (fp32: same losses to 1e-5);
    gradient checkpointing (which turns the KV cache off) falls back to separate rows and runs."""
    root, data, model = base
    cls, run = (PreferenceConfig, run_preference) if method == "dpo" else (KTOConfig, run_kto)
    losses = {}
    for name, extra in (("on", []), ("off", ["train.share_prompt=false"]),
                        ("ckpt", ["model.gradient_checkpointing=true"])):
        run(cfg(cls, root, data, model, f"share-{method}-{name}", "train.precision=fp32", "eval.n_prompts=0",
                *extra))
        rows = [json.loads(x) for x in open(root / f"share-{method}-{name}" / "metrics.jsonl")]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["on"]) == 3
    assert losses["on"] == pytest.approx(losses["off"], abs=1e-5)
    assert losses["ckpt"] == pytest.approx(losses["off"], abs=1e-5)
