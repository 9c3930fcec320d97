"""The normal path prints no library warnings: a short SFT, DPO (with evaluation; full and LoRA), PPO and
eval run through the CLI raise no Python warning and log no transformers deprecation (e.g. the
`past_key_values` keyword, which transformers 5.24 renamed `cache` and warns about on every forward that
passes it)."""
import logging
import warnings

from conftest import tiny_sft
from tinyrlhf.cli import main


def test_sft_dpo_ppo_eval_emit_no_warnings(tmp_path, capfd):
    if hasattr(logging.Logger, "warning_once"):  # transformers' once-per-process warnings: show them again
        logging.Logger.warning_once.cache_clear()
    tiny = ["train.progress=false", "train.threads=1", "train.max_steps=2", "train.batch_size=4",
            "data.task=family_tree", "eval.n_prompts=4", "eval.max_new_tokens=4"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, model = tiny_sft(tmp_path)
        assert main(["dpo", *tiny, f"data.dir={data}", f"model.path={model}", f"out_dir={tmp_path / 'dpo'}",
                     f"ref_cache_dir={tmp_path / 'cache'}"]) == 0
        assert main(["dpo", *tiny, f"data.dir={data}", f"model.path={model}", f"out_dir={tmp_path / 'lora'}",
                     f"ref_cache_dir={tmp_path / 'cache'}", "lora.enabled=true", "lora.r=4"]) == 0
        assert main(["ppo", *tiny, f"data.dir={data}", f"model.path={model}", f"out_dir={tmp_path / 'ppo'}",
                     "reward=gold", "rollout.prompts_per_step=4", "rollout.max_new_tokens=4",
                     "ppo.minibatch_size=4"]) == 0
        assert main(["eval", str(tmp_path / "ppo"), "--task", "family_tree", "n_prompts=4", "max_new_tokens=4"]) == 0
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    err = capfd.readouterr().err.lower()
    assert "deprecat" not in err and "warning" not in err, err



def test_generate_without_padding_does_not_warn_about_the_attention_mask():
    """A batch with no padding whose rows finish at different steps: transformers decodes it without a mask and
    warned "We strongly recommend passing in an `attention_mask`" (a false alarm: finished rows get the pad id,
    which is the EOS id) on the first positive_review evaluation of every compare run. sampling.py filters it.
    (A handler of our own on the logger: transformers' handler writes to the stderr object of import time,
    which pytest's capfd does not see.)"""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tinyrlhf import sampling

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    seen: list[str] = []
    log = logging.getLogger("transformers.modeling_utils")
    handler = Collect()
    log.addHandler(handler)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10, pad_token_id=0,
                                       bos_token_id=0, eos_token_id=0))
    finished_row = torch.tensor([[3, 4, 0], [3, 4, 5]])
    try:
        logging.Logger.warning_once.cache_clear()
        model.warn_if_padding_and_no_attention_mask(finished_row, None)
        assert seen == []
        saved = list(log.filters)
        log.filters.clear()  # without the filter the same call warns
        logging.Logger.warning_once.cache_clear()
        model.warn_if_padding_and_no_attention_mask(finished_row, None)
        assert len(seen) == 1 and "attention_mask" in seen[0]
        log.filters[:] = saved
        assert any(isinstance(f, sampling._NoPaddingFalseAlarm) for f in log.filters)
    finally:
        log.removeHandler(handler)
