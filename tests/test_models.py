"""Model loading: a stock GPT-2 directory loads with the fused tanh-GELU kernel and computes the same function."""
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from tinyrlhf.config import ModelConfig
from tinyrlhf.models import build_model, train_tokenizer


def test_stock_gpt2_directory_loads_with_fused_gelu(tmp_path):
    torch.manual_seed(0)
    tok = train_tokenizer(["Ann and Bob are the parents of Cal."] * 20, vocab_size=300)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=320, n_positions=64,
                        activation_function="gelu_new")
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ours, _ = build_model(ModelConfig(path=str(tmp_path)))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert stock.config.activation_function == "gelu_new"
    assert ours.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(0, 320, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids).logits - stock(ids).logits).abs().max().item()
    assert diff < 1e-5, diff
