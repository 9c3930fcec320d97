"""`tinyrlhf serve` over real HTTP: a uvicorn server on 127.0.0.1 serving two tiny models, checked with
httpx and the official `openai` client: response shapes, streaming, seeds, greedy output against
transformers' own `generate`, log-probs against a separate forward pass, n, stop, usage and /metrics."""
from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from serve_util import html_model_dir, make_app, running, tiny_model_dir
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.models import load_tokenizer
from tinyrlhf.serve.loader import load_causal_lm

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
PROMPTS = ["- Cal(m): Ann(f), Bob(m)\nQ: siblings of Cal?\nA:", "hello", "the quick brown fox jumps over the"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    paths = {"tiny": tiny_model_dir(root / "tiny"), "html": html_model_dir(root / "html"),
             "templated": tiny_model_dir(root / "templated")}
    tok = load_tokenizer(paths["templated"])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(paths["templated"])
    app = make_app(paths, max_batch=8, queue_size=8)
    with running(app) as url:
        yield url, app, paths


def post(url, path, **body):
    return httpx.post(url + path, json=body, timeout=60)


def sse(url, path, **body) -> list[dict | str]:
    """The SSE events of a streamed request: decoded JSON chunks, and the final '[DONE]'."""
    events = []
    with httpx.stream("POST", url + path, json=body | {"stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_health_and_page(server):
    url, _, _ = server
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny", "html", "templated"]
    assert [m["chat_template"] for m in models["data"]][1:] == [models["data"][0]["chat_template"], "tokenizer"]
    card = httpx.get(url + "/v1/models/tiny").json()
    assert card["object"] == "model" and card["max_model_len"] == 256 and card["quantize"] == "none"
    assert httpx.get(url + "/health").json()["status"] == "ok"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "/static/chat.js" in page.text
    assert "textContent" in httpx.get(url + "/static/chat.js").text


def test_greedy_matches_transformers_generate_while_batched(server):
    """Prompts of different lengths arriving together share forward passes (left-padded, joined cache); each
    greedy answer must equal transformers' generate on that prompt alone."""
    url, _, paths = server
    tok, model = load_tokenizer(paths["tiny"]), load_causal_lm(paths["tiny"]).eval()
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, url, "/v1/completions", model="tiny", prompt=p, max_tokens=6 + 3 * i,
                               temperature=0, ignore_eos=True) for i, p in enumerate(PROMPTS * 2)]
        answers = [f.result().json() for f in futures]
    for i, (p, a) in enumerate(zip(PROMPTS * 2, answers)):
        ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ref = model.generate(ids, max_new_tokens=6 + 3 * i, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert a["choices"][0]["text"] == tok.decode(ref, skip_special_tokens=True)
        assert a["usage"] == {"prompt_tokens": ids.shape[1], "completion_tokens": 6 + 3 * i,
                              "total_tokens": ids.shape[1] + 6 + 3 * i}
        assert a["choices"][0]["finish_reason"] == "length" and a["object"] == "text_completion"


def test_logprobs_equal_a_separate_forward(server):
    """Returned log-probs (sampled at T=0.8) equal log-softmax(logits / 0.8) of a forward pass over the prompt
    and the generated tokens, recomputed here; top_logprobs hold the k most likely tokens."""
    url, _, paths = server
    tok, model = load_tokenizer(paths["tiny"]), load_causal_lm(paths["tiny"]).eval()
    prompt_ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    a = post(url, "/v1/completions", model="tiny", prompt=prompt_ids, max_tokens=8, temperature=0.8, seed=3,
             logprobs=3, ignore_eos=True, return_tokens_as_token_ids=True).json()
    lp = a["choices"][0]["logprobs"]
    gen = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
    assert tok.decode(gen, skip_special_tokens=True) == a["choices"][0]["text"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + gen])).logits[0, len(prompt_ids) - 1:-1] / 0.8
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(gen).unsqueeze(-1)).squeeze(-1)
    assert lp["token_logprobs"] == pytest.approx(expected.tolist(), abs=1e-4)
    for pos, top in enumerate(lp["top_logprobs"]):
        assert len(top) == 3
        best = logits[pos].log_softmax(-1).topk(3).values.tolist()
        assert sorted(top.values(), reverse=True) == pytest.approx(best, abs=1e-4)
    assert lp["text_offset"] == [sum(len(tok.decode([t])) for t in gen[:i]) for i in range(len(gen))]


def test_same_seed_same_text_alone_and_batched(server):
    url, _, _ = server
    body = dict(model="tiny", prompt=PROMPTS[0], max_tokens=20, temperature=1.0, seed=1234, ignore_eos=True)
    alone = post(url, "/v1/completions", **body).json()["choices"][0]["text"]
    with cf.ThreadPoolExecutor(8) as pool:
        others = [pool.submit(post, url, "/v1/completions", model="tiny", prompt=p, max_tokens=5 + i, seed=i)
                  for i, p in enumerate(PROMPTS * 2)]
        batched = pool.submit(post, url, "/v1/completions", **body)
        [f.result() for f in others]
        assert batched.result().json()["choices"][0]["text"] == alone
    other_seed = post(url, "/v1/completions", **(body | {"seed": 99})).json()["choices"][0]["text"]
    assert other_seed != alone


