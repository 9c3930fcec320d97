"""Shared test helpers: tiny task data and a few-step SFT model to start other stages from."""
import os

# No test downloads anything: a model.path that names the Hugging Face hub is looked up in the cache only
# (set before transformers and huggingface_hub are imported; they read it once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tinyrlhf.config import SFTConfig, load_config
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.sft import run_sft


def tiny_sft(root, steps: int = 3, sizes: dict | None = None, extra: tuple = ()) -> tuple[str, str]:
    """Write small family_tree data under root/data and train a gpt2-tiny SFT for `steps` steps in root/sft.
    Returns (data dir, SFT final/ dir)."""
    data = str(root / "data")
    write_task_data("family_tree", data, seed=0, **(sizes or dict(
        n_train_prompts=60, n_eval_prompts=8, n_pairs=40, n_rankings=4, n_binary=16, n_eval_pairs=8)))
    sft = str(root / "sft")
    run_sft(load_config(SFTConfig, None, [f"out_dir={sft}", "model.tokenizer_vocab=400", "data.task=family_tree",
                                          f"data.dir={data}", f"train.max_steps={steps}", "train.batch_size=8",
                                          "train.progress=false", "eval.n_prompts=0", *extra]))
    return data, f"{sft}/final"
