"""SFT on whole conversations: the loss covers every assistant turn, not only the final reply.

A chat record is a prompt (the turns before the final reply, ending in the template's generation prompt) and
the final reply as its completion. In a multi-turn conversation the prompt holds earlier assistant turns too;
with data.assistant_turns=all (the default) they are training targets as well, as in TRL
(`assistant_only_loss`) and torchtune (only assistant messages unmasked). What carries loss, per assistant turn:
the text the template writes for that reply: its content and the end-of-turn marker the template puts after it
(e.g. "Hello.<|end|>\\n"; hh has none, so " Hello."), never a user or system turn, never a role header
("\\n\\nAssistant:", "<|assistant|>"). The final reply keeps what single-turn SFT gives it: its text and the
EOS token appended after it. Earlier replies get no EOS (the template writes none between turns).

Where each reply is found in the rendered prompt:
    hh         the text between an "\\n\\nAssistant:" header and the next turn's header, trailing whitespace
               left out (so a reply ending in a space cannot merge with the next header's newlines)
    plain      each assistant turn's content among the contents joined by newlines
    tokenizer  with {% generation %} blocks in the chat template: transformers' assistant-token mask;
               without: the template rendered turn by turn, each reply the text between the prompt that asks
               for it (generation prompt included) and the conversation that includes it; the later prompt
               must begin with both, else a DataError (a template that rewrites earlier turns)
The prompt is tokenised as one text (as `serve` tokenises it), and at every reply edge the prompt tokenised up
to the edge must be a prefix of the whole prompt's tokens: a token across an edge would misalign the mask,
so that is a DataError naming the record, never a silent shift.

An example is (prompt_ids, completion_ids) or, with earlier replies, (prompt_ids, completion_ids, prompt_loss)
where prompt_loss is a 0/1 list over prompt_ids; collate.pad turns the triple into one completion_mask row.
"""
from __future__ import annotations

import re
import sys

from ..errors import DataError
from .collate import TruncationStats, encode, truncate
from .templates import preview, render_turns, turns_of

HH_HEADER = re.compile(r"\n\n(Human|Assistant|System):")
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
MODES = ("all", "last")


def has_generation_blocks(tokenizer) -> bool:
    """True if the tokenizer's chat template marks assistant text with {% generation %} blocks."""
    return bool(GENERATION_TAG.search(getattr(tokenizer, "chat_template", None) or ""))


def _hh_spans(prompt: str) -> list[tuple[int, int]]:
    heads = list(HH_HEADER.finditer(prompt))
    spans = []
    for head, nxt in zip(heads, heads[1:]):
        if head.group(1) == "Assistant":
            text = prompt[head.end():nxt.start()]
            spans.append((head.end(), head.end() + len(text.rstrip())))
    return spans


def _plain_spans(prompt: str, turns: list[dict]) -> list[tuple[int, int]]:
    if prompt != "\n".join(t["content"] for t in turns):
        return []  # not rendered from these turns (a plain prompt as written): nothing to mark
    spans, pos = [], 0
    for t in turns:
        if t["role"] == "assistant":
            spans.append((pos, pos + len(t["content"])))
        pos += len(t["content"]) + 1
    return spans


def _template_spans(prompt: str, turns: list[dict], tokenizer, where: str) -> list[tuple[int, int]]:
    spans = []
    for i, t in enumerate(turns):
        if t["role"] != "assistant":
            continue
        try:
            start = render_turns(turns[:i], "tokenizer", tokenizer)
            upto = tokenizer.apply_chat_template(turns[:i + 1], tokenize=False)
        except Exception as e:  # a template that rejects the partial conversation (jinja raise_exception)
            raise DataError(f"{where}: the model's chat template cannot render the conversation up to assistant "
                            f"turn {i + 1} ({e}); set data.assistant_turns=last to train on the final reply only")
        if not (upto.startswith(start) and prompt.startswith(upto)):
            raise DataError(f"{where}: the model's chat template renders the conversation up to assistant turn "
                            f"{i + 1} as {preview(upto)}, which does not begin the whole prompt {preview(prompt)} "
                            "(a template that rewrites earlier turns); set data.assistant_turns=last to train "
                            "on the final reply only")
        spans.append((len(start), len(upto)))
    return spans


