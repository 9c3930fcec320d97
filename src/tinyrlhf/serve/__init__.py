"""`tinyrlhf serve`: an OpenAI-compatible HTTP server for the models tinyrlhf trains, and /v1/rewards for its
reward models.

    config.py     ServeConfig / EngineConfig (frozen dataclasses) and NAME=PATH parsing
    loader.py     run dir / LoRA final/ / HF dir -> eval model + tokenizer (optionally quantised)
    quantize.py   int8 (torch.ao dynamic) and bf16 weights
    batch.py      the running batch: a left-padded KV cache that rows join and leave between steps
    engine.py     the continuous-batching scheduler thread, bounded queue, cancellation, timeouts, batch isolation
    sampling.py   one token per row, a row's failure (non-finite logits, tiny temperature) kept to that row
    detok.py      incremental detokenisation with stop strings
    templates.py  prompts and chat messages -> token ids
    protocol.py   OpenAI request models, the error object, response / chunk bodies
    body.py       request body -> JSON document: content type, size limit, strict JSON, depth, surrogates
    validate.py   JSON document -> tokenised request for the engine: types, ranges and bounds (worker thread)
    metrics.py    Prometheus metrics
    access.py     Host check (DNS rebinding), API key, CORS, Content-Security-Policy and nosniff
    rewards.py    POST /v1/rewards: reward models score prompt/completion pairs (their own scoring thread)
    app.py        FastAPI routes, SSE streaming, the chat page (static/)
    server.py     load everything and run uvicorn

May import: the models and the shared machinery below train/ (loading, models, rollout, logprobs); never
feedback/, study/ or cli (tests/test_layout.py checks it).
"""
