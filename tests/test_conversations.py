"""Multi-turn conversations: SFT puts loss on every assistant turn (checked token by token on a hand-built
tokenizer, and the SFT loss against a hand computation of the mean NLL over exactly those tokens), the same
spans from a chat template with {% generation %} blocks and from the turn-by-turn renders of one without;
DPO, KTO, the reward model and online RL take the final reply given the whole conversation; SFT -> DPO on
multi-turn data end to end, and `serve` renders a conversation exactly as training did."""
import json

import httpx
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tinyrlhf.cli import main
from tinyrlhf.config import GroupConfig, SFTConfig, load_config
from tinyrlhf.data import load_binary, load_preferences, load_prompts, load_sft
from tinyrlhf.data.collate import pad
from tinyrlhf.data.conversation import encode_sft, has_generation_blocks
from tinyrlhf.data.templates import HH_JINJA, format_records, render_turns
from tinyrlhf.errors import DataError
from tinyrlhf.loading import load_causal_lm
from tinyrlhf.models import load_tokenizer, save_hf
from tinyrlhf.train import sft

from serve_util import make_app, running
from serve_util import one_thread  # noqa: F401 (the serve test's fixture)

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731
CONVERSATION = [U("Hi?"), A("Hello."), U("Name?"), A("Bob.")]  # two exchanges
WORDS = ["<|endoftext|>", "\n\n", "Human", "Assistant", "System", ":", " Hi", " Hello", " Name", " Bob", "?", ".",
         "Hi", "Hello", "Name", "Bob", "\n", "Be", " brief", " Be"]
# <|role|>content<|end|>\n per turn; the generation prompt opens an assistant turn
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# the same text, its assistant replies (content and end-of-turn marker) in {% generation %} blocks
GENERATION = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' %}{% generation %}"
              "{{ m['content'] }}<|end|>\n{% endgeneration %}{% else %}{{ m['content'] }}<|end|>\n{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONTENT_ONLY = GENERATION.replace("{{ m['content'] }}<|end|>\n{% endgeneration %}",
                                  "{{ m['content'] }}{% endgeneration %}<|end|>\n")


def hand_tokenizer(chat_tokens: bool = False) -> PreTrainedTokenizerFast:
    """One token per word (a leading space kept on it), per "\\n\\n", "\\n" and punctuation mark: token positions
    can be counted by hand. With chat_tokens, <|system|> <|user|> <|assistant|> <|end|> are tokens 20..23."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|\n| ?[A-Za-z]+|[^A-Za-z\s]| "), behavior="isolated")
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat_tokens:
        out.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    return out


def tiny_model_dir(path, tok) -> str:
    """A random-init 2-layer GPT-2 over the hand-built tokenizer's 20 tokens."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    save_hf(model, tok, str(path))
    return str(path)


def write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def sft_examples(tok, rows, name, tmp_path, max_length=100, turns="all"):
    records, _ = format_records(load_sft(write(tmp_path / "sft.jsonl", rows)), name, tok)
    return records, encode_sft(tok, records, name, max_length, None, turns)


def loss_positions(examples) -> list[list[int]]:
    mask = pad(examples, 0)["completion_mask"]
    return [torch.nonzero(row).flatten().tolist() for row in mask]


