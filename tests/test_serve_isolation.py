"""Batch isolation in the serving engine: one poisoned row among five requests decoded in the same batch fails
its own request (HTTP 500 in the app) and every other request finishes with exactly the text it has when run
alone with the same seed. Poisons reach the engine past every validation: NaN / +inf logits mid-generation,
a detokeniser that raises, a prefill that raises, and a decoding forward that raises (the batch is rebuilt
row by row). Also: tiny temperatures are greedy, and the sampler's last guard against a token id outside
the vocabulary (what temperature 1e-38 used to produce)."""
from __future__ import annotations

import asyncio
import math

import pytest
import torch

from serve_util import tiny_model_dir
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.rollout import sample_token
from tinyrlhf.serve.config import EngineConfig
from tinyrlhf.serve.engine import Engine, Request, SamplingParams
from tinyrlhf.serve.loader import load_served_model
from tinyrlhf.serve.sampling import effective_temperature, sample_rows

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["hello world", "- Cal(m): Ann(f), Bob(m)\nQ:", "the quick brown fox", "Dee(f): Ann, Bob", "0123 é ü"]
POISON_SEED = 666
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return load_served_model("tiny", tiny_model_dir(tmp_path_factory.mktemp("serve-isolation") / "tiny"))


def _params(seed: int, **kw) -> SamplingParams:
    return SamplingParams(**({"max_tokens": MAX_TOKENS, "seed": seed, "ignore_eos": True, "temperature": 1.0}
                             | kw))


async def _result(req: Request):
    """("ok", text, tokens) or ("error", status, message, tokens streamed before the error)."""
    texts, tokens = [""] * req.n_seqs, 0
    done = 0
    while done < req.n_seqs:
        item = await req.events.get()
        if isinstance(item, tuple):
            return ("error", item[1], item[2], tokens)
        for d in item:
            texts[d.index] += d.text
            tokens += 1
            done += d.finish_reason is not None
    return ("ok", texts[0], tokens)


def _run(served, specs, setup=None, max_batch=8):
    """Submit every (prompt ids, params) before the engine starts, so that all are admitted into one batch;
    `setup(engine, requests)` installs a poison. Returns the results and the engine's batch sizes."""
    async def main():
        loop = asyncio.get_running_loop()
        engine = Engine("tiny", served.model, served.tokenizer, EngineConfig(max_batch=max_batch))
        reqs = [engine.submit(Request([ids], params, 1, 60, loop)) for ids, params in specs]
        undo = setup(engine, reqs) if setup else None
        engine.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(_result(r) for r in reqs)), 120), dict(engine.batch_sizes)
        finally:
            engine.stop()
            if undo:
                undo()
    return asyncio.run(main())


def _specs(served, poison_prompt=None):
    tok = served.tokenizer
    specs = [(tok(p, add_special_tokens=False)["input_ids"], _params(10 + i)) for i, p in enumerate(PROMPTS[:4])]
    poison = poison_prompt or tok(PROMPTS[4], add_special_tokens=False)["input_ids"]
    specs.insert(2, (poison, _params(POISON_SEED, logprobs=2)))
    return specs


def _alone(served, specs):
    return [_run(served, [spec])[0][0] for spec in specs]


def _poisoned(reqs):
    return next(r for r in reqs if r.params.seed == POISON_SEED)


def _logits_poison(value):
    def setup(engine, reqs):
        bad, step = _poisoned(reqs), engine.batch.step

        def poisoned_step(tokens):  # after the poisoned row's 3rd token, its logits become `value`
            step(tokens)
            for i, s in enumerate(engine.batch.rows):
                if s.request is bad and s.generated >= 3:
                    engine.batch.logits[i] = value
        engine.batch.step = poisoned_step
    return setup


def _detok_poison(engine, reqs):
    bad, step = _poisoned(reqs), engine.batch.step

    def boom(token_id):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")

    def poisoned_step(tokens):
        step(tokens)
        for s in engine.batch.rows:
            if s.request is bad and s.generated >= 3:
                s.text.push = boom
    engine.batch.step = poisoned_step


@pytest.mark.parametrize("poison", ["nan", "inf", "detok"])
def test_poisoned_row_fails_alone_and_batch_mates_keep_their_text(served, poison):
    specs = _specs(served)
    alone = _alone(served, specs)
    assert all(r[0] == "ok" for r in alone)
    setup = {"nan": _logits_poison(math.nan), "inf": _logits_poison(math.inf), "detok": _detok_poison}[poison]
    results, sizes = _run(served, specs, setup)
    assert max(sizes) == 5  # all five were decoded in the same forward passes
    for i, (got, want) in enumerate(zip(results, alone)):
        if i == 2:
            assert got[:2] == ("error", 500), got
            assert got[3] == 3  # its first 3 tokens were sent; then it failed
            reason = {"nan": "logits hold NaN", "inf": "logits hold +inf", "detok": "UnicodeDecodeError"}[poison]
            assert got[2].startswith("generation failed for this request:") and reason in got[2], got[2]
        else:
            assert got == want and got[2] == MAX_TOKENS  # same text as alone, every token


