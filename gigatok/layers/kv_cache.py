"""Static, preallocated key/value cache for autoregressive decoding.

The buffers are registered non-persistent: a model with caches attached has the same `state_dict` as one
without, so checkpoints never pick up cache entries. Fixed shapes keep decode steps compile-friendly
(gpt-fast style): each step writes its keys/values at `input_pos` and attends over the whole buffer, with
the unwritten slots masked out by the caller.

Shape letters: Dh head dim; nkv key/value heads; T sequence positions (the GPT: class token + codes; attention:
query positions); Tmax cache length; R decoding rows (2B with classifier-free guidance, else B). Here T counts the
new positions of one write.
"""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Per-layer cache of shape (max_batch_size, nkv, Tmax, Dh) for keys and values.

    Args:
        max_batch_size: the most decoding rows R (2B when classifier-free guidance doubles the batch).
        max_seq_length: Tmax positions.
        n_kv_head: nkv (the official cache wrongly used n_head; we size it by the key/value heads).
        head_dim: Dh.
        dtype: cache dtype, normally the model's (e.g. bf16 for a bf16 model).
        device: where the buffers live.
    """

    def __init__(self, max_batch_size: int, max_seq_length: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (max_batch_size, n_kv_head, max_seq_length, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq_length(self) -> int:
        return self.k_cache.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k`, `v` (R, nkv, T, Dh) at positions `input_pos` (T,) int64; R <= max_batch_size.

        Returns:
            The first R rows of the full key and value buffers, each (R, nkv, Tmax, Dh).
        """
        b = k.shape[0]
        # index_copy_ along the position axis is a plain strided copy (advanced-index assignment is ~10x slower
        # on CPU for one position) and writes through the row slice into the buffer
        self.k_cache[:b].index_copy_(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache[:b].index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache[:b], self.v_cache[:b]
