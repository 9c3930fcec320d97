"""Issue 23, "your own data and model, right the first time", piece by piece (tests/test_guide_own_data.py runs
the whole path): a preset on your own files with no task, a model by hub name (cache hit; offline), run
directories a failed start leaves clean, column mapping and epochs, one prompt format, defaults by situation,
the did-the-policy-move warning, eval counts and the compare report's warnings."""
from __future__ import annotations

import json
import shutil

import pytest

from tinyrlhf.cli import main
from tinyrlhf.config import KTOConfig, PPOConfig, PreferenceConfig, RewardConfig, SFTConfig, load_config
from tinyrlhf.data import PairRecord, PromptRecord, SFTRecord
from tinyrlhf.data.templates import HH_JINJA, format_records, render_prompt, set_template, template_of
from tinyrlhf.errors import ConfigError
from tinyrlhf.models import load_tokenizer, train_tokenizer
from tinyrlhf.train.data import own_data_with_task

FAST = ["train.threads=1", "train.progress=false", "train.batch_size=8"]


def write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def qa_rows(n):
    animals = ["cat", "dog", "owl", "fox", "cow"]
    return [{"q": f"What does the {animals[i % 5]} number {i} eat?", "a": f" The {animals[i % 5]} eats seeds."}
            for i in range(n)]


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """An SFT model trained on plain own data (mapped columns, no task) in 2 epochs."""
    root = tmp_path_factory.mktemp("own")
    qa = write(root / "qa.jsonl", qa_rows(24))
    hh = write(root / "hh.jsonl", [{"chosen": f"\n\nHuman: {r['q']}\n\nAssistant:{r['a']}",
                                    "rejected": f"\n\nHuman: {r['q']}\n\nAssistant: No."} for r in qa_rows(24)])
    assert main(["sft", f"data.train_file={qa}", "data.columns.prompt=q", "data.columns.completion=a",
                 "train.epochs=2", f"out_dir={root / 'sft'}", *FAST]) == 0
    return root, qa, hh


# ---------------------------------------------------------------- 1. own data, a preset, a hub name

def test_a_preset_learns_its_tokenizer_from_your_files_and_no_gold_is_scored(own):
    root, _, _ = own
    vocab = load_tokenizer(str(root / "sft" / "final")).get_vocab()
    assert {"Ġowl", "Ġseeds"} <= set(vocab)
    summary = json.load(open(root / "sft" / "summary.json"))
    assert summary["finished"] and not any(k.startswith(("gold/", "before/", "learn/")) for k in summary)
    assert summary["steps"] == 6 and summary["data/train_records"] == 24  # 2 epochs of 3 batches of 8


def test_a_task_with_your_own_file_warns_unless_that_task_wrote_it(tmp_path):
    from tinyrlhf.config import DataConfig
    line = own_data_with_task(DataConfig(task="positive_review", train_file=str(tmp_path / "mine.jsonl")))
    assert line.startswith("warning: data.task=positive_review with your own data.train_file=")
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "positive_review"}))
    assert own_data_with_task(DataConfig(task="positive_review", train_file=str(tmp_path / "sft.jsonl"))) is None
    assert own_data_with_task(DataConfig(train_file="x.jsonl")) is None