def _forward_poison(marker: int, only_decode: bool):
    """The model raises on the poisoned row's forwards; the poisoned prompt starts with `marker`, a token in
    no other prompt. "prefill": any forward whose input holds `marker` (the batched prefill of all five
    fails, then the poisoned one's own). "decode": a decoding step while the poisoned row is in the batch
    (once it has 3 tokens), and the rebuild's one-row prefill that starts with `marker`."""
    def setup(engine, reqs):
        bad = _poisoned(reqs)

        def hook(module, args, kwargs):
            ids = kwargs["input_ids"]
            if only_decode:
                in_step = ids.shape[1] == 1 and any(s.request is bad and s.generated >= 3 for s in engine.batch.rows)
                rebuilding = ids.shape[1] > 1 and engine.steps > 0 and bool((ids[:, 0] == marker).any())
                fail = in_step or rebuilding
            else:
                fail = bool((ids == marker).any())
            if fail:
                raise RuntimeError("injected forward failure")
        return engine.model.register_forward_pre_hook(hook, with_kwargs=True).remove
    return setup


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_forward_failure_fails_only_its_row(served, where):
    specs = _specs(served)
    alone = _alone(served, specs)
    used = {t for ids, _ in specs[:2] + specs[3:] for t in ids}
    marker = next(t for t in range(3, 300) if t not in used)
    specs[2] = ([marker] + specs[2][0], specs[2][1])
    alone[2] = None
    results, sizes = _run(served, specs, _forward_poison(marker, only_decode=where == "decode"))
    for i, (got, want) in enumerate(zip(results, alone)):
        if i == 2:
            assert got[:2] == ("error", 500) and "injected forward failure" in got[2], got
            assert got[3] == (0 if where == "prefill" else 3)
        else:
            assert got == want
    if where == "decode":
        assert max(sizes) == 5


def test_tiny_temperatures_are_greedy(served):
    tok = served.tokenizer
    ids = tok(PROMPTS[1], add_special_tokens=False)["input_ids"]
    specs = [(ids, _params(i, temperature=t, logprobs=3)) for i, t in enumerate([0.0, 1e-38, 1e-45, 5e-6])]
    results, _ = _run(served, specs)
    assert all(r[0] == "ok" for r in results)
    assert len({r[1] for r in results}) == 1  # every one is the greedy text
    assert effective_temperature(1e-5) == 1e-5 and effective_temperature(9.99e-6) == 0.0
    assert effective_temperature(math.nan) == 0.0 and effective_temperature(0.7) == 0.7


def test_sampler_guards_rows_against_overflowed_logits():
    """What T = 1e-38 did before the floor: logits / T overflow, the probabilities are NaN, inverse-CDF
    sampling picks token id = V and the sampler raises on it, for the whole group of rows it was called on.
    sample_rows retries that group row by row: only the overflowing row fails; a row of the same group
    whose logits do not overflow (|logit| < 1e-39) and every other row get the tokens they get alone."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 5
    logits[3] *= 1e-40
    u = torch.rand(4, generator=g)
    with pytest.raises(RuntimeError, match="index 50 is out of bounds"):
        sample_token(logits[1:2], u[1:2], 1e-38, 0, 1.0)  # the bug the guard exists for
    settings = [(1.0, 1.0), (1e-38, 1.0), (0.7, 0.9), (1e-38, 1.0)]
    tokens, logps, faults = sample_rows(logits, settings, u)
    assert set(faults) == {1} and "index 50 is out of bounds" in faults[1]
    for i in (0, 2, 3):
        want, want_lp = sample_token(logits[i:i + 1], u[i:i + 1], *settings[i][:1], 0, settings[i][1])
        assert int(tokens[i]) == int(want[0]) and float(logps[i]) == pytest.approx(float(want_lp[0]), abs=1e-6)
    logits[0, 7], logits[2] = math.nan, -math.inf
    logits[1, 3] = math.inf
    _, _, faults = sample_rows(logits, settings, u)
    assert set(faults) == {0, 1, 2}
    assert "NaN" in faults[0] and "+inf" in faults[1] and "every token" in faults[2]
