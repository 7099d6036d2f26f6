"""Q-Former encoder/decoder between the CNN's 2D feature map and the 1D (or 2D) latent tokens.

`QFormerEncoder` (official `ViTEncoder`, key prefix `s2to1encoder.`): 2D features -> L latent tokens, whose queries
are initialised by multi-level average pooling of the embedded 2D map (coarse to fine).
`QFormerDecoder` (official `ViTDecoder`, `s1to2decoder.`): L latent tokens -> 2D feature map; the 2D queries start
as copies of the first latent token. Its layer `distill_depth` feeds the distill MLP (semantic regularisation).
`ViTEncoder2D` / `ViTDecoder2D` (`s2dencoder.` / `s2ddecoder.`): the 2D-token variant.

Shape letters: B batch; f CNN downsampling factor; G latent grid side (G*G 2D tokens); L latent tokens = codes per
image (1D tokenizer: num_latent_tokens; 2D: G*G); Cz z_channels; D width; Dt teacher width. Here G = image_size / f,
D is the transformer width and Dt the distill MLP's output width (the teacher's).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gigatok.layers.attention import QFormerLayer, ViTLayer


def multi_level_queries(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Average-pool a 2D map into `num_tokens` = 2**n queries, coarse to fine.

    Groups: the global mean twice, then grids (h x w) of 1x2, 2x2, 2x4, 4x4, ... (the width is split first),
    2**(g-1) tokens in group g, raster order inside each group.

    Args:
        x: (B, D, G, G).
    Returns:
        (B, num_tokens, D).
    """
    n_level = round(math.log2(num_tokens))
    if 2**n_level != num_tokens:
        raise ValueError(f"multi-level query init needs a power-of-two num_latent_tokens, got {num_tokens}")
    _, _, gh, gw = x.shape
    groups = []
    for group in range(n_level + 1):
        level = max(group - 1, 0)
        w_blocks, h_blocks = 2 ** ((level + 1) // 2), 2 ** (level // 2)
        if gh % h_blocks or gw % w_blocks:
            raise ValueError(f"a {gh}x{gw} grid cannot be pooled into {h_blocks}x{w_blocks} blocks; use fewer "
                             f"latent tokens or a larger image_size")
        pooled = F.avg_pool2d(x, kernel_size=(gh // h_blocks, gw // w_blocks))  # (B, D, h_blocks, w_blocks)
        groups.append(rearrange(pooled, "b d h w -> b (h w) d"))  # raster order inside the group
    return torch.cat(groups, dim=1)


def _level_grid(level: int) -> tuple[int, int]:
    """(h_blocks, w_blocks) of a group of 2**level tokens laid out in 2D, the width split first ("row" growth)."""
    return 2 ** (level // 2), 2 ** ((level + 1) // 2)


def _dilate(tokens: torch.Tensor, level: int, grid_size: int) -> torch.Tensor:
    """2**level tokens (B, 2**level, D) -> (B, D, G, G): laid out on their (h, w) blocks in raster order, each
    repeated over its block (nearest-neighbour upsampling)."""
    h, w = _level_grid(level)
    blocks = rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)
    return F.interpolate(blocks, size=(grid_size, grid_size), mode="nearest")


def last_level_2d_queries(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Decoder queries from the finest group of 1D tokens (official `last_level_2d_query_init`).

    The last 2**(n-1) of T = 2**n tokens (the mean of the two global tokens when T = 2) cover the grid as in
    `multi_level_queries`, so each 2D query starts from the token that pooled its region.

    Args:
        x: (B, T, D) embedded latent tokens.
    Returns:
        (B, G*G, D).
    """
    n_level = round(math.log2(x.shape[1]))
    if 2**n_level != x.shape[1] or n_level < 1:
        raise ValueError(f"last-level 2D query init needs a power-of-two number of tokens >= 2, got {x.shape[1]}")
    last = x[:, :2].mean(dim=1, keepdim=True) if n_level == 1 else x[:, -(2 ** (n_level - 1)):]
    return rearrange(_dilate(last, n_level - 1 if n_level > 1 else 0, grid_size), "b d gh gw -> b (gh gw) d")


def multi_level_2d_queries(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Decoder queries averaged over levels (official `multi_level_2d_query_init`), (B, T, D) -> (B, G*G, D).

    Level 0 is the mean of the first two tokens; level l >= 1 lays out tokens [0, 2**l) on its 2**l blocks, as the
    official code does (its slice start is reset to 0 each level, so level l re-reads the first tokens rather than
    group l's). The n levels are summed and divided by n.
    """
    n_level = round(math.log2(x.shape[1]))
    if 2**n_level != x.shape[1] or n_level < 1:
        raise ValueError(f"multi-level 2D query init needs a power-of-two number of tokens >= 2, got {x.shape[1]}")
    total = _dilate(x[:, :2].mean(dim=1, keepdim=True), 0, grid_size)
    for level in range(1, n_level):
        total = total + _dilate(x[:, : 2**level], level, grid_size)
    return rearrange(total / n_level, "b d gh gw -> b (gh gw) d")


def causal_query_mask(num_tokens: int, causal_type: str, device: torch.device | None = None) -> torch.Tensor:
    """Self-attention mask of the 1D encoder's queries, (T, T) bool with True = masked (official `get_attn_mask`).

    "per-token": token i attends to tokens 0..i. "per-level": tokens are grouped into levels [0, 2), [2, 4), [4, 8),
    ... and attend to their own level and all earlier ones, so every prefix of 2**k tokens is self-contained.
    """
    if causal_type == "per-token":
        return ~torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device).tril()
    if causal_type != "per-level":
        raise ValueError(f"unknown causal_type '{causal_type}': use 'per-token' or 'per-level'")
    mask = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device)
    for level in range(round(math.log2(num_tokens)) + 1):
        start, end = (0 if level == 0 else 2**level), 2 ** (level + 1)
        mask[start:end, :end] = False
    return mask


def make_distill_mlp(width: int, out_dim: int, distill_depth: int, num_layers: int) -> nn.Sequential:
    """REPA-style projector from decoder states (D) to the teacher's features (Dt): Linear-SiLU-Linear-SiLU-Linear
    with hidden width 4D (keys `distill_mlp.{0,2,4}`)."""
    if not 1 <= distill_depth <= num_layers:
        raise ValueError(f"distill_depth {distill_depth} must be in 1..{num_layers} (decoder layers)")
    return nn.Sequential(nn.Linear(width, width * 4), nn.SiLU(), nn.Linear(width * 4, width * 4), nn.SiLU(),
                         nn.Linear(width * 4, out_dim))


def _pos_table(rows: int, width: int) -> nn.Parameter:
    """Learned absolute positions (rows, 1, D), init width**-0.5 * N(0, 1) (official layout, sequence-first)."""
    return nn.Parameter(width**-0.5 * torch.randn(rows, 1, width))


def _tokens(pos: nn.Parameter) -> torch.Tensor:
    return pos.transpose(0, 1)  # (rows, 1, D) -> (1, rows, D), broadcast over the batch


class QFormerEncoder(nn.Module):
    """2D feature map (B, Cz, G, G) -> latent tokens (B, Cz, 1, L) (the official "fake 2D" layout).

    Args:
        query_init: "multi_level" (all released 1D configs), "learnable" (`query_1d`) or "global" (global
            mean repeated L times).
    """

    def __init__(self, grid_size: int, width: int, num_layers: int, num_heads: int, num_latent_tokens: int,
                 token_size: int, dropout: float = 0.0, query_init: str = "multi_level",
                 use_qk_norm: bool = False) -> None:
        super().__init__()
        self.grid_size, self.width, self.num_latent_tokens, self.query_init = grid_size, width, num_latent_tokens, query_init
        self.encoder_embed = nn.Linear(token_size, width)
        self.ln_pre = nn.LayerNorm(token_size)
        self.positional_embedding = _pos_table(grid_size**2, width)
        self.latent_token_positional_embedding = _pos_table(num_latent_tokens, width)
        if query_init == "learnable":
            self.query_1d = _pos_table(num_latent_tokens, width)
        else:
            self.global_proj = nn.Linear(width, width)
        self.transformer = nn.ModuleList(
            [QFormerLayer(width, num_heads, 4.0, dropout, use_qk_norm) for _ in range(num_layers)]
        )
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, kernel_size=1)

    def forward(self, s: torch.Tensor, return_feat: bool = False, num_tokens: int | None = None,
                causal_type: str | None = None) -> torch.Tensor:
        """s (B, Cz, G, G) -> (B, Cz, 1, T); with `return_feat`, the pre-`conv_out` features (B, D, 1, T).

        Args:
            num_tokens: T, keep only the first T of the L queries (default: all L).
            causal_type: None (queries attend to each other freely), "per-token" or "per-level" (`causal_query_mask`).
        """
        b = s.shape[0]
        t = self.num_latent_tokens if num_tokens is None else num_tokens
        if not 1 <= t <= self.num_latent_tokens:
            raise ValueError(f"num_tokens {t} must be in 1..{self.num_latent_tokens} (num_latent_tokens)")
        x = self.encoder_embed(self.ln_pre(rearrange(s, "b c gh gw -> b (gh gw) c")))  # -> (B, G*G, D)
        if self.query_init == "multi_level":
            grid = rearrange(x, "b (gh gw) d -> b d gh gw", gh=self.grid_size)
            queries = self.global_proj(multi_level_queries(grid, self.num_latent_tokens))  # (B, L, D)
        elif self.query_init == "learnable":
            queries = _tokens(self.query_1d).expand(b, -1, -1).to(x.dtype)
        else:
            queries = self.global_proj(x.mean(dim=1, keepdim=True)).expand(-1, self.num_latent_tokens, -1)
        queries = queries[:, :t]  # (B, L, D) -> (B, T, D): the first T queries (all of them unless a prefix is asked)
        pos = _tokens(self.positional_embedding).to(x.dtype)  # (1, G*G, D)
        query_pos = _tokens(self.latent_token_positional_embedding)[:, :t].to(x.dtype)  # (1, T, D)
        mask = None if causal_type is None else causal_query_mask(t, causal_type, x.device)
        memory_with_pos = x + pos  # identical for every layer: computed once
        for layer in self.transformer:
            queries = layer(queries, x, pos, query_pos, memory_with_pos=memory_with_pos, tgt_mask=mask)
        h = rearrange(self.ln_post(queries), "b t d -> b d 1 t")  # tokens as a 1 x T "image" for conv_out
        return h if return_feat else self.conv_out(h)


class QFormerDecoder(nn.Module):
    """Latent tokens (B, Cz, 1, L) -> 2D feature map (B, Cz, G, G), plus the distill features.

    Args:
        distill_depth: 1-indexed layer whose output feeds `distill_mlp` (None: no MLP).
        out_inner_dim: Dt, the teacher's feature width.
        query_init: how the G*G queries start: "first_token" (copies of the first latent token; released configs),
            "learnable" (`q_2d`), "last_level" (`last_level_2d_queries`) or "multi_level" (`multi_level_2d_queries`).
    """

    def __init__(self, grid_size: int, width: int, num_layers: int, num_heads: int, num_latent_tokens: int,
                 token_size: int, dropout: float = 0.0, distill_depth: int | None = None, out_inner_dim: int = 768,
                 query_init: str = "first_token", use_qk_norm: bool = False) -> None:
        super().__init__()
        self.grid_size, self.width, self.distill_depth, self.query_init = grid_size, width, distill_depth, query_init
        self.decoder_embed = nn.Linear(token_size, width)
        self.ln_pre = nn.LayerNorm(token_size)
        if query_init == "learnable":
            self.q_2d = _pos_table(grid_size**2, width)
        self.positional_embedding = _pos_table(grid_size**2, width)
        self.latent_token_positional_embedding = _pos_table(num_latent_tokens, width)
        self.transformer = nn.ModuleList(
            [QFormerLayer(width, num_heads, 4.0, dropout, use_qk_norm) for _ in range(num_layers)]
        )
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, kernel_size=3, padding=1)
        if distill_depth is not None:
            self.distill_mlp = make_distill_mlp(width, out_inner_dim, distill_depth, num_layers)

    def forward(self, quant: torch.Tensor, ret_inner_feat: bool = False,
                return_feat: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """quant (B, Cz, 1, L) -> (rec_spatial (B, Cz, G, G), inner (B, G*G, Dt) or None).

        With `return_feat`, stops after layer `distill_depth` and returns (None, raw states (B, G*G, D)).
        """
        b, _, _, w = quant.shape  # (B, Cz, 1, L)
        x = self.decoder_embed(self.ln_pre(rearrange(quant, "b c h l -> b l (c h)")))  # h = 1 -> (B, L, D)
        n = self.grid_size**2
        if self.query_init == "learnable":
            queries = _tokens(self.q_2d).expand(b, -1, -1).to(x.dtype)
        elif self.query_init == "last_level":
            queries = last_level_2d_queries(x, self.grid_size)
        elif self.query_init == "multi_level":
            queries = multi_level_2d_queries(x, self.grid_size)
        else:
            queries = x[:, :1].expand(-1, n, -1)  # (B, 1, D) -> (B, G*G, D)
        query_pos = _tokens(self.positional_embedding).to(x.dtype)  # (1, G*G, D)
        pos = _tokens(self.latent_token_positional_embedding)[:, :w].to(x.dtype)  # (1, L, D)
        memory_with_pos = x + pos
        inner = None
        for i, layer in enumerate(self.transformer, start=1):
            queries = layer(queries, x, pos, query_pos, memory_with_pos=memory_with_pos)
            if i == self.distill_depth:
                if return_feat:
                    return None, queries
                if ret_inner_feat:
                    inner = self.distill_mlp(queries)
        out = rearrange(self.ln_post(queries), "b (gh gw) d -> b d gh gw", gh=self.grid_size)
        return self.conv_out(out), inner


class ViTEncoder2D(nn.Module):
    """2D-token encoder: (B, Cz, G, G) -> (B, Cz, G, G).

    Args:
        layer_type: "TransformerLayer" (plain ViT blocks, positions added once) or "TransformerDecoderLayer"
            (DETR layers attending to their own current states, positions added to queries and keys each layer).
    """

    def __init__(self, grid_size: int, width: int, num_layers: int, num_heads: int, token_size: int,
                 dropout: float = 0.0, layer_type: str = "TransformerDecoderLayer", use_qk_norm: bool = False,
                 out_kernel: int = 1, embed_name: str = "encoder_embed") -> None:
        super().__init__()
        if layer_type not in ("TransformerLayer", "TransformerDecoderLayer"):
            raise ValueError(f"transformer_layer_type must be 'TransformerLayer' or 'TransformerDecoderLayer', "
                             f"got '{layer_type}'")
        self.grid_size, self.width, self.layer_type, self.embed_name = grid_size, width, layer_type, embed_name
        setattr(self, embed_name, nn.Linear(token_size, width))
        self.ln_pre = nn.LayerNorm(token_size)
        self.positional_embedding = _pos_table(grid_size**2, width)
        layer_cls = ViTLayer if layer_type == "TransformerLayer" else QFormerLayer
        self.transformer = nn.ModuleList(
            [layer_cls(width, num_heads, 4.0, dropout, use_qk_norm) for _ in range(num_layers)]
        )
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, kernel_size=out_kernel, padding=out_kernel // 2)

    def _run_layers(self, x: torch.Tensor, keep: int | None = None,
                    stop_at_keep: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the layers on (B, G*G, D); also return the state after layer `keep` (1-indexed)."""
        pos = _tokens(self.positional_embedding).to(x.dtype)  # (1, G*G, D)
        kept = None
        if self.layer_type == "TransformerLayer":
            x = x + pos
        for i, layer in enumerate(self.transformer, start=1):
            x = layer(x) if self.layer_type == "TransformerLayer" else layer(x, x, pos, pos)
            if i == keep:
                kept = x
                if stop_at_keep:
                    break
        return x, kept

    def _embed(self, z: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.embed_name)(self.ln_pre(rearrange(z, "b c gh gw -> b (gh gw) c")))  # (B, G*G, D)

    def _unflatten(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.ln_post(x), "b (gh gw) d -> b d gh gw", gh=self.grid_size)

    def forward(self, s: torch.Tensor, return_feat: bool = False) -> torch.Tensor:
        x, _ = self._run_layers(self._embed(s))
        h = self._unflatten(x)
        return h if return_feat else self.conv_out(h)


class ViTDecoder2D(ViTEncoder2D):
    """2D-token decoder: (B, Cz, G, G) -> (B, Cz, G, G), conv_out 3x3, plus distill features after a layer."""

    def __init__(self, grid_size: int, width: int, num_layers: int, num_heads: int, token_size: int,
                 dropout: float = 0.0, layer_type: str = "TransformerDecoderLayer", use_qk_norm: bool = False,
                 distill_depth: int | None = None, out_inner_dim: int = 768) -> None:
        super().__init__(grid_size, width, num_layers, num_heads, token_size, dropout, layer_type, use_qk_norm,
                         out_kernel=3, embed_name="decoder_embed")
        self.distill_depth = distill_depth
        if distill_depth is not None:
            self.distill_mlp = make_distill_mlp(width, out_inner_dim, distill_depth, num_layers)

    def forward(self, quant: torch.Tensor, ret_inner_feat: bool = False,  # type: ignore[override]
                return_feat: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """quant (B, Cz, G, G) -> (rec_spatial (B, Cz, G, G), inner (B, G*G, Dt) or None); see QFormerDecoder."""
        x = self._embed(quant)
        if return_feat:
            return None, self._run_layers(x, keep=self.distill_depth, stop_at_keep=True)[1]
        x, kept = self._run_layers(x, keep=self.distill_depth if ret_inner_feat else None)
        inner = self.distill_mlp(kept) if kept is not None else None
        return self.conv_out(self._unflatten(x)), inner