def test_hh_mask_covers_exactly_the_assistant_replies(tmp_path):
    """hh renders the two exchanges as
        0 \\n\\n  1 Human  2 :  3 ' Hi'  4 ?  5 \\n\\n  6 Assistant  7 :  8 ' Hello'  9 .
        10 \\n\\n  11 Human  12 :  13 ' Name'  14 ?  15 \\n\\n  16 Assistant  17 :  | 18 ' Bob'  19 .  20 EOS
    so the loss falls on 8, 9 (the first reply) and 18, 19, 20 (the final reply and EOS): never a Human turn,
    never an "\\n\\nAssistant:" header."""
    tok = hand_tokenizer()
    [r], [ex] = sft_examples(tok, [{"messages": CONVERSATION}], "hh", tmp_path)
    assert r.prompt == "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Name?\n\nAssistant:"
    assert ex == ([1, 2, 5, 6, 10, 1, 3, 5, 7, 11, 1, 2, 5, 8, 10, 1, 3, 5], [9, 11, 0],
                  [0] * 8 + [1, 1] + [0] * 8)
    assert loss_positions([ex]) == [[8, 9, 18, 19, 20]]
    # data.assistant_turns=last: the first reply is prompt, as before this switch existed
    assert loss_positions(sft_examples(tok, [{"messages": CONVERSATION}], "hh", tmp_path, turns="last")[1]) \
        == [[18, 19, 20]]
    # truncation keeps the prompt's end (its last 12 tokens here), and the mask with it
    assert loss_positions(sft_examples(tok, [{"messages": CONVERSATION}], "hh", tmp_path, max_length=15)[1]) \
        == [[2, 3, 12, 13, 14]]
    # one exchange: exactly the single-turn example (no mask over the prompt); a system turn never has loss
    one = sft_examples(tok, [{"messages": [S("Be brief."), U("Hi?"), A("Hello.")]}], "hh", tmp_path)[1]
    assert one == [([1, 4, 5, 19, 18, 11, 1, 2, 5, 6, 10, 1, 3, 5], [7, 11, 0])]


def test_plain_format_marks_the_replies_among_the_joined_contents(tmp_path):
    """plain (completions as written): "Hi?\\nHello.\\nName?" + " Bob." ->
        0 Hi 1 ? 2 \\n 3 Hello 4 . 5 \\n 6 Name 7 ? | 8 ' Bob' 9 . 10 EOS"""
    tok = hand_tokenizer()
    [r], [ex] = sft_examples(tok, [{"messages": CONVERSATION}], "plain", tmp_path)
    assert (r.prompt, r.completion) == ("Hi?\nHello.\nName?", " Bob.")
    assert loss_positions([ex]) == [[3, 4, 8, 9, 10]]


@pytest.mark.parametrize("template", [TEMPLATE, GENERATION])
def test_chat_template_spans_with_and_without_generation_blocks(tmp_path, template):
    """Token by token (tokens 20..23 are <|system|> <|user|> <|assistant|> <|end|>):
        0 <|system|> 1 Be 2 ' brief' 3 . 4 <|end|> 5 \\n 6 <|user|> 7 Hi 8 ? 9 <|end|> 10 \\n 11 <|assistant|>
        12 Hello 13 . 14 <|end|> 15 \\n 16 <|user|> 17 Name 18 ? 19 <|end|> 20 \\n 21 <|assistant|>
        | 22 Bob 23 . 24 <|end|> 25 \\n 26 EOS
    The first reply is its content and the end-of-turn marker the template writes after it (12..15), from
    transformers' assistant mask with {% generation %} and from the turn-by-turn renders without."""
    tok = hand_tokenizer(chat_tokens=True)
    tok.chat_template = template
    assert has_generation_blocks(tok) == (template == GENERATION)
    [r], [ex] = sft_examples(tok, [{"messages": [S("Be brief."), *CONVERSATION]}], "tokenizer", tmp_path)
    assert r.completion == "Bob.<|end|>\n"
    assert ex[0] == [20, 17, 18, 11, 23, 16, 21, 12, 10, 23, 16, 22, 13, 11, 23, 16, 21, 14, 10, 23, 16, 22]
    assert loss_positions([ex]) == [[12, 13, 14, 15, 22, 23, 24, 25, 26]]


def test_generation_blocks_decide_the_span(tmp_path):
    """A template whose {% generation %} block holds the content only: the mask is what it marks, so the
    generation path really reads the template's blocks. Without a system turn the tokens are
        0 <|user|> 1 Hi 2 ? 3 <|end|> 4 \n 5 <|assistant|> 6 Hello 7 . 8 <|end|> 9 \n 10 <|user|> ...
        15 <|assistant|> | 16 Bob 17 . 18 <|end|> 19 \n 20 EOS"""
    tok = hand_tokenizer(chat_tokens=True)
    tok.chat_template = CONTENT_ONLY
    assert loss_positions(sft_examples(tok, [{"messages": CONVERSATION}], "tokenizer", tmp_path)[1]) \
        == [[6, 7, 16, 17, 18, 19, 20]]