def test_a_hub_name_comes_from_the_cache_and_offline_fails_in_one_line(own, tmp_path, monkeypatch, capsys):
    """model.path=org/name: the snapshot in the Hugging Face cache when it is there (no network), and one
    error line saying it cannot be downloaded offline when it is not."""
    import huggingface_hub.constants as hf
    root, qa, _ = own
    cache = tmp_path / "hub"
    snap = cache / "models--tinyorg--tiny-own" / "snapshots" / "0123abc"
    shutil.copytree(root / "sft" / "final", snap)
    (cache / "models--tinyorg--tiny-own" / "refs").mkdir()
    (cache / "models--tinyorg--tiny-own" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # never the network, whatever this machine has
    args = ["sft", f"data.train_file={qa}", "data.columns.prompt=q", "data.columns.completion=a",
            "train.max_steps=1", *FAST]
    assert main([*args, "model.path=tinyorg/tiny-own", f"out_dir={tmp_path / 'hub-sft'}"]) == 0
    assert json.load(open(tmp_path / "hub-sft" / "summary.json"))["finished"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "hub-sft"), "--prompts", qa, "--columns", "prompt=q,completion=a",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert "KL to reference" in capsys.readouterr().out and str(snap) in open(tmp_path / "e.json").read()
    assert main([*args, "model.path=tinyorg/not-cached", f"out_dir={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.path 'tinyorg/not-cached'" in err and "offline" in err, err


# ---------------------------------------------------------------- 5. run directories

def test_a_run_that_failed_before_its_first_step_leaves_no_identity(own, tmp_path, capsys):
    root, qa, _ = own
    out = tmp_path / "sft"
    bad = ["sft", f"data.train_file={tmp_path / 'typo.jsonl'}", f"out_dir={out}", "train.max_steps=2", *FAST]
    assert main(bad) == 2 and (out / "config.yaml").exists()
    good = ["sft", f"data.train_file={qa}", "data.columns.prompt=q", "data.columns.completion=a", f"out_dir={out}",
            "train.max_steps=2", *FAST]
    assert main(good) == 0  # the corrected command just runs
    assert "stopped before its first step" in capsys.readouterr().out
    assert not list(tmp_path.glob("sft.old-*"))
    # a run that trained keeps its identity: another config is refused, with a short readable suggestion
    assert main([*good[:-4], "train.max_steps=3", *FAST]) == 2
    err = capsys.readouterr().err
    assert f"e.g. out_dir={out}-max_steps3)" in err, err


# ---------------------------------------------------------------- 2. columns and epochs

def test_epochs_or_steps_and_the_line_a_run_starts_with(own, tmp_path, capsys):
    root, qa, _ = own
    cfg = load_config(SFTConfig, None, ["train.epochs=3", "data.task=family_tree"])
    assert (cfg.train.max_steps, cfg.train.epochs) == (0, 3.0)
    with pytest.raises(ConfigError, match=r"train.epochs=3 and train.max_steps=5: give one of the two"):
        load_config(SFTConfig, None, ["train.epochs=3", "train.max_steps=5"])
    with pytest.raises(ConfigError, match="train.epochs is for sft, reward, dpo and kto"):
        load_config(PPOConfig, None, ["train.epochs=3"])
    assert main(["dpo", f"model.path={root / 'sft' / 'final'}", f"data.train_file={own[2]}", "train.epochs=2",
                 f"out_dir={tmp_path / 'dpo'}", f"ref_cache_dir={tmp_path / 'cache'}", *FAST]) == 0
    out, err = capsys.readouterr()
    assert "dpo: 24 examples, 8 per step (3 steps per epoch); 6 steps (train.epochs=2) = 2 epochs" in out
    assert "warning: the training pairs" in err and "are in the hh prompt format" in err  # SFT's is plain


def test_an_undetectable_file_names_the_column_keys(tmp_path, capsys):
    data = write(tmp_path / "x.jsonl", [{"text": "a", "score": 1}])
    assert main(["sft", f"data.train_file={data}", f"out_dir={tmp_path / 'r'}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "data.columns.prompt=KEY data.columns.completion=KEY" in err and "x.jsonl:1" in err


# ---------------------------------------------------------------- 3. one prompt format

def test_records_and_prompts_render_in_the_models_format():
    plain = SFTRecord("What?", "It.")
    hh = PairRecord("\n\nHuman: Hi\n\nAssistant: Yo.\n\nHuman: Q?\n\nAssistant:", " a", " b")
    [p, h], example = format_records([plain, hh], "hh")
    assert (p.prompt, p.completion) == ("\n\nHuman: What?\n\nAssistant:", " It.") and h == hh
    assert example == ("What?", "\n\nHuman: What?\n\nAssistant:")
    [p, h], _ = format_records([plain, hh], "plain")
    assert p == plain and (h.prompt, h.chosen) == ("Hi\nYo.\nQ?", " a")
    assert render_prompt("Q?", "hh") == "\n\nHuman: Q?\n\nAssistant:" and render_prompt("Q?", None) == "Q?"
    [r], _ = format_records([PromptRecord("\n\nHuman: Q?\n\nAssistant:", "ref")], "plain")
    assert (r.prompt, r.reference) == ("Q?", "ref")
    tok = train_tokenizer(["hello world"] * 4, 300)
    assert template_of(tok) is None
    set_template(tok, "hh")
    assert template_of(tok) == "hh" and tok.chat_template == HH_JINJA
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}, {"role": "user", "content": "Q?"}]
    assert tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == hh.prompt


def test_the_sft_models_format_is_saved_and_eval_counts_its_prompts(own, tmp_path, capsys):
    root, _, _ = own
    assert template_of(load_tokenizer(str(root / "sft" / "final"))) == "plain"
    prompts = write(tmp_path / "p.jsonl", [{"prompt": "\n\nHuman: What does the owl eat?\n\nAssistant:"}] * 3
                    + [{"prompt": "What does the cat eat?"}])
    assert main(["eval", str(root / "sft"), "--prompts", prompts, "--out", str(tmp_path / "e.json")]) == 0
    out, err = capsys.readouterr()
    assert "2 prompts (the file holds 4: 2 repeat an earlier prompt and were dropped)" in out
    assert "max_new_tokens " in out and "completions of " in out  # sized on the run's training file
    assert "are in the hh prompt format, but the model uses the plain format" in err
    samples = [json.loads(x)["prompt"] for x in open(tmp_path / "e.samples.jsonl")]
    assert samples == ["What does the owl eat?", "What does the cat eat?"]


# ---------------------------------------------------------------- 4. defaults by situation

def test_defaults_follow_the_situation(own):
    def train(cls, *over):
        t = load_config(cls, None, list(over)).train
        return t.lr, t.max_steps, t.epochs
    assert train(SFTConfig) == (2e-3, 0, 20.0)  # own data from a preset: passes, not 3,000 steps
    assert train(SFTConfig, "data.task=family_tree") == (2e-3, 3000, 1.0)  # a task: the tuned values
    assert train(SFTConfig, "model.path=m") == (5e-5, 0, 3.0)
    assert load_config(SFTConfig, None, ["model.path=m"]).train.prompt_loss_weight == 0.0
    assert train(SFTConfig, "model.path=m", "lora.enabled=true")[0] == 5e-4
    run_final = f"model.path={own[0] / 'sft' / 'final'}"  # a tinyrlhf run's final/: as the preset it came from
    assert train(SFTConfig, run_final) == (2e-3, 0, 20.0)
    assert train(KTOConfig, "data.task=family_tree") == (2e-5, 150, 1.0)
    assert train(KTOConfig, "lora.enabled=true", "data.task=family_tree")[0] == 2e-4
    assert train(KTOConfig, "lora.enabled=true", "train.lr=1e-5")[0] == 1e-5  # what you set wins
    assert train(PreferenceConfig)[1:] == (0, 3.0) and train(RewardConfig)[1:] == (0, 2.0)
    assert train(PreferenceConfig, "train.max_steps=40")[1] == 40
    ppo = load_config(PPOConfig, None, ["lora.enabled=true"])
    assert (ppo.train.lr, ppo.rollout.max_new_tokens, ppo.eval.max_new_tokens) == (3e-4, 0, 0)
    assert load_config(PPOConfig, None, ["data.task=family_tree"]).rollout.max_new_tokens == 24


def test_a_policy_that_did_not_move_is_named_with_its_knob(own, tmp_path, capsys):
    """KTO under LoRA at full fine-tuning's learning rate (issue 23: KL -0.014, win rate 0.5): one warning at
    the end naming train.lr."""
    root, _, hh = own
    assert main(["kto", f"model.path={root / 'sft' / 'final'}", f"data.train_file={hh}", "lora.enabled=true",
                 "train.lr=1e-7", "train.max_steps=10", f"out_dir={tmp_path / 'kto'}",
                 f"ref_cache_dir={tmp_path / 'cache'}", *FAST]) == 0
    err = capsys.readouterr().err
    warned = [x for x in err.splitlines() if "hardly moved" in x]
    assert len(warned) == 1 and warned[0].startswith("warning: kto: the policy hardly moved") and \
        "raise train.lr (now 1e-07; LoRA usually needs" in warned[0], err
    summary = json.load(open(tmp_path / "kto" / "summary.json"))
    assert abs(summary["moved/kl"]) < 0.05 and summary["moved/prompts"] == 24


def test_warn_if_still_judges_the_interval():
    from tinyrlhf.train.moved import knob, warn_if_still
    ppo = load_config(PPOConfig, None, [])
    assert "lower kl.coef (now 0.1)" in knob(ppo)
    assert warn_if_still(ppo, {"steps": 60}, "ppo", 0.01, None, "x")
    assert not warn_if_still(ppo, {"steps": 60}, "ppo", 0.3, None, "x")
    assert not warn_if_still(ppo, {"steps": 60}, "ppo", 0.04, 0.01, "x")  # small, but its interval excludes 0


# ---------------------------------------------------------------- 6. the compare report's warnings

def test_compare_report_warns_at_the_top():
    from types import SimpleNamespace

    from tinyrlhf.study.report_md import top_warnings
    spec = SimpleNamespace(methods=["sft", "dpo", "kto"], seeds=2, budget=256, n_labels=256)
    crossing = {"significant": False, "mean": 0.01, "low": -0.02, "high": 0.04}
    runs = {"sft": {}, "dpo": {"vs": {"sft": crossing}}, "kto": {"vs": {"sft": crossing}}}
    results = {"runs": runs, "chosen": {m: m for m in spec.methods}, "task_card": {"coin_flip_labels": 0.89}}
    text = "\n".join(top_warnings(spec, results))
    assert "89% of the preference labels are coin flips" in text and "raise the SFT length" in text
    assert "every method's 95 % interval against SFT includes 0" in text and "Raise `--seeds`" in text
    runs["dpo"]["vs"]["sft"] = {**crossing, "significant": True, "low": 0.01}
    results["task_card"] = {"coin_flip_labels": 0.1}
    assert top_warnings(spec, results) == []


def test_serve_renders_chat_in_the_models_format():
    from tinyrlhf.serve.protocol import ChatMessage
    from tinyrlhf.serve.templates import HH_TEMPLATE, PLAIN_TEMPLATE, render_chat, template_name
    tok = train_tokenizer(["hello world"] * 4, 300)
    messages = [ChatMessage(role="developer", content="Be brief."), ChatMessage(role="user", content="Hi?")]
    assert render_chat(tok, messages) == "Be brief.\nHi?" and template_name(tok) == PLAIN_TEMPLATE  # none: plain
    set_template(tok, "hh")
    assert render_chat(tok, messages) == "\n\nSystem: Be brief.\n\nHuman: Hi?\n\nAssistant:"
    assert template_name(tok) == HH_TEMPLATE
    assert tok.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                   add_generation_prompt=True) == render_chat(tok, messages)
