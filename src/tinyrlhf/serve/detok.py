"""Incremental detokenisation with stop strings: token ids in, text deltas out.

A byte-level BPE token can end in the middle of a UTF-8 character, and a stop string can arrive split
over several tokens, so text is released only once it is final: a trailing U+FFFD (an incomplete
character) and any tail that could still become a stop string are held back until the next token decides.
The delta texts concatenated equal the final text, which never contains a stop string (OpenAI semantics:
the stop sequence is not returned).
"""
from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""       # text released so far (what the client has)
        self.stopped = False  # a stop string was found: the sequence is finished

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the newly released text (maybe empty)."""
        self.ids.append(token_id)
        full = self._decode()
        if self.stop:
            # a stop string never starts inside released text (its prefixes are held back), so search the rest
            hits = [i for s in self.stop if (i := full.find(s, len(self.text))) >= 0]
            if hits:
                self.stopped = True
                return self._release(full[:min(hits)])
        ready = len(full)
        while ready and full[ready - 1] == "\ufffd":  # an incomplete UTF-8 character: wait for its bytes
            ready -= 1
        hold = ready
        for s in self.stop:  # keep back the longest tail that is a prefix of a stop string
            for k in range(min(len(s) - 1, ready), 0, -1):
                if full[ready - k:ready] == s[:k]:
                    hold = min(hold, ready - k)
                    break
        return self._release(full[:hold])

    def finish(self) -> str:
        """The sequence ended without a stop string: release whatever is held back."""
        return "" if self.stopped else self._release(self._decode())

    def _release(self, upto: str) -> str:
        if len(upto) <= len(self.text):  # never take released text back
            return ""
        delta, self.text = upto[len(self.text):], upto
        return delta
