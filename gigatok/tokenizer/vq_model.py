"""The GigaTok hybrid tokenizer: CNN encoder -> Q-Former -> VQ -> Q-Former -> CNN decoder.

`VQVitModelPlus` is the 1D tokenizer (L latent tokens in coarse-to-fine Q-Former query order) and
`VQVitModel2DPlus` the 2D variant (G x G tokens in raster order); both keep the official class names, module names
and state_dict keys, so official checkpoints load strictly.

Shape letters: B batch; S image side (square images, H = W = S); f CNN downsampling factor; G latent grid side
(G*G 2D tokens); L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook size
(= GPT vocabulary); Dc code dim (codebook_embed_dim); Cz z_channels; D width; Dt teacher width.
Here S = image_size = G*f, D is the token decoder's width and Dt the distill MLP's output width (the teacher's).
Latent maps are (B, Dc, *latent_shape) or (B, Cz, *latent_shape), with `latent_shape` = (1, L) for the 1D
tokenizer and (G, G) for the 2D one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import TRANSFORMER_SIZES, VQModelArgs
from gigatok.tokenizer.cnn import Decoder, Encoder
from gigatok.tokenizer.qformer import (
    QFormerDecoder,
    QFormerEncoder,
    ViTDecoder2D,
    ViTEncoder2D,
)
from gigatok.tokenizer.quantizer import QuantizerLosses
from gigatok.tokenizer.quantizer_zoo import build_quantizer

# Official options that no released config switches on; they load from YAML but are not built.
_UNSUPPORTED = (
    "use_rope", "rope_1d", "rope_2d", "res_up_down_sample", "downsample_match_channel", "upsample_match_channel",
    "res_codebook_updown_sample", "downsample_improve", "stochastic", "encoder_2d_distill", "with_prior_model",
    "use_attn",
)


def build_tokenizer_quantizer(args: VQModelArgs) -> nn.Module:
    """The `quantize` module of a tokenizer: `args.resolved_quantizer()` with its parameters taken from the
    config fields (see `VQModelArgs`); `vq` is built exactly as before (same parameters, same RNG draws)."""
    name = args.resolved_quantizer()
    params: dict[str, object] = {"codebook_size": args.codebook_size, "code_dim": args.codebook_embed_dim,
                                 "show_usage": args.codebook_show_usage}
    if name == "fsq":
        return build_quantizer(name, levels=list(args.levels or ()), **params)
    params.update(beta=args.commit_loss_beta, entropy_loss_ratio=args.entropy_loss_ratio,
                  entropy_temperature=args.entropy_temperature, entropy_all_ranks=args.entropy_all_ranks)
    if name in ("vq", "simvq"):
        params.update(l2_norm=args.codebook_l2_norm, rot=args.rot)
    if name == "simvq":
        params.update(codebook_transform=args.codebook_transform or "linear", freeze_codebook=args.freeze_codebook)
    return build_quantizer(name, **params)


@dataclass
class TokenizerOutput:
    """Result of a training forward.

    Attributes:
        recon: (B, 3, S, S) reconstruction, not clamped.
        quant_losses: vq / commit / entropy losses and codebook usage of the quantizer.
        codes: (B, L) int64 in [0, K).
        recon_direct: (B, 3, S, S) CNN decoder applied to the CNN encoder output (auxiliary shortcut), or None.
        fea_rec_loss: weighted distance between the CNN encoder output and the Q-Former decoder output (0 if off).
        inner_feat: (B, G*G, Dt) distill-MLP features for semantic regularisation, or None.
    """

    recon: torch.Tensor
    quant_losses: QuantizerLosses
    codes: torch.Tensor
    recon_direct: torch.Tensor | None = None
    fea_rec_loss: torch.Tensor | float = 0.0
    inner_feat: torch.Tensor | None = None


def _transformer_size(name: str | None, role: str) -> tuple[int, int, int]:
    if name not in TRANSFORMER_SIZES:
        raise ValueError(f"unknown {role} size '{name}'; choose one of {sorted(TRANSFORMER_SIZES)}")
    return TRANSFORMER_SIZES[name]


def _init_weights(module: nn.Module) -> None:
    """Official init: trunc-normal(0.02) Linear/Conv weights with zero bias, LayerNorm 1/0. The attention
    in_proj keeps PyTorch's xavier init and positional tables their width**-0.5 scaling."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def distinct_token_init(tokenizer: nn.Module) -> None:
    """`token_init: distinct`: make the latent tokens differ at initialisation, across tokens and across images.

    With the official init the 1D encoder's queries (multi-level pooled features through `global_proj`, trunc-normal
    0.02) have a gain of 0.02 * sqrt(width): about 0.6 at the released widths, 0.16 at width 64, where the shared
    part of every token (the near-uniform cross-attention's global average, `quant_conv`'s default bias) drowns the
    pooled content: all tokens of an image point the same way, a few codes take everything and the codebook
    collapses before the decoder can learn. Measured on the 16-token demo tokenizer (width 64) at initialisation:
    9 distinct codes over 128 digits (the 2D tokenizer: 125); std width**-0.5 for `global_proj` (gain 1 at every
    width) and a zero `quant_conv` bias: 101.
    """
    encoder = getattr(tokenizer, "s2to1encoder", None)
    if encoder is not None and hasattr(encoder, "global_proj"):
        nn.init.normal_(encoder.global_proj.weight, std=encoder.width**-0.5)
    nn.init.zeros_(tokenizer.quant_conv.bias)


