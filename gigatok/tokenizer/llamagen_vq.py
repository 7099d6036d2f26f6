"""LlamaGen's CNN VQ tokenizers `VQ-16` and `VQ-8` (FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py).

LlamaGen's released class-conditional GPTs (`c2i_*.pt`, our `--gpt-2d` / `rope_2d` GPTs) model the codes of these
tokenizers: 16384 codes of dimension 8 (l2-normalised), one per cell of the (S/f) x (S/f) grid in raster order, with
f = 16 (VQ-16, ch_mult (1, 1, 2, 2, 4)) or f = 8 (VQ-8, ch_mult (1, 2, 2, 4)). At 256 px VQ-16 gives 16 x 16 = 256
codes per image, VQ-8 gives 32 x 32 = 1024.

Module names and state_dict keys are LlamaGen's (`encoder.conv_blocks.{i}.res.{j}` / `.attn.{j}` / `.downsample`,
`encoder.mid.{0,1,2}` = ResnetBlock, AttnBlock, ResnetBlock, `decoder.conv_blocks.{i}.upsample`, `quantize.embedding`,
`quantize.codebook_used`, `quant_conv`, `post_quant_conv`), so `vq_ds16_c2i.pt` / `vq_ds8_c2i.pt` (key "model") load
strictly. Differences from the hybrid CNN of `cnn.py`: self-attention blocks after every ResnetBlock of the
lowest-resolution level and in the middle, and no token transformer between the CNN and the quantizer.

The computation is LlamaGen's; deviations (values agree to float rounding):
- attention runs through `F.scaled_dot_product_attention` (same softmax(q k^T / sqrt(C)) v);
- the quantizer is our `VectorQuantizer` (LlamaGen's maths in fp32: normalise, argmin of the expanded squared
  distance, straight-through), whose usage window shifts by whole batches as LlamaGen's does;
- only GroupNorm (LlamaGen's default `norm_type='group'`; no released file uses 'batch').

With `quantizer: fsq` (levels [...], codebook_embed_dim = len(levels)) these classes are the official GigaTok FSQ
tokenizers `FSQ-16` / `FSQ-8` (tokenizer/tokenizer_image/fsq/fsq_model.py: the same encoder, decoder and 1x1 convs,
quantizer keys `quantize.codebook_used` only), which `--quant-way fsq --fsq-model FSQ-16` loads.

Shape letters: B batch; S image side (square images); f downsampling factor 2**(len(ch_mult) - 1); G latent grid
side S/f; L = G*G codes per image; K codebook size; Dc code dim; Cz z_channels; C channels of a feature map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import VQModelArgs
from gigatok.layers.conv import (
    Downsample,
    NearestUpsample,
    ResnetBlock,
    group_norm,
    silu,
)
from gigatok.tokenizer.quantizer import QuantizerLosses
from gigatok.tokenizer.vq_model import TokenizerOutput, build_tokenizer_quantizer


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with a GroupNorm pre-norm and a residual (LlamaGen/taming
    `AttnBlock`): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_n = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head of width C, scale C**-0.5 (SDPA's default)
        q, k, v = (proj(x_n).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)  # -> (B, C, H, W)
        return x + self.proj_out(out)


class LlamaGenEncoder(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, Cz, G, G).

    Args:
        ch: base channels (LlamaGen: 128); level i has ch * ch_mult[i] channels.
        ch_mult: per-level multipliers; every level but the last halves the resolution.
        num_res_blocks: ResnetBlocks per level (LlamaGen: 2); the last level follows each with an AttnBlock.
        channels_last: layout of weights and activations (see `gigatok.tokenizer.cnn`).
    """

    def __init__(self, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, dropout: float = 0.0, channels_last: bool = True) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            last = level == len(ch_mult) - 1
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if last:
                    block.attn.append(AttnBlock(block_in))
            if not last:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x.contiguous(memory_format=self.memory_format))
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(silu(self.norm_out(h)))


class LlamaGenDecoder(nn.Module):
    """(B, Cz, G, G) -> (B, 3, S, S), not clamped. Levels run from the last multiplier to the first; the first
    (lowest-resolution) level follows each of its num_res_blocks + 1 ResnetBlocks with an AttnBlock."""

    def __init__(self, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, dropout: float = 0.0, channels_last: bool = True) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.conv_blocks = nn.ModuleList()
        for level, mult in enumerate(reversed(ch_mult)):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if level == 0:
                    block.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                block.upsample = NearestUpsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv (for the adaptive GAN-loss weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z.contiguous(memory_format=self.memory_format))
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(silu(self.norm_out(h)))