def test_a_token_across_a_turn_edge_is_an_error_not_a_shifted_mask(tmp_path):
    """A template that glues turns together ("Hi" + "Hello" + "Name" is one unknown word for this tokenizer):
    no token boundary at the reply's edges, so the run stops with a line naming the record and the way out."""
    tok = hand_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rows = [{"messages": [U("Hi"), A("Hello"), U("Name"), A("Bob")]}]
    with pytest.raises(DataError) as info:
        sft_examples(tok, rows, "tokenizer", tmp_path)
    message = str(info.value)
    assert message.startswith("the training data, record 1: tokenising its prompt up to the edge of an assistant")
    assert "data.assistant_turns=last" in message and "\n" not in message
    assert loss_positions(sft_examples(tok, rows, "tokenizer", tmp_path, turns="last")[1]) == [[1, 2]]


def test_the_sft_command_stops_on_a_misaligned_turn_with_one_line(tmp_path, capsys):
    tok = hand_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model_dir = tiny_model_dir(tmp_path / "model", tok)
    data = write(tmp_path / "chat.jsonl", [{"messages": [U("Hi"), A("Hello"), U("Name"), A("Bob")]}])
    args = ["sft", f"out_dir={tmp_path / 'sft'}", f"model.path={model_dir}", f"data.train_file={data}",
            "train.max_steps=1", "train.batch_size=1", "train.progress=false", "train.threads=1", "eval.n_prompts=0"]
    assert main(args) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: the training data, record 1: tokenising its prompt up to the edge")
    assert main([*args, "data.assistant_turns=last", f"out_dir={tmp_path / 'sft-last'}"]) == 0


def test_a_template_that_rewrites_earlier_turns_is_an_error(tmp_path):
    """A template that writes the last assistant turn differently from earlier ones (as reasoning templates
    drop earlier thinking): the reply's text is not where the whole prompt has it."""
    tok = hand_tokenizer(chat_tokens=True)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                         "{% if loop.last and m['role'] == 'assistant' %}!{% endif %}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(DataError, match="record 1: the model's chat template renders the conversation up to "
                                        "assistant turn 2 as .* which does not begin the whole prompt"):
        sft_examples(tok, [{"messages": CONVERSATION}], "tokenizer", tmp_path)


@pytest.mark.parametrize("turns, positions", [("all", [8, 9, 18, 19, 20]), ("last", [18, 19, 20])])
def test_sft_loss_is_the_mean_nll_over_the_assistant_tokens(tmp_path, turns, positions):
    """The first step's logged loss (weights as loaded, fp32) against
        loss = -1/|M| sum_{t in M} log softmax(logits[t-1])[ids[t]]
    over M = the positions of test_hh_mask_covers_exactly_the_assistant_replies, from a plain forward pass."""
    model_dir = tiny_model_dir(tmp_path / "model", hand_tokenizer())
    data = write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    sft.run_sft(load_config(SFTConfig, None, [
        f"out_dir={tmp_path / 'sft'}", f"model.path={model_dir}", f"data.train_file={data}",
        f"data.assistant_turns={turns}", "train.max_steps=1", "train.batch_size=1", "train.precision=fp32",
        "train.prompt_loss_weight=0", "train.log_every=1", "train.progress=false", "train.threads=1",
        "eval.n_prompts=0"]))
    [row] = [json.loads(x) for x in open(tmp_path / "sft" / "metrics.jsonl") if json.loads(x).get("step") == 1]
    ids = torch.tensor([[1, 2, 5, 6, 10, 1, 3, 5, 7, 11, 1, 2, 5, 8, 10, 1, 3, 5, 9, 11, 0]])
    model = load_causal_lm(model_dir, dtype=torch.float32, fused_gelu=True).eval()  # as SFT loads it
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].double(), -1)  # (T, V)
    hand = -sum(logps[t - 1, ids[0, t]] for t in positions) / len(positions)
    assert row["loss"] == pytest.approx(float(hand), abs=2e-6)


