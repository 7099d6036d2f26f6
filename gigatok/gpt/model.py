"""Class-conditional GPT over tokenizer codes: LlamaGen's decoder with GigaTok's position options.

Architecture (SPEC_llamagen §1, SPEC_gigatok §4.3): [class embedding, code embeddings] -> token dropout ->
n_layer pre-norm blocks (RMSNorm, causal attention with fused `wqkv`, SwiGLU FFN, residual/FFN dropout,
drop-path) -> RMSNorm -> untied `output` head. Positions are either a learned absolute table added to the
embeddings (GigaTok gpt_1d, `positional_embedding` (1 + block_size, D)), 2D RoPE over the token grid
(LlamaGen) or plain 1D RoPE (see GPTConfig.pos_type). Module names match the official state_dict keys exactly, so
official checkpoints load strictly; the RoPE table and KV caches are never part of the state_dict.

Sequence layout: position 0 holds the class token, position t >= 1 holds code t-1, and the logits at
position t predict code t (teacher forcing feeds codes[:, :-1] and scores against all codes).

Shape letters: B batch; L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook size
(= GPT vocabulary); D width; Dh head dim; T sequence positions (the GPT: class token + codes; attention: query
positions); Tmax cache length; R decoding rows (2B with classifier-free guidance, else B). Here D = dim and
L = block_size; teacher forcing on codes[:, :-1] of (B, L) codes has T = L positions, and a cached call has T new
positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.gpt.config import GPTConfig
from gigatok.layers.causal_attention import CausalSelfAttention
from gigatok.layers.kv_cache import KVCache
from gigatok.layers.norm import RMSNorm
from gigatok.layers.rope import precompute_rope_1d, precompute_rope_2d
from gigatok.layers.swiglu import FeedForward, find_multiple, swiglu_hidden_dim

# Size presets (LlamaGen `GPT_models` / GigaTok gpt_1d); every other GPTConfig field comes from the caller.
# Parameter counts at K=16384 with 1000 classes: rope_2d as listed, learned_1d adds (1 + 256) * dim.
GPT_MODELS: dict[str, dict[str, int]] = {
    "GPT-B": {"n_layer": 12, "n_head": 12, "dim": 768},  # 111M
    "GPT-L": {"n_layer": 24, "n_head": 16, "dim": 1024},  # 343M
    "GPT-XL": {"n_layer": 36, "n_head": 20, "dim": 1280},  # 775M
    "GPT-XXL": {"n_layer": 48, "n_head": 24, "dim": 1536},  # 1.4B
    "GPT-XXXL": {"n_layer": 48, "n_head": 40, "dim": 2560},  # 3.9B
    "GPT-1B": {"n_layer": 22, "n_head": 32, "dim": 2048},  # 1.2B
    "GPT-3B": {"n_layer": 24, "n_head": 32, "dim": 3200},  # 3.1B, head dim 100 (released c2i LlamaGen-3B)
    "GPT-7B": {"n_layer": 32, "n_head": 32, "dim": 4096},  # 6.6B
    "debug": {"n_layer": 2, "n_head": 4, "dim": 64},  # tests and CPU demos
}


class LabelEmbedder(nn.Module):
    """Class-label table with an extra null row (index `num_classes`) for classifier-free guidance.

    Args:
        num_classes: number of real classes.
        dim: embedding width D.
        dropout_prob: training-time label-drop probability; the null row exists only if it is > 0 (as official).
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace labels (B,) by the null class, randomly (p = dropout_prob) or where `force_drop_ids` == 1."""
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embed labels (B,) int64 in [0, num_classes]; returns (B, 1, D)."""
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels).unsqueeze(1)  # (B,) -> (B, 1, D)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch (B, ...) with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
    return x * mask / keep


class TransformerBlock(nn.Module):
    """Pre-norm block: `h = x + attn(norm(x))`, `out = h + ffn(norm(h))`, each branch with drop-path."""

    def __init__(self, config: GPTConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(
            config.dim, config.n_head, config.n_kv_head, attn_dropout_p=config.attn_dropout_p,
            resid_dropout_p=config.resid_dropout_p, use_qk_norm=config.use_qk_norm,
        )
        hidden = swiglu_hidden_dim(config.dim, config.multiple_of, config.ffn_dim_multiplier)
        self.feed_forward = FeedForward(config.dim, hidden, config.ffn_dropout_p)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None, input_pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, kv_len: int | None = None) -> torch.Tensor:
        """(B, T, D) -> same; `rope`, `input_pos`, `mask`, `kv_len` as in `CausalSelfAttention.forward`."""
        h = x + drop_path(self.attention(self.attention_norm(x), rope, input_pos, mask, kv_len), self.drop_path_rate,
                          self.training)
        return h + drop_path(self.feed_forward(self.ffn_norm(h)), self.drop_path_rate, self.training)


