"""Lower-precision weights for CPU inference: int8 (dynamic quantisation through torch.ao) and bf16.

int8: `torch.ao.quantization.quantize_dynamic` stores each linear weight as int8 with one scale per output
channel and quantises the activations per batch at run time, so the matmul itself runs in int8 (fbgemm's
VNNI kernels on x86). No calibration data. In benchmarks/bench_serve.py (gpt2-small, 32 clients, one
thread) it generates 3.3x the tokens/s of fp32 (bf16: 1.9x). PyTorch marks torch.ao.quantization
deprecated in favour of torchao, but torchao's `Int8WeightOnlyConfig` dequantises the weight on every call
and was slower than fp32 here (one microbenchmark of a 768 x 3072 x 768 MLP on a busy machine, one
thread: 7.1 vs 5.5 ms at batch 1, 20.2 vs 14.1 ms at batch 32, where torch.ao took 0.5 and 2.9 ms), and
installing torchao makes every `import transformers` import it too (half a second, and warnings about
its GPU kernels), so it is not a dependency; a PyTorch without quantize_dynamic gets a one-line error.
Its activation scale is computed over the whole batch, so a row's int8 result depends a little on its
neighbours: with int8, a seeded request's text can change with what shares its batch.
GPT-2 writes its projections as transformers' `Conv1D` (y = x W + b, W stored (in, out)), which the
quantiser does not recognise, so they become `nn.Linear` (W transposed) first: the same function. The
LM head (tied to the token embeddings) is quantised too: it is a third of a gpt2-small forward; it gets an
int8 copy of its own and the embedding keeps the fp32 matrix.

bf16: every weight in bf16 (half the memory); the sampler upcasts the logits to fp32 before the softmax.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers Conv1D by an equal nn.Linear, in place, one at a time (so at most one
    layer's weight exists twice). Returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    names = [name for name, m in model.named_modules() if isinstance(m, Conv1D)]
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        child = getattr(parent, child_name)
        in_f, out_f = child.weight.shape
        lin = nn.Linear(in_f, out_f, bias=child.bias is not None, device="meta")
        lin.weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
        if child.bias is not None:
            lin.bias = nn.Parameter(child.bias.detach(), requires_grad=False)
        setattr(parent, child_name, lin)
        del child
    return len(names)


def _int8(model: nn.Module) -> nn.Module:
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise ConfigError("--quantize int8 needs torch.ao.quantization.quantize_dynamic, which this PyTorch "
                          f"({torch.__version__}) no longer has; use --quantize bf16") from None
    conv1d_to_linear(model)
    import warnings
    with warnings.catch_warnings():  # its deprecation notice on every load: the module docstring says why
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def quantize(model: nn.Module, mode: str) -> nn.Module:
    """`model` with its weights in `mode` ('none', 'int8' or 'bf16')."""
    if mode == "none":
        return model
    if mode == "bf16":
        return model.to(torch.bfloat16)
    if mode == "int8":
        return _int8(model)
    raise ConfigError(f"--quantize '{mode}' is unknown; valid: none, int8, bf16")