def test_n_choices_and_stop(server):
    url, _, _ = server
    a = post(url, "/v1/completions", model="tiny", prompt=PROMPTS[1], max_tokens=12, n=3, seed=5,
             ignore_eos=True).json()
    texts = [c["text"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2] and len(set(texts)) == 3
    assert a["usage"]["completion_tokens"] == 36
    # stop on a piece of the first choice's text: the answer ends right before it (stop string excluded)
    full = texts[0]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = post(url, "/v1/completions", model="tiny", prompt=PROMPTS[1], max_tokens=12, n=3, seed=5,
               ignore_eos=True, stop=[stop, "\u2603never"]).json()["choices"][0]
    assert cut["text"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"


def test_streamed_completion_equals_plain_and_ends_with_done(server):
    url, _, _ = server
    body = dict(model="tiny", prompt=PROMPTS[2], max_tokens=10, seed=7, ignore_eos=True)
    plain = post(url, "/v1/completions", **body).json()
    events = sse(url, "/v1/completions", **body, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]


def test_streamed_chat_chunks(server):
    url, _, _ = server
    body = dict(model="tiny", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=6, seed=2,
                ignore_eos=True)
    plain = post(url, "/v1/chat/completions", **body).json()
    assert plain["object"] == "chat.completion"
    assert plain["choices"][0]["message"]["role"] == "assistant"
    events = sse(url, "/v1/chat/completions", **body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"][0]["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    # no chat template: the single user message is the prompt as typed (the plain template)
    completion = post(url, "/v1/completions", model="tiny", prompt=PROMPTS[0], max_tokens=6, seed=2,
                      ignore_eos=True).json()
    assert completion["choices"][0]["text"] == text


def test_chat_uses_the_tokenizers_chat_template(server):
    url, _, _ = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    chat = post(url, "/v1/chat/completions", model="templated", messages=messages, max_tokens=6, seed=4,
                ignore_eos=True).json()
    rendered = "<system> Be brief.\n<user> hello\n<assistant>"
    completion = post(url, "/v1/completions", model="templated", prompt=rendered, max_tokens=6, seed=4,
                      ignore_eos=True).json()
    assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == completion["usage"]["prompt_tokens"]


def test_openai_client_unchanged(server):
    openai = pytest.importorskip("openai")  # a test dependency ([test] extra): always installed by make setup
    url, _, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny", "html", "templated"]
    c = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=5, seed=11, logprobs=2)
    assert c.usage.completion_tokens <= 5 and c.choices[0].logprobs is not None
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="tiny", prompt=PROMPTS[1], max_tokens=5, seed=11, stream=True) if ch.choices)
    assert streamed == c.choices[0].text
    chat = client.chat.completions.create(model="html", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2, seed=1, logprobs=True, top_logprobs=2)
    assert chat.choices[0].message.content.startswith("<img src=x") and chat.choices[0].finish_reason == "length"
    assert len(chat.choices[0].logprobs.content) == 2 and len(chat.choices[0].logprobs.content[0].top_logprobs) == 2
    parts = [ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="html", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True) if ch.choices]
    assert "".join(parts) == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_metrics_count_requests_tokens_and_latency(server):
    url, app, _ = server
    before = _samples(httpx.get(url + "/metrics").text)
    answers = [post(url, "/v1/completions", model="tiny", prompt=p, max_tokens=4, ignore_eos=True).json()
               for p in PROMPTS]
    post(url, "/v1/completions", model="nope", prompt="x")
    after = _samples(httpx.get(url + "/metrics").text)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("tinyrlhf_requests_total", model="tiny", endpoint="completions", status="200") == 3
    assert delta("tinyrlhf_requests_total", model="(unknown)", endpoint="completions", status="404") == 1
    assert delta("tinyrlhf_generation_tokens_total", model="tiny") == sum(a["usage"]["completion_tokens"]
                                                                        for a in answers)
    assert delta("tinyrlhf_prompt_tokens_total", model="tiny") == sum(a["usage"]["prompt_tokens"] for a in answers)
    assert delta("tinyrlhf_request_latency_seconds_count", model="tiny", endpoint="completions") == 3
    assert delta("tinyrlhf_time_to_first_token_seconds_count", model="tiny") == 3
    assert ("tinyrlhf_queue_depth", (("model", "tiny"),)) in after
    assert after[("tinyrlhf_generation_tokens_per_second", (("model", "tiny"),))] > 0


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