class LlamaGenVQModel(nn.Module):
    """LlamaGen `VQModel`: encoder -> quant_conv -> VQ -> post_quant_conv -> decoder, with the public interface of
    our hybrid tokenizers (`encode`, `decode`, `decode_code`, `encode_to_codes`, `num_tokens`, `forward` ->
    `TokenizerOutput`), so reconstruction, code extraction, sampling and `train_vq` use it unchanged.

    Args:
        args: `model.init_args`; used: codebook_*, commit_loss_beta, entropy_loss_ratio, entropy_temperature,
            entropy_all_ranks, rot, cnn_ch, encoder_ch_mult / decoder_ch_mult, num_res_blocks, z_channels,
            dropout_p, image_size, cnn_channels_last. The Q-Former fields are ignored.
        causal_type: must be None (no token order to make causal).
        factor: the downsampling the registry name promises (16 for VQ-16), checked against ch_mult; None: any.
    """

    def __init__(self, args: VQModelArgs, causal_type: str | None = None, factor: int | None = None) -> None:
        super().__init__()
        levels = len(args.encoder_ch_mult) - 1
        if factor is not None and 2**levels != factor:
            raise ValueError(f"VQ-{factor} downsamples by {factor}, so encoder_ch_mult needs "
                             f"{factor.bit_length()} entries, got {list(args.encoder_ch_mult)} (factor {2**levels})")
        if len(args.decoder_ch_mult) != len(args.encoder_ch_mult):
            raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length (same grid)")
        if args.image_size % 2**levels:
            raise ValueError(f"image_size {args.image_size} must be divisible by the CNN downsampling 2**{levels}")
        if causal_type is not None:
            raise ValueError(f"causal_settings.causal_type '{causal_type}' needs the 1D tokenizer (VQVitModelPlus)")
        extras = [name for name in ("adaptive_gn", "d2s_up") if getattr(args, name)]
        if extras or args.distill_depth is not None:
            raise ValueError(f"LlamaGen's VQ has no {extras or 'distill_depth (semantic regularisation)'}; set "
                             "adaptive_gn/d2s_up to False and distill_depth to null")
        self.args = args
        self.causal_type = None
        self.image_size = args.image_size
        self.grid_size = args.image_size // 2**levels
        channels_last = args.cnn_channels_last is not False
        self.encoder = LlamaGenEncoder(args.cnn_ch, tuple(args.encoder_ch_mult), args.num_res_blocks,
                                       args.z_channels, args.dropout_p, channels_last)
        self.decoder = LlamaGenDecoder(args.cnn_ch, tuple(args.decoder_ch_mult), args.num_res_blocks,
                                       args.z_channels, args.dropout_p, channels_last)
        # `model.init_args.quantizer` (LlamaGen: vq); with fsq this is the official FSQ tokenizer (fsq/fsq_model.py)
        self.quantize = build_tokenizer_quantizer(args)
        self.codebook_size: int = self.quantize.codebook_size  # K (implicit for lfq / fsq)
        self.quant_conv = nn.Conv2d(args.z_channels, args.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(args.codebook_embed_dim, args.z_channels, 1)

    # No token transformer: these exist so that code written for the hybrid tokenizers (e.g. dropping the decoding
    # half in `load_frozen_encoder`) needs no special case.
    token_encoder = None
    token_decoder = None

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(G, G): codes are in raster order over the grid."""
        return self.grid_size, self.grid_size

    @property
    def num_tokens(self) -> int:
        """L = G*G codes per image."""
        return self.grid_size * self.grid_size

    def encode(self, images: torch.Tensor, num_tokens: int | None = None, replace_ratio: float | None = None
               ) -> tuple[torch.Tensor, QuantizerLosses, dict[str, torch.Tensor]]:
        """images (B, 3, S, S) in [-1, 1] -> (quant (B, Dc, G, G) float32, losses, info with `codes` (B, L) int64,
        `enc_cnn` (B, Cz, G, G) and `pre_quant` (B, Dc, G, G)); see `_HybridTokenizer.encode`."""
        if num_tokens is not None:
            raise ValueError("LlamaGen's VQ always encodes all G*G tokens; a token prefix needs the 1D tokenizer")
        s = self.encoder(images)  # (B, 3, S, S) -> (B, Cz, G, G)
        h = self.quant_conv(s)  # -> (B, Dc, G, G)
        quant, losses, codes = self.quantize(h, replace_ratio=replace_ratio)  # codes (B, G*G) raster order
        return quant, losses, {"codes": codes, "enc_cnn": s, "pre_quant": h}

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """quant (B, Dc, G, G) -> pixels (B, 3, S, S), roughly in [-1, 1] but not clamped."""
        return self.decoder(self.post_quant_conv(quant.to(self.post_quant_conv.weight.dtype)))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, L) or (B*L,) int64 in raster order -> pixels (B, 3, S, S) (LlamaGen's `decode_code` with
        qzshape (B, Dc, G, G))."""
        return self.decode(self.quantize.lookup(codes, self.latent_shape))

    def encode_to_codes(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """images (B, 3, S, S) in [-1, 1] -> codes (B, L) int64 in [0, K), raster order (inference only)."""
        if num_tokens is not None:
            raise ValueError("LlamaGen's VQ always encodes all G*G tokens; a token prefix needs the 1D tokenizer")
        return self.quantize.quantize_to_codes(self.quant_conv(self.encoder(images)))

    def forward(self, images: torch.Tensor, rec_loss: bool = True, ret_inner_feat: bool = False,
                num_tokens: int | None = None, replace_ratio: float | None = None) -> TokenizerOutput:
        """Training forward: (B, 3, S, S) -> `TokenizerOutput` (no auxiliary shortcut, no distill features)."""
        if ret_inner_feat:
            raise ValueError("LlamaGen's VQ has no distill features: set trainer.distill_loss to False")
        quant, losses, info = self.encode(images, num_tokens, replace_ratio)
        return TokenizerOutput(recon=self.decode(quant), quant_losses=losses, codes=info["codes"])


class LlamaGenVQ16(LlamaGenVQModel):
    """`VQ-16`: ch_mult (1, 1, 2, 2, 4), 16x downsampling."""

    def __init__(self, args: VQModelArgs, causal_type: str | None = None) -> None:
        super().__init__(args, causal_type, factor=16)


class LlamaGenVQ8(LlamaGenVQModel):
    """`VQ-8`: ch_mult (1, 2, 2, 4), 8x downsampling."""

    def __init__(self, args: VQModelArgs, causal_type: str | None = None) -> None:
        super().__init__(args, causal_type, factor=8)


# Model classes by LlamaGen's `VQ_models` names (the config's `model.model_cls`).
LLAMAGEN_VQ_MODELS: dict[str, type[LlamaGenVQModel]] = {"VQ-16": LlamaGenVQ16, "VQ-8": LlamaGenVQ8}