def reply_spans(record, name: str, tokenizer=None, where: str = "a record") -> list[tuple[int, int]]:
    """Character spans, in `record.prompt` (rendered in template `name`), of its earlier assistant replies."""
    turns = turns_of(record)
    if not turns or not any(t["role"] == "assistant" for t in turns):
        return []
    if name == "hh":
        spans = _hh_spans(record.prompt)
    elif name == "plain":
        spans = _plain_spans(record.prompt, turns)
    else:
        spans = _template_spans(record.prompt, turns, tokenizer, where)
    return [(a, b) for a, b in spans if b > a]


def _token_mask(tokenizer, prompt: str, prompt_ids: list[int], spans, where: str) -> list[int]:
    """0/1 over prompt_ids: 1 on the tokens of each char span, each edge checked to fall between tokens."""
    edges = sorted({e for span in spans for e in span})
    pieces = tokenizer([prompt[:e] for e in edges], add_special_tokens=False)["input_ids"]
    at = {}
    for e, ids in zip(edges, pieces):
        if prompt_ids[:len(ids)] != ids:
            raise DataError(f"{where}: tokenising its prompt up to the edge of an assistant turn gives tokens "
                            f"that do not begin the whole prompt's (the tokenizer merges text across the edge, "
                            f"at {preview(prompt[max(0, e - 20):e + 20], 60)}), so that turn's loss mask would be "
                            "misaligned; strip whitespace at the ends of turns, or set data.assistant_turns=last "
                            "to train on the final reply only")
        at[e] = len(ids)
    mask = [0] * len(prompt_ids)
    for a, b in spans:
        mask[at[a]:at[b]] = [1] * (at[b] - at[a])
    return mask


def prompt_loss_mask(tokenizer, record, name: str, prompt_ids: list[int], where: str) -> list[int] | None:
    """The 0/1 loss mask over `prompt_ids` (the record's prompt tokenised as one text) marking its earlier
    assistant replies; None when it has none."""
    if name == "tokenizer" and has_generation_blocks(tokenizer) and turns_of(record):
        out = tokenizer.apply_chat_template(turns_of(record), add_generation_prompt=True, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        if list(out["input_ids"]) != list(prompt_ids):
            raise DataError(f"{where}: the chat template's tokens differ from its prompt's "
                            f"{preview(record.prompt)}; set data.assistant_turns=last")
        mask = [int(m) for m in out["assistant_masks"]]
        return mask if any(mask) else None
    spans = reply_spans(record, name, tokenizer, where)
    return _token_mask(tokenizer, record.prompt, prompt_ids, spans, where) if spans else None


def encode_sft(tokenizer, records: list, name: str, max_length: int, stats: TruncationStats | None = None,
               assistant_turns: str = "all", source: str = "the training data") -> list[tuple]:
    """Tokenised SFT examples of `records` (rendered in template `name`): collate.encode's (prompt_ids,
    completion_ids), EOS after the completion, the same truncation; with assistant_turns="all" a record whose
    prompt holds earlier assistant replies gets a third element, their 0/1 loss mask over prompt_ids (cut
    with the prompt when truncation keeps the prompt's end)."""
    if assistant_turns not in MODES:
        raise ValueError(f"assistant_turns must be one of {MODES}, not {assistant_turns!r}")
    full = encode(tokenizer, [r.prompt for r in records], [r.completion for r in records], sys.maxsize)
    out = []
    for n, (r, (p, c)) in enumerate(zip(records, full), start=1):
        mask = None
        if assistant_turns == "all":
            mask = prompt_loss_mask(tokenizer, r, name, p, f"{source}, record {n}")
        new_p, new_c = truncate(p, c, max_length, stats)
        if mask is None:
            out.append((new_p, new_c))
        else:
            out.append((new_p, new_c, mask[len(p) - len(new_p):]))
    return out
