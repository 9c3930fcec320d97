"""One prompt format per run: the template a model was trained with travels with it and every later stage,
`eval`, `serve` and `label` render prompts with it.

    plain      the prompt as written; chat turns are joined by newlines (what `serve` always sent a model
               without a template)
    hh         hh-rlhf's: "\\n\\nHuman: {user}" / "\\n\\nAssistant: {reply}" / "\\n\\nSystem: {text}" turns, the
               prompt ending in "\\n\\nAssistant:" (records.render_plain; every chat row is read this way)
    tokenizer  a chat template that came with the model's tokenizer (e.g. an instruct model from the hub)

A model trained by tinyrlhf carries its template as its tokenizer's chat template (PLAIN_JINJA or HH_JINJA,
saved with the tokenizer in final/), so transformers' `apply_chat_template` renders it too. A model without
one (a preset, a base model from the hub) takes the format of the first data it is trained on. Data in
another format is rendered in the model's: a plain prompt is one user turn, an hh prompt (or chat
messages) its turns; the completions stay as written (a reply gets its leading space in hh).
"""
from __future__ import annotations

import dataclasses

from .public import parse_hh_turns
from .records import render_plain

# (transformers compiles chat templates with trim_blocks: a newline right after a tag is dropped, so the
# newlines are written as string expressions)
PLAIN_JINJA = "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}{{ m['content'] }}{% endfor %}"
HH_JINJA = ("{% for m in messages %}{{ '\\n\\n' + {'system': 'System', 'developer': 'System', 'user': 'Human', "
            "'assistant': 'Assistant'}"
            "[m['role']] + ': ' + m['content'] }}{% endfor %}{% if add_generation_prompt %}"
            "{{ '\\n\\nAssistant:' }}{% endif %}")
JINJA = {"plain": PLAIN_JINJA, "hh": HH_JINJA}
TEMPLATES = ("plain", "hh", "tokenizer")


def template_of(tokenizer) -> str | None:
    """The template a model's tokenizer carries: plain, hh (tinyrlhf's), tokenizer (its own) or None."""
    text = getattr(tokenizer, "chat_template", None)
    if not text:
        return None
    return next((name for name, jinja in JINJA.items() if text == jinja), "tokenizer")


def set_template(tokenizer, name: str):
    """Give a tokenizer without a chat template tinyrlhf's `name` template (saved with it from then on)."""
    tokenizer.chat_template = JINJA[name]


def turns_of(record) -> list[dict] | None:
    """A record's prompt as chat turns: its messages, or an hh-shaped prompt parsed; None for a plain prompt."""
    meta = record.meta if isinstance(getattr(record, "meta", None), dict) else {}
    if meta.get("messages"):
        return meta["messages"]
    return parse_hh_turns(record.prompt)


def format_of(record) -> str:
    """The format a record is written in: hh (chat turns or an hh-shaped prompt) or plain."""
    return "hh" if turns_of(record) is not None else "plain"


def data_format(records: list) -> str:
    """The format most records of a list are written in (hh on a tie)."""
    hh = sum(format_of(r) == "hh" for r in records)
    return "hh" if records and 2 * hh >= len(records) else "plain"


def render_turns(turns: list[dict], name: str, tokenizer=None) -> str:
    """The prompt for `turns` (the reply to come) in template `name`."""
    if name == "plain":
        return "\n".join(t["content"] for t in turns)
    if name == "hh":
        return render_plain(turns)
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def render_reply(name: str, turns: list[dict], prompt: str, tokenizer, text: str) -> str:
    """A completion `text` of the prompt `prompt` (`turns` rendered in template `name`), as training writes it."""
    if name == "hh":
        return text if text[:1].isspace() else " " + text
    if name == "plain":
        return text
    full = tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": text.strip()}], tokenize=False)
    return full[len(prompt):] if full.startswith(prompt) else text


def render_record(record, name: str, tokenizer=None):
    """`record` with its prompt (and, for hh and a tokenizer's template, its completions) in template `name`."""
    turns = turns_of(record)
    if name != "tokenizer" and format_of(record) == name:
        return record  # already in it: as written, byte for byte
    if turns is None:
        turns = [{"role": "user", "content": record.prompt.strip()}]
    prompt = render_turns(turns, name, tokenizer)
    changes = {"prompt": prompt, "meta": {**record.meta, "messages": turns}}
    for key in ("completion", "chosen", "rejected"):  # a PromptRecord's reference stays plain text
        if isinstance(getattr(record, key, None), str) and getattr(record, key):
            changes[key] = render_reply(name, turns, prompt, tokenizer, getattr(record, key))
    if isinstance(getattr(record, "completions", None), tuple):
        changes["completions"] = tuple(render_reply(name, turns, prompt, tokenizer, c) for c in record.completions)
    return dataclasses.replace(record, **changes)


def render_prompt(text: str, name: str | None, tokenizer=None) -> str:
    """A prompt string (plain or hh-shaped) in template `name` (None: as written)."""
    if name is None:
        return text
    turns = parse_hh_turns(text)
    if name != "tokenizer" and ("hh" if turns is not None else "plain") == name:
        return text
    if turns is None:
        turns = [{"role": "user", "content": text.strip()}]
    return render_turns(turns, name, tokenizer)


def preview(text: str, limit: int = 100) -> str:
    """A prompt in a message: its repr, the middle cut out past `limit` characters (the end shows the format)."""
    if len(text) > limit:
        text = text[:limit * 2 // 3] + " ... " + text[-limit // 3:]
    return repr(text)


def format_records(records: list, name: str, tokenizer=None) -> tuple[list, tuple[str, str] | None]:
    """(records in template `name`, (a prompt as written, the same prompt rendered) for the first record
    whose prompt changed, else None)."""
    out, example = [], None
    for r in records:
        new = render_record(r, name, tokenizer)
        if example is None and new.prompt != r.prompt:
            example = (r.prompt, new.prompt)
        out.append(new)
    return out, example
