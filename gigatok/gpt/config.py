"""Typed configuration of the class-conditional GPT (LlamaGen's `ModelArgs` field names, plus `pos_type`).

Plain dataclass, no omegaconf: the run config (`gigatok.config`) maps its fields onto this one.

Shape letters: L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook size
(= GPT vocabulary); D width; Dh head dim; nh query heads; nkv key/value heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Position encodings: GigaTok gpt_1d default (learned absolute, rope off), LlamaGen gpt.py (2D RoPE),
# GigaTok gpt_1d with --rope (1D RoPE).
POS_TYPES = ("learned_1d", "rope_2d", "rope_1d")


@dataclass
class GPTConfig:
    """Architecture and regularisation of the GPT. Defaults are LlamaGen's `ModelArgs` (c2i)."""

    dim: int = 4096
    """Width D."""
    n_layer: int = 32
    """Number of transformer blocks."""
    n_head: int = 32
    """Query heads nh; head dim Dh = dim // n_head (100 for GPT-3B)."""
    n_kv_head: int | None = None
    """Key/value heads nkv (None: = n_head, plain multi-head attention as in every released model)."""
    multiple_of: int = 256
    """SwiGLU hidden width is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Optional scale of the SwiGLU hidden width (unused by the official sizes)."""
    rope_base: float = 10000
    """RoPE frequency base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    initializer_range: float = 0.02
    """Std of the normal init of every Linear/Embedding (the output layer is zeroed instead)."""
    token_dropout_p: float = 0.1
    """Dropout on the input embedding sequence (class + code tokens)."""
    attn_dropout_p: float = 0.0
    """Dropout on attention probabilities."""
    resid_dropout_p: float = 0.1
    """Dropout after the attention output projection."""
    ffn_dropout_p: float = 0.1
    """Dropout after the FFN output projection."""
    drop_path_rate: float = 0.0
    """Stochastic depth, linearly spaced from 0 (first block) to this (last block)."""
    num_classes: int = 1000
    """Number of classes; label `num_classes` is the null (unconditional) class."""
    class_dropout_prob: float = 0.1
    """Training-time probability of replacing a label by the null class; > 0 also creates the null row."""
    vocab_size: int = 16384
    """Vocabulary K = tokenizer codebook size."""
    cls_token_num: int = 1
    """Condition positions before the codes (must be 1 for class-conditional models)."""
    block_size: int = 256
    """L, the number of codes per image (a perfect square for rope_2d)."""
    pos_type: str = "learned_1d"
    """One of POS_TYPES: 'learned_1d' (GigaTok gpt_1d), 'rope_2d' (LlamaGen), 'rope_1d' (textbook 1D RoPE with
    base rope_base and a zero class row; GigaTok's --rope variant, never released, appears to build its table
    with base 1 and 120 zero rows, see gigatok/layers/rope.py)."""
    use_qk_norm: bool = False
    """LayerNorm on per-head queries and keys (GigaTok --qk-norm; off in released models)."""

    def __post_init__(self) -> None:
        if self.pos_type not in POS_TYPES:
            raise ValueError(f"pos_type must be one of {POS_TYPES}, got '{self.pos_type}'")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.cls_token_num != 1:
            raise ValueError(f"class-conditional GPTs use cls_token_num=1 (one class position), "
                             f"got {self.cls_token_num}")
        if self.pos_type == "rope_1d" and self.head_dim % 2:
            raise ValueError(f"rope_1d needs an even head dim, got {self.head_dim}")
        if self.pos_type == "rope_2d":
            if math.isqrt(self.block_size) ** 2 != self.block_size:
                raise ValueError(f"rope_2d needs a square token grid, block_size {self.block_size} is not a square")
            if self.head_dim % 4:
                raise ValueError(f"rope_2d needs a head dim divisible by 4, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def max_positions(self) -> int:
        """Longest sequence the model accepts: class position(s) + block_size codes."""
        return self.cls_token_num + self.block_size
