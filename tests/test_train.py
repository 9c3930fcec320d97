"""End-to-end SFT and reward-model runs on tiny models: run directory, reload, determinism, resume, LoRA."""
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinyrlhf.cli import main
from tinyrlhf.config import RewardConfig, SFTConfig, load_config
from tinyrlhf.data.collate import encode
from tinyrlhf.models import load_reward_model
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.reward import run_reward, score
from tinyrlhf.train.sft import run_sft

SMALL = dict(n_train_prompts=120, n_eval_prompts=16, n_pairs=120, n_rankings=10, n_binary=40, n_eval_pairs=40)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data") / "ft")
    write_task_data("family_tree", d, seed=0, **SMALL)
    return d


def sft_cfg(out, data_dir, *extra):
    return load_config(SFTConfig, None, [
        f"out_dir={out}", "model.tokenizer_vocab=400", "data.task=family_tree", f"data.dir={data_dir}",
        "train.max_steps=6", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=0", "train.save_every=0", "train.progress=false", "eval.n_prompts=8",
        "eval.max_new_tokens=8", *extra])


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, data_dir):
    out = str(tmp_path_factory.mktemp("runs") / "sft")
    summary = run_sft(sft_cfg(out, data_dir))
    return out, summary


def test_sft_writes_the_run_layout(sft_run):
    out, summary = sft_run
    assert summary["finished"] and summary["steps"] == 6
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last/state.pt", "final"):
        assert os.path.exists(os.path.join(out, name)), name
    saved = json.load(open(os.path.join(out, "summary.json")))
    assert saved["tokens_per_s"] > 0 and saved["peak_rss_mib"] > 0 and "gold/mean" in saved
    assert "before/gold/mean" in saved and 0 <= saved["gold/mean"] <= saved["gold/max"]
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6]


def test_final_dir_reloads_with_plain_transformers(sft_run):
    out, _ = sft_run
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "final"))
    ids = tok("- Cal(m): Ann(f), Bob(m)\nQ: parents of Cal?\nA:", return_tensors="pt").input_ids
    out_ids = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out_ids.shape[1] > ids.shape[1]
    assert tok.eos_token == "<|endoftext|>" and tok.decode([tok.eos_token_id]) == "<|endoftext|>"


def test_same_seed_same_loss_curve(sft_run, tmp_path, data_dir):
    out, _ = sft_run
    run_sft(sft_cfg(str(tmp_path / "again"), data_dir))
    assert losses(str(tmp_path / "again")) == losses(out)
    run_sft(sft_cfg(str(tmp_path / "other"), data_dir, "seed=1"))
    assert losses(str(tmp_path / "other")) != losses(out)


def test_resume_continues_exactly(sft_run, tmp_path, data_dir):
    """Stop after 3 of 6 steps, run again: steps 4-6 have the same losses as the uninterrupted run."""
    out, _ = sft_run
    resumed = str(tmp_path / "resumed")
    first = run_sft(sft_cfg(resumed, data_dir, "train.stop_after=3"))
    assert not first["finished"] and not os.path.exists(os.path.join(resumed, "final"))
    second = run_sft(sft_cfg(resumed, data_dir))
    assert second["finished"]
    assert losses(resumed) == losses(out)


def test_finished_run_is_reused_not_overwritten(sft_run, data_dir):
    out, summary = sft_run
    mtime = os.path.getmtime(os.path.join(out, "final", "config.json"))
    assert run_sft(sft_cfg(out, data_dir))["steps"] == summary["steps"]
    assert os.path.getmtime(os.path.join(out, "final", "config.json")) == mtime


def test_lora_sft_trains_adapters_only_and_merges(tmp_path, data_dir):
    """lora.merge=true: final/ is a plain HF directory (lora.merge=false, the default, leaves an adapter:
    test_lora_export.py::test_sft_honours_lora_merge)."""
    out = str(tmp_path / "lora")
    summary = run_sft(sft_cfg(out, data_dir, "lora.enabled=true", "lora.r=4", "train.lr=1e-2", "lora.merge=true"))
    assert summary["finished"]
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))  # merged: a plain HF dir
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert losses(out)[0][1] != losses(out)[-1][1]


def test_reward_model_end_to_end(sft_run, tmp_path, data_dir):
    sft_out, _ = sft_run
    out = str(tmp_path / "rm")
    cfg = load_config(RewardConfig, None, [
        f"out_dir={out}", f"model.path={sft_out}/final", "data.task=family_tree", f"data.dir={data_dir}",
        "train.max_steps=4", "train.batch_size=8", "train.progress=false", "train.log_every=1",
        "normalize_samples=32"])
    summary = run_reward(cfg)
    assert summary["finished"]
    assert 0 <= summary["eval/accuracy_gold"] <= 1 and summary["eval/pairs"] == 40
    rm, tok = load_reward_model(os.path.join(out, "final"))
    # normalisation: on the samples it was fitted on (the first chosen completions), mean 0 and std 1
    pairs = [json.loads(line) for line in open(os.path.join(data_dir, "pairs.jsonl"))][:32]
    ex = encode(tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], cfg.data.max_length)
    r = score(rm, ex, tok.pad_token_id, torch.device("cpu"), "bf16")
    assert abs(r.mean().item()) < 1e-3 and abs(r.std().item() - 1) < 1e-3
    # the trunk of the reward model is itself a plain HF directory
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, data_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 3}\n')
    code = main(["sft", "train.progress=false", "data.task=family_tree", f"data.train_file={bad}",
                 f"out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2" in err and "completion" in err and "Traceback" not in err
    assert main(["sft", "train.lrr=1"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["reward", f"model.path={tmp_path / 'nope'}", "data.task=family_tree",
                 f"data.dir={data_dir}", f"out_dir={tmp_path / 'r2'}"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["data", "no_such_task", "--out", str(tmp_path / "d")]) == 2
    assert "family_tree" in capsys.readouterr().err


def test_cli_data_same_seed_same_bytes(tmp_path):
    args = ["n_train_prompts=30", "n_pairs=30", "n_rankings=5", "n_binary=10", "n_eval_prompts=5",
            "n_eval_pairs=10"]
    assert main(["data", "family_tree", "--out", str(tmp_path / "a"), "seed=3", *args]) == 0
    assert main(["data", "family_tree", "--out", str(tmp_path / "b"), *args, "seed=3"]) == 0
    for name in ("sft.jsonl", "pairs.jsonl", "rankings.jsonl", "binary.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
