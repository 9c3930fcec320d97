"""tinyrlhf: the whole RLHF pipeline on small language models, on one CPU or GPU.

The package in layers; a module imports only from its own layer or those below it, with no import circles
and no other module's _private names (docs/layout.md; tests/test_layout.py checks all three):

    cli.py                                          the `tinyrlhf` command
    study/                                          compare, baselines, reports, iterated RLHF (loop)
    feedback/                                       label app, store, export
    serve/                                          OpenAI-compatible server
    eval/                                           evaluating a model or outputs
    train/                                          one loop per method, engine, run directories
    rollout, logprobs, sampling, dist               shared machinery
    models, loading, model_dir, attention, export   building and loading models, tokenizers, LoRA
    tasks/                                          built-in tasks with a gold reward
    data/                                           records, formats, batches
    config/                                         typed configs
    errors, losses                                  error types, pure loss functions
"""
import os

# oneDNN (bf16 matmuls on CPU) caches compiled kernels per tensor shape, 1024 of each kind by default.
# Rollouts and RL updates see a new shape almost every step, and those caches alone grew resident memory
# by ~7 MiB per PPO step on gpt2-tiny (measured: 400 -> 760 MiB over 40 steps; flat with a cap of 32-64,
# at the same speed). Set before torch first uses oneDNN; an explicit user setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