# ------------------------------------------------------------------ other stages: the final reply, given the rest

def test_preference_kto_and_prompt_rows_take_the_final_reply_given_the_conversation(tmp_path):
    """A pair of whole conversations, a binary row and a prompt row: the prompt is every turn before the final
    reply, in the run's template, the same text SFT's prompt is for that conversation."""
    tok = hand_tokenizer(chat_tokens=True)
    tok.chat_template = TEMPLATE
    context = CONVERSATION[:-1]
    pair = load_preferences(write(tmp_path / "p.jsonl", [{"chosen": CONVERSATION, "rejected": [*context, A("Hi.")]}]))
    binary = load_binary(write(tmp_path / "b.jsonl", [{"prompt": context, "completion": "Bob.", "label": True}]))
    prompt = load_prompts(write(tmp_path / "q.jsonl", [{"messages": context}]))
    sft_record = load_sft(write(tmp_path / "s.jsonl", [{"messages": CONVERSATION}]))
    for name, reply in (("hh", lambda t: " " + t), ("tokenizer", lambda t: t + "<|end|>\n")):
        expected = render_turns(context, name, tok)
        [p], _ = format_records(pair, name, tok)
        [b], _ = format_records(binary, name, tok)
        [q], _ = format_records(prompt, name, tok)
        [s], _ = format_records(sft_record, name, tok)
        assert p.prompt == b.prompt == q.prompt == s.prompt == expected
        assert (p.chosen, p.rejected, b.completion) == (reply("Bob."), reply("Hi."), reply("Bob."))
    assert expected == "<|user|>Hi?<|end|>\n<|assistant|>Hello.<|end|>\n<|user|>Name?<|end|>\n<|assistant|>"


# ------------------------------------------------------------------ end to end: SFT -> DPO -> online prompts -> serve