class _HybridTokenizer(nn.Module):
    """Shared body of the 1D and 2D tokenizers; subclasses build `token_encoder` / `token_decoder`."""

    def __init__(self, args: VQModelArgs, causal_type: str | None = None) -> None:
        super().__init__()
        on = [name for name in _UNSUPPORTED if getattr(args, name)]
        if on:
            raise ValueError(f"tokenizer options {on} are experimental/deprecated in the official code and not "
                             "implemented here; set them to False (no released config uses them)")
        if args.distill_depth is not None and args.out_inner_dim is None:
            raise ValueError("out_inner_dim is unresolved (null): build through gigatok.builders.build_tokenizer, "
                             "which fills in the teacher's width, or set it explicitly")
        levels = len(args.encoder_ch_mult) - 1
        if args.image_size % 2**levels:
            raise ValueError(f"image_size {args.image_size} must be divisible by the CNN downsampling 2**{levels}")
        if len(args.decoder_ch_mult) != len(args.encoder_ch_mult):
            raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length (same grid)")
        if args.model_size is not None and (args.encoder_size or args.decoder_size):
            raise ValueError("set either model_size or encoder_size/decoder_size, not both (official rule)")
        self.args = args
        self.causal_type = causal_type  # model.causal_settings.causal_type: how the 1D encoder's queries attend
        self.image_size = args.image_size
        self.grid_size = args.image_size // 2**levels
        self.encoder = Encoder(args.cnn_ch, tuple(args.encoder_ch_mult), args.num_res_blocks, args.z_channels,
                               args.dropout_p, channels_last=args.cnn_channels_last is not False)
        self._build_token_transformers(args)
        self.decoder = Decoder(args.cnn_ch, tuple(args.decoder_ch_mult), args.num_res_blocks, args.z_channels,
                               args.dropout_p, adaptive_gn=args.adaptive_gn, d2s_up=args.d2s_up,
                               channels_last=args.cnn_channels_last is not False)
        self.apply(_init_weights)  # before the quantizer and the 1x1 convs, which keep their own init (official)
        self.quantize = build_tokenizer_quantizer(args)  # `model.init_args.quantizer`: vq | simvq | ibq | lfq | fsq
        self.codebook_size: int = self.quantize.codebook_size  # K, the GPT vocabulary (implicit for lfq / fsq)
        self.quant_conv = nn.Conv2d(args.z_channels, args.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(args.codebook_embed_dim, args.z_channels, 1)
        if args.token_init == "distinct":
            distinct_token_init(self)

    # -- subclass hooks -------------------------------------------------------------------------------------------
    def _build_token_transformers(self, args: VQModelArgs) -> None:
        raise NotImplementedError

    @property
    def token_encoder(self) -> nn.Module:
        raise NotImplementedError

    @property
    def token_decoder(self) -> nn.Module:
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(height, width) of the quantized latent map: (1, L) for 1D tokens, (G, G) for 2D."""
        raise NotImplementedError

    def _tokenize(self, s: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """CNN features (B, Cz, G, G) -> token features (B, Cz, *latent_shape); `num_tokens`: 1D prefixes only."""
        raise NotImplementedError

    def _codes_shape(self, codes: torch.Tensor) -> tuple[int, int]:
        """Latent shape of `codes` (B, T): the full latent_shape (1D subclasses also accept a prefix T < L)."""
        return self.latent_shape

    # -- public API -------------------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """L, the number of codes per image."""
        h, w = self.latent_shape
        return h * w

    def encode(self, images: torch.Tensor, num_tokens: int | None = None, replace_ratio: float | None = None
               ) -> tuple[torch.Tensor, QuantizerLosses, dict[str, torch.Tensor]]:
        """Encode images to quantized latents, with the quantizer's losses (training and inspection).

        Args:
            images: (B, 3, S, S) float in [-1, 1], S = image_size.
            num_tokens: 1D tokenizer only: encode to the first T tokens (latent_shape (1, T)); default all L.
            replace_ratio: training only, the chance that a token keeps its continuous value instead of its
                codeword (official `random_mix_reg`); None: never.

        Returns:
            quant: (B, Dc, *latent_shape) float32, the codewords of `codes` (unit-norm Dc-vectors with
                `codebook_l2_norm`, as in every released config); its gradient is the straight-through or
                rotation-trick one.
            losses: `QuantizerLosses` (float32 scalars; zeros in eval mode).
            info: `codes` (B, L) int64 in [0, K), raster order for 2D; `enc_cnn` (B, Cz, G, G), the CNN encoder
                output (unbounded, in the model's or autocast dtype); `pre_quant` (B, Dc, *latent_shape), the
                quantizer input before its l2 normalisation (same dtype).
        """
        s = self.encoder(images)  # (B, 3, S, S) -> (B, Cz, G, G), G = S / f
        # token_encoder: (B, Cz, G, G) -> (B, Cz, *latent_shape); quant_conv (1x1): -> (B, Dc, *latent_shape)
        h = self.quant_conv(self._tokenize(s, num_tokens))
        # quantize: (B, Dc, *latent_shape) -> flattened (B*L, Dc) -> nearest codewords, reshaped back to
        # quant (B, Dc, *latent_shape); codes (B*L,) -> (B, L)
        quant, losses, codes = self.quantize(h, replace_ratio=replace_ratio)
        return quant, losses, {"codes": codes, "enc_cnn": s, "pre_quant": h}

    def decode_with_features(self, quant: torch.Tensor, ret_inner_feat: bool = False
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """quant (B, Dc, *latent_shape) -> (pixels (B, 3, S, S), rec_spatial (B, Cz, G, G), inner (B, G*G, Dt) or
        None)."""
        rec_spatial, inner = self.token_decoder(self.post_quant_conv(quant.to(self.post_quant_conv.weight.dtype)),
                                                ret_inner_feat=ret_inner_feat)
        return self.decoder(rec_spatial), rec_spatial, inner

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """quant (B, Dc, *latent_shape) -> pixels (B, 3, S, S), roughly in [-1, 1] but not clamped."""
        return self.decode_with_features(quant)[0]

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, L) or (B*L,) int64 -> pixels (B, 3, S, S), decoded from the exact normalised codewords.

        1D tokenizer: (B, T) codes with T < L (a prefix, see `encode_to_codes(num_tokens=T)`) decode too."""
        return self.decode(self.quantize.lookup(codes, self._codes_shape(codes)))

    def encode_to_codes(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Encode images to codes only (no losses, no rotation: inference only).

        Args:
            images: (B, 3, S, S) float in [-1, 1], S = image_size.

        Returns:
            (B, L) int64 codes in [0, K): for the 1D tokenizer in Q-Former query order (coarse to fine with the
            released multi-level query init), for the 2D one in raster order over the G x G grid. The same codes as
            `encode(images)[2]["codes"]` in eval mode. With `num_tokens` T (1D only): (B, T), the first T tokens.
        """
        # encoder: (B, 3, S, S) -> (B, Cz, G, G); token_encoder: -> (B, Cz, *latent_shape);
        # quant_conv (1x1): -> (B, Dc, *latent_shape); quantize_to_codes: permute + flatten to (B*L, Dc),
        # argmin over the K codewords -> (B*L,), view -> (B, L)
        return self.quantize.quantize_to_codes(self.quant_conv(self._tokenize(self.encoder(images), num_tokens)))

    def decoder_features(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, L) -> states of decoder layer `distill_depth` before the distill MLP, (B, G*G, D) (probing)."""
        quant = self.post_quant_conv(self.quantize.lookup(codes, self.latent_shape))
        return self.token_decoder(quant, return_feat=True)[1]

    def forward(self, images: torch.Tensor, rec_loss: bool = True, ret_inner_feat: bool = False,
                num_tokens: int | None = None, replace_ratio: float | None = None) -> TokenizerOutput:
        """Training forward.

        Args:
            images: (B, 3, S, S) in [-1, 1].
            rec_loss: also compute the auxiliary shortcut outputs (`recon_direct`, `fea_rec_loss`), as the official
                trainer does until `aux_loss_end`.
            ret_inner_feat: also return the distill-MLP features for semantic regularisation.
            num_tokens, replace_ratio: see `encode` (dynamic-length training, `random_mix_reg`).
        """
        quant, losses, info = self.encode(images, num_tokens, replace_ratio)
        recon, rec_spatial, inner = self.decode_with_features(quant, ret_inner_feat)
        out = TokenizerOutput(recon=recon, quant_losses=losses, codes=info["codes"], inner_feat=inner)
        if rec_loss:
            s = info["enc_cnn"]
            if self.args.fea_rec_loss_type == "mse":
                distance = F.mse_loss(s.detach(), rec_spatial)
            elif self.args.fea_rec_loss_type == "cosine":
                distance = 1 - F.cosine_similarity(s.detach(), rec_spatial, dim=1).mean()
            else:
                raise ValueError(f"fea_rec_loss_type must be 'mse' or 'cosine', got '{self.args.fea_rec_loss_type}'")
            out.fea_rec_loss = self.args.fea_rec_loss_weight * distance
            out.recon_direct = self.decoder(s)
        return out


def _decoder_query_init(args: VQModelArgs) -> str:
    """The 1D decoder's 2D query init from the official switches (at most one of them on)."""
    switches = {"learnable": args.learnable_2d_query_init, "last_level": args.last_level_2d_query_init,
                "multi_level": args.multi_level_2d_query_init}
    on = [name for name, flag in switches.items() if flag]
    if len(on) > 1:
        raise ValueError(f"at most one of learnable_2d_query_init, last_level_2d_query_init and "
                         f"multi_level_2d_query_init may be on, got {on}")
    return on[0] if on else "first_token"


class VQVitModelPlus(_HybridTokenizer):
    """1D tokenizer: Q-Former `s2to1encoder` (2D -> L tokens) and `s1to2decoder` (L tokens -> 2D)."""

    def _build_token_transformers(self, args: VQModelArgs) -> None:
        enc_name = args.encoder_size or args.model_size
        dec_name = args.decoder_size or args.model_size
        width, layers, heads = _transformer_size(enc_name, "encoder")
        if args.multi_level_query_init and args.learnable_1d_query_init:
            raise ValueError("multi_level_query_init and learnable_1d_query_init are mutually exclusive")
        query_init = ("multi_level" if args.multi_level_query_init
                      else "learnable" if args.learnable_1d_query_init else "global")
        self.s2to1encoder = QFormerEncoder(self.grid_size, width, layers, heads, args.num_latent_tokens,
                                           args.z_channels, args.dropout_p, query_init, args.use_qk_norm)
        width, layers, heads = _transformer_size(dec_name, "decoder")
        self.s1to2decoder = QFormerDecoder(
            self.grid_size, width, layers, heads, args.num_latent_tokens, args.z_channels, args.dropout_p,
            args.distill_depth, args.out_inner_dim,
            _decoder_query_init(args), args.use_qk_norm,
        )

    @property
    def token_encoder(self) -> nn.Module:
        return self.s2to1encoder

    @property
    def token_decoder(self) -> nn.Module:
        return self.s1to2decoder

    @property
    def latent_shape(self) -> tuple[int, int]:
        return 1, self.args.num_latent_tokens

    def _tokenize(self, s: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        return self.s2to1encoder(s, num_tokens=num_tokens, causal_type=self.causal_type)

    def _codes_shape(self, codes: torch.Tensor) -> tuple[int, int]:
        return 1, (codes.shape[-1] if codes.dim() == 2 else self.args.num_latent_tokens)


class VQVitModel2DPlus(_HybridTokenizer):
    """2D tokenizer: ViT `s2dencoder` / `s2ddecoder` on the G x G grid, codes in raster order."""

    def _build_token_transformers(self, args: VQModelArgs) -> None:
        if self.causal_type is not None:
            raise ValueError(f"causal_settings.causal_type '{self.causal_type}' needs the 1D tokenizer "
                             "(VQVitModelPlus); the 2D tokenizer has no token order to make causal")
        width, layers, heads = _transformer_size(args.encoder_size or args.model_size, "encoder")
        self.s2dencoder = ViTEncoder2D(self.grid_size, width, layers, heads, args.z_channels, args.dropout_p,
                                       args.transformer_layer_type, args.use_qk_norm)
        width, layers, heads = _transformer_size(args.decoder_size or args.model_size, "decoder")
        self.s2ddecoder = ViTDecoder2D(self.grid_size, width, layers, heads, args.z_channels, args.dropout_p,
                                       args.transformer_layer_type, args.use_qk_norm, args.distill_depth,
                                       args.out_inner_dim)

    @property
    def token_encoder(self) -> nn.Module:
        return self.s2dencoder

    @property
    def token_decoder(self) -> nn.Module:
        return self.s2ddecoder

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.grid_size, self.grid_size

    def _tokenize(self, s: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        if num_tokens is not None:
            raise ValueError("the 2D tokenizer always encodes all G*G tokens; a token prefix (num_tokens, "
                             "--mul-rec-levels) needs the 1D tokenizer")
        return self.s2dencoder(s)


# Model classes by their official `model.model_cls` name.
TOKENIZER_MODELS: dict[str, type[_HybridTokenizer]] = {
    "VQVitModelPlus": VQVitModelPlus,
    "VQVitModel2DPlus": VQVitModel2DPlus,
}
