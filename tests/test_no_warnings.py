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
