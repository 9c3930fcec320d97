"""Judges: which of two completions for a prompt is better? 1 = A, 0.5 = tie, 0 = B.

Every judge has `judge_many(prompts, a_list, b_list) -> list[float]` and a `name` for the results.
`GoldJudge` uses the task's gold reward, `ScoreJudge` any batched scorer (a reward model), and
`ChatJudge` an OpenAI-compatible chat endpoint asked with both orders of each pair so that a judge
that prefers whichever response comes first gives a tie, not a win.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..errors import TinyRLHFError


class JudgeError(TinyRLHFError):
    """The judge could not give a verdict: names the endpoint and what went wrong, on one line."""


def _compare(score_a: float, score_b: float) -> float:
    return 1.0 if score_a > score_b else 0.0 if score_a < score_b else 0.5


def _check_lengths(prompts, a_list, b_list) -> None:
    if not len(prompts) == len(a_list) == len(b_list):
        raise ValueError(f"judge_many: {len(prompts)} prompts, {len(a_list)} A and {len(b_list)} B completions")


class GoldJudge:
    """The task's gold reward decides; exactly equal rewards are a tie."""

    name = "gold"

    def __init__(self, task):
        self.task = task

    def judge_many(self, prompts: Sequence[str], a_list: Sequence[str], b_list: Sequence[str]) -> list[float]:
        _check_lengths(prompts, a_list, b_list)
        return [_compare(self.task.gold_reward(p, a), self.task.gold_reward(p, b))
                for p, a, b in zip(prompts, a_list, b_list)]


class ScoreJudge:
    """Any batched scorer `score_fn(prompts, completions) -> scores` (e.g. a reward model) decides;
    equal scores are a tie. Two calls per `judge_many`, one for the A side and one for the B side."""

    def __init__(self, score_fn: Callable[[list[str], list[str]], Sequence[float]], name: str = "reward_model"):
        self.score_fn, self.name = score_fn, name

    def judge_many(self, prompts: Sequence[str], a_list: Sequence[str], b_list: Sequence[str]) -> list[float]:
        _check_lengths(prompts, a_list, b_list)
        scores_a = [float(s) for s in self.score_fn(list(prompts), list(a_list))]
        scores_b = [float(s) for s in self.score_fn(list(prompts), list(b_list))]
        return [_compare(sa, sb) for sa, sb in zip(scores_a, scores_b)]


SYSTEM_PROMPT = ("You are an impartial judge. You compare two responses to the same prompt and say "
                 "which one is better: more correct, more helpful, better written.")
USER_TEMPLATE = ("[Prompt]\n{prompt}\n[End of prompt]\n\n[Response A]\n{a}\n[End of response A]\n\n"
                 "[Response B]\n{b}\n[End of response B]\n\n"
                 "Which response is better? Answer with exactly one word: A, B, or tie.")

