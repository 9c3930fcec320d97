"""Padding-free batches: the sequences of a micro-batch laid end to end in a few rows, each sequence with
its own positions (0, 1, ...) and an attention mask that never crosses from one sequence into another.

    batch = pack(pad(examples, pad_id))  # the same examples, the same per-token masks, fewer padding cells

Packing works on the output of `collate.pad`, so whatever per-token masks the record -> tokens step made
(completion_mask, or masks over several assistant turns) travel with their tokens unchanged: the packer
moves columns, it never recomputes a mask. Per-example tensors (a pair's margin) pass through as they are.

Strategy: first-fit decreasing. The sequences, longest first (ties: in batch order), go into the first row
with room, and a row holds at most as many tokens as the micro-batch's longest sequence. So a packed batch
never has more cells, nor more attention work (rows x width^2), than the padded one: rows only merge
sequences that fit together where padding would have been. Deterministic: the same batch packs the same way,
and the batch itself comes from the seeded `BatchPlan`, so the examples of each step are unchanged.

A packed batch has `seq_ids` (R, C): the row of the padded batch each token came from, -1 on padding
(in place of `attention_mask`). Models read it through `block_mask` and `positions`; losses through
`token_mask` and `targets`, which also take padded batches, so one loss function serves both layouts.
"""
from __future__ import annotations

import torch


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of indices into `lengths`: first-fit decreasing into rows of at most `capacity` tokens (a
    sequence longer than `capacity` gets a row of its own). Within a row, sequences keep batch order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(r) for r in rows]


def pack(batch: dict[str, torch.Tensor], pad_id: int = 0, capacity: int | None = None,
         multiple: int = 1) -> dict[str, torch.Tensor]:
    """The right-padded batch `batch` (input_ids, attention_mask and any other (B, T) per-token tensors)
    as a packed one: every per-token tensor as (R, C), plus `seq_ids` (R, C). Tensors of any other shape
    (per example) are kept as they are. Rows hold at most `capacity` tokens (default: the longest
    sequence, so that R <= B and C <= T)."""
    mask = batch["attention_mask"].bool()
    n_rows, width = mask.shape
    lengths = mask.sum(-1)
    if not torch.equal(mask, torch.arange(width, device=mask.device) < lengths[:, None]):
        raise ValueError("pack needs right-padded rows (every real token before the first pad)")
    lengths = lengths.tolist()
    capacity = capacity or max(lengths, default=0)
    capacity += -capacity % multiple
    rows = first_fit(lengths, capacity)
    out_width = max((sum(lengths[i] for i in row) for row in rows), default=0)
    out_width += -out_width % multiple
    # where each cell of the packed batch comes from: (source row, source column), -1 on padding
    seq_ids = torch.full((len(rows), out_width), -1, dtype=torch.long)
    src_col = torch.zeros((len(rows), out_width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            seq_ids[r, at:at + lengths[i]] = i
            src_col[r, at:at + lengths[i]] = torch.arange(lengths[i])
            at += lengths[i]
    seq_ids, src_col = seq_ids.to(mask.device), src_col.to(mask.device)
    real = seq_ids >= 0
    out = {}
    for k, v in batch.items():
        if k == "attention_mask":
            continue
        if tuple(v.shape[:2]) != (n_rows, width):  # per example: as it is
            out[k] = v
            continue
        fill = pad_id if k == "input_ids" else 0
        moved = v[seq_ids.clamp(min=0), src_col]
        out[k] = torch.where(real.view(*real.shape, *[1] * (v.dim() - 2)), moved, torch.full_like(moved, fill))
    out["seq_ids"] = seq_ids
    return out


def is_packed(batch: dict) -> bool:
    return "seq_ids" in batch


def positions(seq_ids: torch.Tensor) -> torch.Tensor:
    """(R, C) position of each token within its own sequence: 0, 1, ... restarting at every sequence;
    padding gets 0."""
    col = torch.arange(seq_ids.shape[1], device=seq_ids.device).expand_as(seq_ids)
    starts = torch.ones_like(seq_ids, dtype=torch.bool)
    starts[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    first = torch.where(starts, col, torch.zeros_like(col)).cummax(-1).values  # column where the sequence began
    return torch.where(seq_ids >= 0, col - first, torch.zeros_like(col))


def block_mask(seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(R, 1, C, C) additive attention mask: 0 where query i may see key j (same sequence, j <= i), the
    dtype's minimum elsewhere. Padding attends to the padding before it, so no row is empty. Additive, as
    transformers' eager mask, which every attention implementation here takes (tinyrlhf, sdpa, eager)."""
    width = seq_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=seq_ids.device).tril()
    allowed = (seq_ids[:, :, None] == seq_ids[:, None, :]) & causal  # (R, C, C)
    zero = torch.zeros((), dtype=dtype, device=seq_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def token_mask(batch: dict) -> torch.Tensor:
    """(R, C) 1 on real tokens, 0 on padding, for padded and packed batches alike."""
    return (batch["seq_ids"] >= 0).long() if is_packed(batch) else batch["attention_mask"]


def same_sequence(seq_ids: torch.Tensor) -> torch.Tensor:
    """(R, C-1) bool: token t+1 belongs to the same (real) sequence as token t, i.e. is predicted by it."""
    return (seq_ids[:, 1:] == seq_ids[:, :-1]) & (seq_ids[:, 1:] >= 0)


def targets(batch: dict, mask: torch.Tensor) -> torch.Tensor:
    """(R, C-1) the next-token targets that `mask` (R, C) selects: mask[:, 1:], and in a packed batch only
    where the predicting token belongs to the same sequence (a sequence's first token has no predictor,
    just as column 0 of a padded row)."""
    shifted = mask[:, 1:]
    return shifted * same_sequence(batch["seq_ids"]).to(shifted.dtype) if is_packed(batch) else shifted


def n_sequences(seq_ids: torch.Tensor) -> int:
    return int(seq_ids.max()) + 1 if seq_ids.numel() else 0


def last_tokens(seq_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) flat index (into seq_ids.flatten()) of each sequence's last token."""
    flat = seq_ids.flatten()
    real = flat >= 0
    index = torch.arange(flat.numel(), device=flat.device)
    return torch.zeros(n, dtype=torch.long, device=flat.device).scatter_reduce(
        0, flat[real], index[real], reduce="amax", include_self=False)


def per_sequence_sum(values: torch.Tensor, seq_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(n, ...) the sum of `values` (R, C, ...) over each sequence's tokens (padding ignored)."""
    flat = seq_ids.flatten()
    real = flat >= 0
    v = values.flatten(0, 1)[real]
    return torch.zeros((n, *values.shape[2:]), dtype=v.dtype, device=v.device).index_add(0, flat[real], v)
