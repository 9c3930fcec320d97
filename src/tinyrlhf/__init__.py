"""tinyrlhf: the whole RLHF pipeline on small language models, on one CPU or GPU."""
import os

# oneDNN (bf16 matmuls on CPU) caches compiled kernels per tensor shape, 1024 of each kind by default.
# Rollouts and RL updates see a new shape almost every step, and those caches alone grew resident memory
# by ~7 MiB per PPO step on gpt2-tiny (measured: 400 -> 760 MiB over 40 steps; flat with a cap of 32-64,
# at the same speed). Set before torch first uses oneDNN; an explicit user setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