def chat_rows(n: int = 24) -> tuple[list[dict], list[dict]]:
    """Two-exchange arithmetic chats (sft rows) and pairs of them whose final replies differ."""
    sft_rows, pairs = [], []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        context = [S("Answer with a number."), U(f"What is {a} plus {b}?"), A(f"{a + b}."),
                   U("And times two?")]
        sft_rows.append({"messages": [*context, A(f"{2 * (a + b)}.")]})
        pairs.append({"chosen": [*context, A(f"{2 * (a + b)}.")], "rejected": [*context, A(f"{a + b + 2}.")]})
    return sft_rows, pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SFT (gpt2-tiny from random init, 4 steps) then DPO (3 steps) on multi-turn chats, both by the CLI;
    the prompts DPO encoded are recorded."""
    from tinyrlhf.train import preference
    root = tmp_path_factory.mktemp("conversations")
    sft_rows, pairs = chat_rows()
    write(root / "chat.jsonl", sft_rows)
    # both stages read by data.dataset= (issue 24: "SFT -> DPO on a multi-turn dataset read from a local
    # directory"): SFT from a save_to_disk directory, DPO from a directory of parquet files
    import datasets
    datasets.Dataset.from_list(sft_rows).save_to_disk(str(root / "chat_ds"))
    (root / "pairs_pq").mkdir()
    datasets.Dataset.from_list(pairs).to_parquet(str(root / "pairs_pq" / "train.parquet"))
    common = ["train.batch_size=4", "train.warmup_steps=1", "train.progress=false", "train.threads=1",
              "eval.n_prompts=0", "train.log_every=1"]
    seen, examples = [], []
    real_groups, real_sft = preference.encode_groups, sft.encode_sft
    mp = pytest.MonkeyPatch()
    mp.setattr(sft, "encode_sft", lambda tok, *a, **k: examples.append((tok, real_sft(tok, *a, **k))) or
               examples[-1][1])
    mp.setattr(preference, "encode_groups", lambda tok, p, c, *a, **k: seen.append((list(p), list(c))) or
               real_groups(tok, p, c, *a, **k))
    try:
        assert main(["sft", f"out_dir={root / 'sft'}", "model.tokenizer_vocab=300", f"data.dataset={root / 'chat_ds'}",
                     "train.max_steps=4", *common]) == 0
        assert main(["dpo", f"out_dir={root / 'dpo'}", f"model.path={root / 'sft' / 'final'}",
                     f"data.dataset={root / 'pairs_pq'}", f"ref_cache_dir={root / 'cache'}", "train.max_steps=3",
                     *common]) == 0
    finally:
        mp.undo()
    return root, sft_rows, examples[0], seen


def test_sft_then_dpo_on_multi_turn_data(trained):
    root, sft_rows, sft_tokens, seen = trained
    summary = json.load(open(root / "dpo" / "summary.json"))
    assert summary["finished"] and summary["steps"] == 3
    for stage in ("sft", "dpo"):  # the template the model was trained with travels in final/
        assert load_tokenizer(str(root / stage / "final")).chat_template == HH_JINJA
    # DPO's prompts are the whole conversations before the final reply, as SFT rendered them
    sft_prompts = [r.prompt for r in load_sft(str(root / "chat.jsonl"))]
    assert seen[0][0] == sft_prompts
    assert seen[0][0][0] == ("\n\nSystem: Answer with a number.\n\nHuman: What is 1 plus 2?\n\nAssistant: 3."
                             "\n\nHuman: And times two?\n\nAssistant:")
    assert seen[0][1][0] == [" 6.", " 5."]
    # SFT (a byte-level BPE trained on the data) put loss on the first reply inside each prompt: its tokens
    # decode to exactly that reply
    tok, sft_examples_ = sft_tokens
    assert len(sft_examples_) == len(sft_rows)
    for (p, c, prompt_loss), row in zip(sft_examples_, sft_rows):
        first_reply = row["messages"][2]["content"]
        assert tok.decode([t for t, m in zip(p, prompt_loss) if m]) == " " + first_reply
        assert tok.decode(c) == " " + row["messages"][-1]["content"] + "<|endoftext|>"


def test_online_rl_prompts_from_a_conversation_use_the_same_template(trained, tmp_path, monkeypatch):
    """GRPO's training prompts (read from the chat file, in the SFT model's template) up to the point where
    sampling would size itself: the whole conversation before the final reply, as SFT rendered it."""
    from tinyrlhf.train import online
    root, sft_rows, _, _ = trained
    captured = []

    class Stop(Exception):
        pass

    def stop(cfg, tokenizer, records, context):
        captured.extend(r.prompt for r in records)
        raise Stop
    monkeypatch.setattr(online, "sized_sampling", stop)
    cfg = load_config(GroupConfig, None, [f"out_dir={tmp_path / 'grpo'}", f"model.path={root / 'sft' / 'final'}",
                                          f"data.train_file={root / 'chat.jsonl'}", "train.threads=1",
                                          "train.progress=false", f"reward={root / 'sft' / 'final'}"])
    with pytest.raises(Stop):
        online.open_online(cfg)
    assert captured == [r.prompt for r in load_sft(str(root / "chat.jsonl"))]


@pytest.mark.usefixtures("one_thread")
def test_serve_renders_a_conversation_as_training_did(trained, monkeypatch):
    """/v1/chat/completions on the DPO model: the prompt the server renders for a conversation is the string
    SFT and DPO trained on for it, and the model answers."""
    from tinyrlhf.serve import validate
    root, sft_rows, _, _ = trained
    rendered = []
    real = validate.render_chat
    monkeypatch.setattr(validate, "render_chat", lambda tok, msgs: rendered.append(real(tok, msgs)) or rendered[-1])
    [record] = load_sft(write(root / "one.jsonl", sft_rows[:1]))
    app = make_app({"dpo": str(root / "dpo" / "final")})
    with running(app) as url:
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "dpo", "messages": sft_rows[0]["messages"][:-1], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert rendered == [record.prompt]
    assert r.json()["usage"]["prompt_tokens"] == len(load_tokenizer(str(root / "dpo" / "final"))(
        record.prompt, add_special_tokens=False)["input_ids"])
