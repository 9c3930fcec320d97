"""Prompts as token ids: completion prompts as given, chat messages through the model's prompt template.

A model tinyrlhf trained carries the prompt format it was trained on as its tokenizer's chat template
(data/templates.py): PLAIN (a built-in task's bare question, or your own plain prompts: the messages'
contents joined by newlines, no role markers, so a single user message reaches the model exactly as typed)
or HH ("\n\nHuman: ..." turns ending in "\n\nAssistant:", for a model trained on hh-rlhf or chat data).
Any other chat template (an instruct model's) is applied as it is, and a model with none gets PLAIN.
`/v1/completions` sends its prompt as given, as OpenAI's does.
"""
from __future__ import annotations

from ..data.templates import render_turns, template_of
from .protocol import APIError, ChatMessage

PLAIN_TEMPLATE = "plain: message contents joined by newlines, no role markers"
HH_TEMPLATE = "hh: '\n\nHuman: ...' and '\n\nAssistant: ...' turns, ending in '\n\nAssistant:'"


def template_name(tokenizer) -> str:
    return {None: PLAIN_TEMPLATE, "plain": PLAIN_TEMPLATE, "hh": HH_TEMPLATE}.get(template_of(tokenizer), "tokenizer")


def render_chat(tokenizer, messages: list[ChatMessage]) -> str:
    if not messages:
        raise APIError(400, "'messages': at least one message is required", param="messages", code="invalid_value")
    ours = template_of(tokenizer)
    if ours in ("plain", "hh"):  # tinyrlhf's formats, rendered as training rendered them (a developer turn: system)
        return render_turns([{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                             for m in messages], ours)
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template([{"role": m.role, "content": m.text()} for m in messages],
                                                 tokenize=False, add_generation_prompt=True)
        except Exception as e:  # a template that rejects these messages (jinja raise_exception): the client's fault
            raise APIError(400, f"'messages': the model's chat template rejected them: {e}", param="messages",
                           code="invalid_value") from None
    return "\n".join(m.text() for m in messages)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added; an empty prompt becomes the EOS token, the
    document boundary GPT-2 style models were trained to continue from."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids or [tokenizer.eos_token_id]


def completion_prompts(tokenizer, prompt, vocab_size: int) -> list[list[int]]:
    """OpenAI's `prompt`: a string, a list of strings, a token-id list, or a list of token-id lists."""
    if isinstance(prompt, str):
        return [encode(tokenizer, prompt)]
    if not prompt:
        raise APIError(400, "'prompt': must not be an empty list", param="prompt", code="invalid_value")
    if all(isinstance(p, str) for p in prompt):
        return [encode(tokenizer, p) for p in prompt]
    rows = [prompt] if all(isinstance(t, int) for t in prompt) else prompt
    for row in rows:
        if not row:
            raise APIError(400, "'prompt': a token-id list must not be empty", param="prompt", code="invalid_value")
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise APIError(400, f"'prompt': token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                           param="prompt", code="invalid_value")
    return [list(r) for r in rows]
