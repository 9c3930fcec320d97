"""Chat data: OpenAI-style messages and hh-rlhf turns, rendered with ONE plain template for a tokenizer
without a chat template and with the tokenizer's own template otherwise; the stages use it. Also the
reward-scale warning for a reward model that scores the policy's samples far from mean 0 / std 1."""
import json
import os
import shutil

import pytest
import torch

from tinyrlhf.cli import main
from tinyrlhf.config import PreferenceConfig, SFTConfig, load_config
from tinyrlhf.data import conversation, load_binary, load_preferences, load_sft, render_chat
from tinyrlhf.errors import DataError
from tinyrlhf.models import load_tokenizer, train_tokenizer
from tinyrlhf.train import preference, sft
from tinyrlhf.train.reward import scale_warning

from conftest import tiny_sft

# <|role|>content<|end|> per turn; the generation prompt opens an assistant turn
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def tokenizers():
    plain = train_tokenizer(["Hi there. How are you? Fine, thanks."] * 5, 300)
    templated = train_tokenizer(["Hi there. How are you? Fine, thanks."] * 5, 300)
    templated.chat_template = TEMPLATE
    return plain, templated


def test_messages_render_with_the_plain_template_when_the_tokenizer_has_none(tmp_path):
    sft_file = write(tmp_path / "sft.jsonl", [{"messages": [S("Be brief."), U("Hi?"), A("Hello."), U("Name?"),
                                                            A("Bob.")]}])
    [r] = load_sft(sft_file)
    assert r.prompt == "\n\nSystem: Be brief.\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Name?\n\nAssistant:"
    assert r.completion == " Bob."
    pairs = load_preferences(write(tmp_path / "p.jsonl", [
        {"prompt": [U("Hi?")], "chosen": [A("Hello.")], "rejected": "Go away."},  # TRL's conversational form
        {"chosen": [U("Hi?"), A("Hello.")], "rejected": [U("Hi?"), A("No.")]}]))  # implicit prompt
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("\n\nHuman: Hi?\n\nAssistant:", " Hello.", " Go away."), ("\n\nHuman: Hi?\n\nAssistant:", " Hello.", " No.")]
    [b] = load_binary(write(tmp_path / "b.jsonl", [{"prompt": [U("Hi?")], "completion": "Yo.", "label": True}]))
    assert (b.prompt, b.completion, b.meta["messages"]) == ("\n\nHuman: Hi?\n\nAssistant:", " Yo.", [U("Hi?")])
    plain, _ = tokenizers()
    assert render_chat(pairs, plain) == pairs and render_chat([r], plain)[0].prompt == r.prompt


def test_messages_and_hh_turns_render_with_the_tokenizers_chat_template(tmp_path):
    _, templated = tokenizers()
    [r] = render_chat(load_sft(write(tmp_path / "sft.jsonl", [{"messages": [U("Hi?"), A("Hello.")]}])), templated)
    assert (r.prompt, r.completion) == ("<|user|>Hi?<|end|>\n<|assistant|>", "Hello.<|end|>\n")
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: Knock knock.",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."}
    [p] = render_chat(load_preferences(write(tmp_path / "hh.jsonl", [hh]), "hh-rlhf"), templated)
    assert p.prompt == "<|user|>Hi<|end|>\n<|assistant|>Hello!<|end|>\n<|user|>A joke?<|end|>\n<|assistant|>"
    assert (p.chosen, p.rejected) == ("Knock knock.<|end|>\n", "No.<|end|>\n")
    plain_prompt = [{"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}]  # no turns: left as written
    assert render_chat(load_preferences(write(tmp_path / "plain.jsonl", plain_prompt)), templated)[0].prompt == "Q: 2+2?"


@pytest.mark.parametrize("row, needle", [
    ({"messages": [U("Hi?"), {"role": "robot", "content": "x"}]}, "field 'messages[1].role': role 'robot'"),
    ({"messages": []}, "field 'messages': expected a non-empty list of messages"),
    ({"prompt": [U("Hi?"), A("Hello.")], "completion": "x"}, "field 'prompt': the last prompt message is the assistant"),
    ({"prompt": [U("Hi?")], "completion": [U("x")]}, "field 'completion': the last message is not the assistant"),
    ({"messages": [U("Hi?"), {"role": "assistant", "content": 3}]}, "field 'messages[1]': expected"),
])
def test_bad_chat_rows_name_the_line_and_field(tmp_path, row, needle):
    path = write(tmp_path / "bad.jsonl", [{"messages": [U("ok"), A("fine")]}, row])
    with pytest.raises(DataError) as info:
        load_sft(path)
    assert str(info.value).startswith(f"{path}:2: ") and needle in str(info.value)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """tiny_sft's model, copied with a chat template added to its tokenizer."""
    root = tmp_path_factory.mktemp("chat")
    data, final = tiny_sft(root)
    templated = str(root / "templated")
    shutil.copytree(final, templated)
    tok = load_tokenizer(templated)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(templated)
    return root, templated


def test_sft_and_dpo_train_on_the_chat_template(chat_model, tmp_path, monkeypatch):
    root, templated = chat_model
    seen = []
    real_encode, real_groups = conversation.encode, preference.encode_groups  # SFT encodes via encode_sft
    monkeypatch.setattr(conversation, "encode", lambda tok, p, c, *a, **k: seen.append((list(p), list(c))) or
                        real_encode(tok, p, c, *a, **k))
    monkeypatch.setattr(preference, "encode_groups", lambda tok, p, c, *a, **k: seen.append((list(p), list(c))) or
                        real_groups(tok, p, c, *a, **k))
    common = [f"model.path={templated}", "train.max_steps=1", "train.batch_size=2", "train.progress=false",
              "train.threads=1", "eval.n_prompts=0"]
    sft.run_sft(load_config(SFTConfig, None, [f"out_dir={tmp_path / 'sft'}", *common, "data.train_file=" + write(
        tmp_path / "chat.jsonl", [{"messages": [U("Hi?"), A("Hello.")]}, {"messages": [U("Bye?"), A("Bye.")]}])]))
    assert seen[0] == (["<|user|>Hi?<|end|>\n<|assistant|>", "<|user|>Bye?<|end|>\n<|assistant|>"],
                       ["Hello.<|end|>\n", "Bye.<|end|>\n"])
    seen.clear()
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": [U("Hi?")], "chosen": "Hello.", "rejected": "Go."},
                                             {"prompt": [U("Yo?")], "chosen": "Yo.", "rejected": "No."}])
    preference.run_preference(load_config(PreferenceConfig, None, [
        f"out_dir={tmp_path / 'dpo'}", *common, f"data.train_file={pairs}", f"data.eval_file={pairs}",
        f"ref_cache_dir={tmp_path / 'cache'}"]))
    assert seen[0] == (["<|user|>Hi?<|end|>\n<|assistant|>", "<|user|>Yo?<|end|>\n<|assistant|>"],
                       [["Hello.<|end|>\n", "Go.<|end|>\n"], ["Yo.<|end|>\n", "No.<|end|>\n"]])
    assert seen[1] == seen[0]  # the held-out pairs too