# Verdicts we accept, tried in order. A/B are matched case-sensitively outside a bare reply, so that
# the article "a" in "the answer is a bit long" is not read as a verdict.
_V = r"((?-i:A|B)|tie)"
_VERDICT_PATTERNS = [re.compile(r"^\W*(?:response\s+)?(A|B|tie)\W*$", re.I),  # "A", "b.", "Response B", "Tie"
                     re.compile(r"\[\[\s*" + _V + r"\s*\]\]", re.I),  # "[[A]]" (MT-Bench style)
                     re.compile(r"\b(?:answer|verdict|winner|better one)\s*(?:is|:)\s*\**\s*(?:response\s+)?"
                                + _V + r"\b", re.I),  # "Answer: B", "the winner is response A"
                     re.compile(r"\bresponse\s+" + _V + r"\s+is\s+better", re.I),  # "Response A is better"
                     re.compile(r"\b(tie)\b", re.I),  # "It's a tie."
                     re.compile(r"^\W*(A|B)\b")]  # "A. It names both parents."


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply, or None when the reply says none of them clearly."""
    for pattern in _VERDICT_PATTERNS:
        match = pattern.search(text.strip())
        if match:
            word = match.group(1)
            return "tie" if word.lower() == "tie" else word.upper()
    return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _endpoint(base_url: str) -> str:
    """Accept 'http://host:port', '.../v1' or the full '.../v1/chat/completions'."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class ChatJudge:
    """An OpenAI-compatible `/v1/chat/completions` endpoint as the judge (standard library only).

    Each pair is asked twice, as (A, B) and as (B, A). When both answers name the same completion it
    wins; any other combination (disagreement, which is what position bias produces, or a tie in
    either order) is 0.5. Connection errors, timeouts, HTTP 5xx and 429 are retried `retries` more
    times with exponential backoff (backoff, 2*backoff, ...); other HTTP errors fail at once. A reply
    without a clear verdict raises JudgeError, or counts as a tie with `on_unparsable="tie"`.

    base_url falls back to $TINYRLHF_JUDGE_URL, api_key to $OPENAI_API_KEY (optional: local servers
    often need none). The key is sent as a Bearer token and never appears in error messages."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model: str = "gpt-4o-mini",
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.5, workers: int = 4,
                 on_unparsable: str = "error", max_tokens: int = 16):
        base_url = base_url or os.environ.get("TINYRLHF_JUDGE_URL")
        if not base_url:
            raise JudgeError("no judge endpoint: pass a URL or set TINYRLHF_JUDGE_URL")
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise JudgeError(f"judge endpoint {base_url!r} is not an http(s) URL")
        if on_unparsable not in ("error", "tie"):
            raise ValueError(f"on_unparsable must be 'error' or 'tie', got {on_unparsable!r}")
        self.url = _endpoint(base_url)
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.workers, self.on_unparsable, self.max_tokens = workers, on_unparsable, max_tokens
        self.name = f"chat:{model}"
        host = urllib.parse.urlsplit(self.url).hostname
        # a proxy from the environment must not swallow requests to a judge on this machine
        handlers = [urllib.request.ProxyHandler({})] if host in ("localhost", "127.0.0.1", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)

    def settings(self) -> dict:
        """What to record next to the results (no key)."""
        return {"judge": self.name, "url": self.url, "model": self.model, "timeout": self.timeout,
                "retries": self.retries, "on_unparsable": self.on_unparsable, "both_orders": True}

    # -- one request ------------------------------------------------------------------------------
    def _post(self, payload: dict) -> dict:
        """POST with retries; the decoded JSON body, or JudgeError."""
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        tries, problem = self.retries + 1, ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as err:
                detail = _one_line(err.read().decode("utf-8", "replace"))
                problem = f"answered HTTP {err.code}: {detail or err.reason}"
                if err.code == 429 or err.code >= 500:
                    continue
                hint = {401: " (check the API key, OPENAI_API_KEY)", 403: " (check the API key, OPENAI_API_KEY)",
                        404: " (check the URL)"}.get(err.code, "")
                raise JudgeError(f"judge endpoint {self.url} {problem}{hint}") from None
            except (TimeoutError, socket.timeout):
                problem = f"timed out after {self.timeout:g} s"
                continue
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    problem = f"timed out after {self.timeout:g} s"
                else:
                    problem = f"is unreachable ({_one_line(str(err.reason), 120)})"
                continue
            except http.client.HTTPException as err:  # not HTTP at all, or cut off mid-reply
                problem = f"sent a malformed HTTP reply ({type(err).__name__})"
                continue
            except (ConnectionError, OSError) as err:  # e.g. the server closed the connection mid-reply
                problem = f"is unreachable ({_one_line(str(err), 120)})"
                continue
            try:
                return json.loads(body)
            except ValueError:
                raise JudgeError(f"judge endpoint {self.url} sent a reply that is not JSON: "
                                 f"{_one_line(body.decode('utf-8', 'replace'))!r}") from None
        raise JudgeError(f"judge endpoint {self.url} {problem} (tried {tries} times)")

    def ask(self, prompt: str, first: str, second: str) -> str:
        """The endpoint's verdict on one ordered pair: 'A' (first), 'B' (second) or 'tie'."""
        reply = self._post({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                         {"role": "user", "content": USER_TEMPLATE.format(
                                             prompt=prompt, a=first, b=second)}]})
        try:
            content = reply["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url} sent JSON that is not a chat completion "
                             f"(no choices[0].message.content): {_one_line(json.dumps(reply))!r}") from None
        verdict = parse_verdict(content)
        if verdict is None:
            if self.on_unparsable == "tie":
                return "tie"
            raise JudgeError(f"judge endpoint {self.url} gave no verdict (A, B or tie) in its reply "
                             f"{_one_line(content, 120)!r}")
        return verdict

    def judge(self, prompt: str, a: str, b: str) -> float:
        """1 / 0.5 / 0 for a better / tie / b better, from both orders of the pair."""
        forward = self.ask(prompt, a, b)  # 'A' here means a
        backward = self.ask(prompt, b, a)  # 'A' here means b
        if forward == "A" and backward == "B":
            return 1.0
        if forward == "B" and backward == "A":
            return 0.0
        return 0.5

    def judge_many(self, prompts: Sequence[str], a_list: Sequence[str], b_list: Sequence[str]) -> list[float]:
        _check_lengths(prompts, a_list, b_list)
        if self.workers <= 1:
            return [self.judge(p, a, b) for p, a, b in zip(prompts, a_list, b_list)]
        # requests wait on the network, not the CPU: a few in flight at once. On the first error the
        # queued pairs are cancelled, so a dead endpoint fails after one pair's retries, not all of them.
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            futures = [pool.submit(self.judge, p, a, b) for p, a, b in zip(prompts, a_list, b_list)]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