class GPT(nn.Module):
    """LlamaGen-style class-conditional decoder (`Transformer` in the official code).

    Args:
        config: architecture; see `GPTConfig` and the size presets in `GPT_MODELS`.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # registered first so the state_dict order matches GigaTok's gpt_1d files; (1 + block_size, D)
        if config.pos_type == "learned_1d":
            self.positional_embedding = nn.Parameter(torch.empty(config.max_positions, config.dim))
        else:
            self.positional_embedding = None
        self.cls_embedding = LabelEmbedder(config.num_classes, config.dim, config.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        rates = torch.linspace(0, config.drop_path_rate, config.n_layer, device="cpu").tolist()
        self.layers = nn.ModuleList(TransformerBlock(config, rate) for rate in rates)
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # A plain float32 attribute, not a buffer: it stays out of the state_dict (official checkpoints have no
        # freqs_cis) and a whole-model `.to(bfloat16)` cannot round it. Moved to the activations' device on use.
        self.freqs_cis = self._build_rope_table()
        self.window_mask: torch.Tensor | None = None  # made by setup_caches (see there)
        self.init_weights()

    # ----------------------------------------------------------------------------------------------------------
    # construction
    def _build_rope_table(self) -> torch.Tensor | None:
        c = self.config
        if c.pos_type == "rope_2d":
            return precompute_rope_2d(math.isqrt(c.block_size), c.head_dim, c.rope_base, c.cls_token_num)
        if c.pos_type == "rope_1d":
            return precompute_rope_1d(c.block_size, c.head_dim, c.rope_base, c.cls_token_num)
        return None  # learned_1d

    def init_weights(self) -> None:
        """Official init: Linear/Embedding ~ N(0, initializer_range), norms 1, `output` zero, learned positions
        dim^-0.5 * N(0, 1). The zero head makes the initial logits 0 and the initial loss exactly ln(K)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.output.weight)
        if self.positional_embedding is not None:
            nn.init.normal_(self.positional_embedding, mean=0.0, std=self.config.dim ** -0.5)

    @property
    def num_classes(self) -> int:
        """Real classes; `num_classes` itself is the null (unconditional) label."""
        return self.config.num_classes

    @property
    def has_null_class(self) -> bool:
        return self.config.class_dropout_prob > 0

    # ----------------------------------------------------------------------------------------------------------
    # shared pieces of every forward
    def _embed(self, codes: torch.Tensor | None, labels: torch.Tensor | None,
               input_pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed [class token?, codes?] at positions `input_pos` (None: 0..T-1).

        Returns:
            h: (B, T, D) after positions and token dropout; rope: (T, Dh/2, 2) float32 or None.
        """
        parts = []
        if labels is not None:
            parts.append(self.cls_embedding(labels, train=self.training))  # (B, 1, D)
        if codes is not None:
            parts.append(self.tok_embeddings(codes))  # (B, T - 1, D) after a class token, else (B, T, D)
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, T, D)
        t = h.shape[1]
        if input_pos is None and t > self.config.max_positions:
            raise ValueError(f"sequence of {t} positions exceeds cls_token_num + block_size = "
                             f"{self.config.max_positions}")
        index = slice(0, t) if input_pos is None else input_pos
        if self.positional_embedding is not None:
            # added before the token dropout, as GigaTok's gpt_1d does (train-time only difference)
            h = h + self.positional_embedding[index].to(h.dtype)  # (T, D) broadcast over B
        h = self.tok_dropout(h)  # the class position is dropped element-wise too, as official
        rope = None
        if self.freqs_cis is not None:
            if self.freqs_cis.device != h.device:
                self.freqs_cis = self.freqs_cis.to(h.device)
            rope = self.freqs_cis[index]  # (T, Dh/2, 2); row 0 (class) is all zeros
        return h, rope

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h)).float()  # (B, T, K) float32 whatever the model dtype

    # ----------------------------------------------------------------------------------------------------------
    # teacher forcing
    def forward(self, codes_in: torch.Tensor, labels: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced forward (training and evaluation), no KV cache.

        Args:
            codes_in: (B, T - 1) int64 codes in [0, K), normally codes[:, :-1] of (B, L) codes, so T = L
                (T - 1 may be 0).
            labels: (B,) int64 classes in [0, num_classes]; in train mode each is replaced by the null class
                with probability class_dropout_prob.
            targets: optional (B, T) int64, normally all codes; logits[:, t] is scored against targets[:, t].

        Returns:
            logits: (B, T, K) float32; loss: mean cross-entropy over B*T positions (float32 scalar) or None.
        """
        h, rope = self._embed(codes_in, labels, None)
        for layer in self.layers:
            h = layer(h, rope)
        logits = self._head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, K) vs (B*T,)
        return logits, loss

    def forward_hidden(self, codes_in: torch.Tensor, labels: torch.Tensor, num_layers: int) -> torch.Tensor:
        """Hidden states after the first `num_layers` blocks of the teacher-forced sequence (linear probing).

        Same positions as `forward` and GigaTok's `ret_inner_feat_layer=num_layers`: the class position plus
        the given codes. GigaTok's probe calls it with `codes_in = codes[:, :-1]`, the null class and
        `num_layers = n_layer // 2`, then averages over all T positions.

        Args:
            codes_in: (B, T - 1) int64 codes, T - 1 <= block_size.
            labels: (B,) int64 in [0, num_classes] (`num_classes` = null class).
            num_layers: 0 .. n_layer.

        Returns:
            (B, T, D), the class position plus the T - 1 codes, in the model dtype (before the final norm).
        """
        if not 0 <= num_layers <= self.config.n_layer:
            raise ValueError(f"num_layers must be in [0, {self.config.n_layer}], got {num_layers}")
        h, rope = self._embed(codes_in, labels, None)
        for layer in self.layers[:num_layers]:
            h = layer(h, rope)
        return h

    # ----------------------------------------------------------------------------------------------------------
    # cached decoding
    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> int:
        """Attach a fresh static KV cache to every block.

        Args:
            max_batch_size: the most rows R decoded together (2B with classifier-free guidance).
            max_seq_length: positions needed (class + generated codes); rounded up to a multiple of 8 like the
                official code (257 -> 264) so tensor shapes stay friendly to compiled kernels.
            dtype, device: default to those of the token embedding.

        Returns:
            The cache length Tmax.
        """
        if max_seq_length > self.config.max_positions:
            raise ValueError(f"cannot decode {max_seq_length} positions, the model has "
                             f"{self.config.max_positions} (cls_token_num + block_size)")
        weight = self.tok_embeddings.weight
        dtype, device = dtype or weight.dtype, device or weight.device
        s_max = find_multiple(max_seq_length, 8)
        for layer in self.layers:
            attn = layer.attention
            attn.kv_cache = KVCache(max_batch_size, s_max, attn.n_kv_head, attn.head_dim, dtype, device)
        # Additive causal mask (0 on and below the diagonal, -inf above) whose rows kv_len - T .. kv_len - 1 serve a
        # window of T new positions (speculative decoding), made once per cache: a boolean mask built per call would
        # cost its construction and SDPA's conversion to this form on every pass.
        self.window_mask = torch.full((s_max, s_max), float("-inf"), dtype=dtype, device=device).triu_(1)
        if self.freqs_cis is not None:
            self.freqs_cis = self.freqs_cis.to(device)
        return s_max

    def remove_caches(self) -> None:
        """Detach and free every KV cache (the model then only runs teacher-forced forwards)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.window_mask = None

    @property
    def has_caches(self) -> bool:
        return any(layer.attention.kv_cache is not None for layer in self.layers)

    def forward_cached(self, input_pos: torch.Tensor, codes: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None, kv_len: int | None = None) -> torch.Tensor:
        """One decoding call through the attached KV caches (prefill or single-token step).

        Args:
            input_pos: (T,) int64 absolute positions of the new entries (class token = 0, code i = i + 1).
            codes: (R, T) int64 codes to append ((R, T - 1) when `labels` fill position 0), or None (prefill with
                the class token only).
            labels: (R,) int64 classes, given only when position 0 is among `input_pos` (prefill).
            kv_len: the number of filled cache slots after this call (= last position + 1), as a Python int, when
                the caller knows it; `input_pos` must then be the T consecutive positions kv_len - T .. kv_len - 1.
                Attention then runs over that prefix only, with no mask for one new position or a prefill (else a
                (T, kv_len) causal mask), instead of over the whole cache under a mask (3x less attention work on
                average, and SDPA's masked CPU kernel is slow). Leave it None under torch.compile / CUDA graphs,
                which want static shapes.

        Returns:
            logits: (R, T, K) float32 for the T new positions.
        """
        if not self.has_caches:
            raise RuntimeError("forward_cached needs KV caches: call setup_caches() first")
        h, rope = self._embed(codes, labels, input_pos)
        s = input_pos.shape[0]
        if kv_len is not None and (s == 1 or s == kv_len):
            mask = None  # one query sees the whole prefix; a prefill from 0 is plain causal over the prefix
        elif kv_len is not None:
            # a window of T new positions after a filled prefix (speculative decoding): the first kv_len slots,
            # each position seeing the slots up to itself (input_pos = kv_len - T .. kv_len - 1, see above)
            mask = self.window_mask[kv_len - s:kv_len, :kv_len][None, None]  # (1, 1, T, kv_len) additive
        else:
            kv_len = None
            s_max = self.layers[0].attention.kv_cache.max_seq_length
            # position p may attend to every cache slot <= p; later (unwritten or stale) slots are masked out
            mask = torch.arange(s_max, device=h.device)[None, :] <= input_pos[:, None]  # (T, Tmax) bool
            mask = mask[None, None]  # (1, 1, T, Tmax), broadcast over rows and heads
        for layer in self.layers:
            h = layer(h, rope, input_pos, mask, kv_len)
        return self._head(h)