def test_eval_prompts_use_the_evaluated_models_chat_template(chat_model, tmp_path):
    root, templated = chat_model
    prompts = write(tmp_path / "prompts.jsonl", [{"messages": [U("Hi?")]}, {"messages": [U("Bye?")]}])
    out = str(tmp_path / "e.json")
    assert main(["eval", templated, "--prompts", prompts, "--out", out, "max_new_tokens=3"]) == 0
    samples = [json.loads(x)["prompt"] for x in open(out.removesuffix(".json") + ".samples.jsonl")]
    assert samples == ["<|user|>Hi?<|end|>\n<|assistant|>", "<|user|>Bye?<|end|>\n<|assistant|>"]


def test_reward_scale_warning():
    g = torch.Generator().manual_seed(0)
    unit = torch.randn(64, generator=g)
    assert scale_warning(unit, "rm") is None
    assert scale_warning(unit * 0.5 + 1.0, "rm") is None
    line = scale_warning(unit * 12 - 175, "runs/hh-rm", "the chosen completions")
    assert line.startswith("warning: reward model runs/hh-rm scores the policy's first 64 samples at mean -17")
    assert "normalised on the chosen completions" in line and "normalize_on=" in line and "\n" not in line
    assert scale_warning(unit * 0.01, "rm") is not None  # no spread: no signal for PPO either
    assert scale_warning(unit[:7] * 100, "rm") is None  # too few samples to judge


def test_ppo_warns_once_when_its_reward_model_is_off_scale(chat_model, tmp_path, capsys):
    """A reward model whose gain was blown up 100x (as one normalised on other text can be) makes PPO
    print one warning line at its first batch, and no more."""
    from tinyrlhf.config import PPOConfig, RewardConfig
    from tinyrlhf.train.ppo import run_ppo
    from tinyrlhf.train.reward import run_reward
    root, _ = chat_model
    data, sft_final = str(root / "data"), str(root / "sft" / "final")
    base = ["train.progress=false", "train.threads=1", "data.task=family_tree", f"data.dir={data}"]
    run_reward(load_config(RewardConfig, None, [f"out_dir={tmp_path / 'rm'}", f"model.path={sft_final}",
                                                "train.max_steps=1", "train.batch_size=4", "normalize_samples=8",
                                                *base]))
    head = tmp_path / "rm" / "final" / "reward_head.json"
    meta = json.loads(head.read_text())
    meta["gain"] *= 100
    head.write_text(json.dumps(meta))
    capsys.readouterr()
    run_ppo(load_config(PPOConfig, None, [f"out_dir={tmp_path / 'ppo'}", f"model.path={sft_final}",
                                          f"reward={tmp_path / 'rm'}", "train.max_steps=2", "rollout.prompts_per_step=8",
                                          "ppo.minibatch_size=4", "eval.n_prompts=0", *base]))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning: reward model")]
    assert len(lines) == 1 and "first 8 samples" in lines[0]
    assert "normalised on the chosen completions" in lines[0]
    assert os.path.isdir(tmp_path / "ppo" / "final")  # a warning, not an error
