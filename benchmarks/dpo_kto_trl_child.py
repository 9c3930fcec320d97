"""The TRL half of benchmarks/bench_dpo.py: one DPOTrainer or KTOTrainer run in this (child) process.

Imported only by the child that runs TRL, so the parent and our own side never import trl. The timing
and memory hook (`StepClock`) is installed by the caller before anything is built, exactly as for ours.
"""
from __future__ import annotations

import json


def read_jsonl(path: str, keys: tuple[str, ...]) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [{k: obj[k] for k in keys} for obj in map(json.loads, f) if obj]


def run_trl(method: str, spec: dict):
    """Build the TRL trainer on the shared model directory and data, then train for
    warmup + timed optimizer steps (the clock ends the process after the last timed step)."""
    from datasets import Dataset
    from peft import LoraConfig

    from tinyrlhf.models import load_tokenizer

    tokenizer = load_tokenizer(spec["model_dir"])
    common = dict(
        output_dir=spec["out_dir"], per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        max_steps=spec["warmup"] + spec["steps"], max_length=spec["max_length"], beta=0.1,
        bf16=spec["precision"] == "bf16", use_cpu=True, report_to=[], logging_strategy="no",
        eval_strategy="no", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"], seed=0, learning_rate=1e-6,
        dataset_num_proc=None,
    )
    peft_config = None
    if spec["lora"]:
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                                 target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    if method == "dpo":
        from trl import DPOConfig as Config, DPOTrainer as Trainer
        rows = read_jsonl(spec["train_file"], ("prompt", "chosen", "rejected"))
    else:
        from trl import KTOConfig as Config, KTOTrainer as Trainer
        rows = read_jsonl(spec["train_file"], ("prompt", "completion", "label"))
    args = Config(**common)
    trainer = Trainer(model=spec["model_dir"], args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
