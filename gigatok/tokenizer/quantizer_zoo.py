"""The quantizers beyond the l2 VQ, each matched to its reference, and the `QUANTIZERS` registry.

- `simvq` (`SimVQ`): the official GigaTok `VectorQuantizer(simvq=True, codebook_transform=...)`: the codebook is a
  learned map (linear, or an MLP) of a (by default frozen) embedding table; lookup, losses and gradients as `vq`.
- `ibq` (`IBQ`): SEED-Voken's `IndexPropagationQuantize`: logits z.e over all K codes, the one-hot of the argmax
  made differentiable through the softmax (hard - sg(soft) + soft), so every code receives a gradient; the double
  quantization loss |z_q - z|^2 + |sg(e) - z|^2 + beta |e - sg(z)|^2 and the optional entropy loss on the logits.
- `lfq` (`LFQ`): the official `vq/lfq.py`: sign quantization to {-1, 1}^Dc, code = sum_i [z_i > 0] 2^i (K = 2^Dc),
  beta-weighted commitment loss, entropy loss over the logits 2 z.c of all K implicit codes (temperature 0.01).
- `fsq` (`FSQ`): the quantizer of the official `fsq/fsq_model.py`: per-channel tanh bound and rounding to
  levels[i] values, renormalised to [-1, 1]; code = sum_i level_i * prod(levels[:i]) (K = prod(levels)); no loss.

Shape letters as in quantizer.py: B batch; H, W the latent map (H*W = L codes per image); K codebook size (implicit
for lfq/fsq); Dc code dim; N = B*H*W vectors. The maths runs in fp32 with autocast disabled.

Deviations from the references (none changes a value): losses are zeros in eval mode (IBQ's computes them always);
the usage window is updated in training only (FSQ's in every call) and IBQ gets one (its reference has none);
IBQ's double quantization loss is reported as vq = |z_q - z|^2 + beta |e - sg(z)|^2 and commit = |sg(e) - z|^2,
which sum to the reference's single `quant_loss`; `replace_ratio` (random_mix_reg) works for every quantizer.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.errors import UserError
from gigatok.tokenizer.quantizer import (
    USAGE_WINDOW,
    QuantizerLosses,
    VectorQuantizer,
    entropy_loss,
    replace_with_continuous,
    update_usage_window,
)


class QuantizerConfigError(UserError, ValueError):
    """A quantizer name or parameter that cannot build a quantizer."""


def _to_rows(z: torch.Tensor, code_dim: int) -> torch.Tensor:
    """(B, Dc, H, W) any float dtype -> (N, Dc) float32, b-major then raster (the order of the codes)."""
    if z.ndim != 4 or z.shape[1] != code_dim:
        raise ValueError(f"expected z of shape (B, {code_dim}, H, W), got {tuple(z.shape)}")
    return z.float().permute(0, 2, 3, 1).reshape(-1, code_dim)


def _to_map(rows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(N, Dc) -> (B, Dc, H, W); b = -1 infers B."""
    return rows.view(b, h, w, rows.shape[-1]).permute(0, 3, 1, 2)


class SimVQ(VectorQuantizer):
    """`vq` whose codebook is codebook_transform(embedding) (SimVQ, arXiv 2411.02038), l2-normalised when l2_norm.

    Args (beyond `VectorQuantizer`'s):
        codebook_transform: "linear" (Dc -> Dc, no bias; key `codebook_transform.weight`) or "mlp" (Dc -> 4Dc,
            GELU, -> Dc; keys `codebook_transform.{0,2}.{weight,bias}`), the official choices.
        freeze_codebook: keep the embedding table fixed so only the map learns (the SimVQ recipe; the official
            flag defaults to False).
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 entropy_temperature: float = 0.01, l2_norm: bool = True, show_usage: bool = True,
                 rot: bool = False, entropy_all_ranks: bool = False, codebook_transform: str = "linear",
                 freeze_codebook: bool = True) -> None:
        super().__init__(codebook_size, code_dim, beta, entropy_loss_ratio, entropy_temperature, l2_norm,
                         show_usage, rot, entropy_all_ranks)
        if codebook_transform == "linear":
            self.codebook_transform: nn.Module = nn.Linear(code_dim, code_dim, bias=False)
        elif codebook_transform == "mlp":
            self.codebook_transform = nn.Sequential(nn.Linear(code_dim, code_dim * 4), nn.GELU(),
                                                    nn.Linear(code_dim * 4, code_dim))
        else:
            raise QuantizerConfigError(f"simvq codebook_transform must be 'linear' or 'mlp', got {codebook_transform!r}")
        self.freeze_codebook = freeze_codebook
        if freeze_codebook:
            self.embedding.weight.requires_grad_(False)

    def codebook(self) -> torch.Tensor:
        """(K, Dc) float32: the mapped embedding table (normalised rows when l2_norm); differentiable in the map."""
        dtype = next(self.codebook_transform.parameters()).dtype  # the map may be held in bf16 by mixed precision
        weight = self.codebook_transform(self.embedding.weight.to(dtype)).float()
        return F.normalize(weight, dim=-1) if self.l2_norm else weight


class IBQ(nn.Module):
    """Index backpropagation quantizer (SEED-Voken `IndexPropagationQuantize`, without remapping).

    Args:
        codebook_size: K.
        code_dim: Dc.
        beta: weight of the codebook term |e - sg(z)|^2 (on the codebook side, as the reference).
        entropy_loss_ratio: weight of the entropy loss on the logits z.e (0 disables it; the reference's
            `use_entropy_loss` with its `entropy_loss_weight`).
        entropy_temperature: its softmax temperature (reference: 0.01).
        show_usage: keep the `codebook_used` window buffer.
        entropy_all_ranks: see `quantizer.entropy_loss`.
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 entropy_temperature: float = 0.01, show_usage: bool = True, entropy_all_ranks: bool = False) -> None:
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.entropy_loss_ratio, self.entropy_temperature = beta, entropy_loss_ratio, entropy_temperature
        self.show_usage, self.entropy_all_ranks = show_usage, entropy_all_ranks
        self.embedding = nn.Embedding(codebook_size, code_dim)  # the reference keeps nn.Embedding's N(0, 1) init
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def _logits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, Dc, H, W) -> rows (N, Dc), codebook (K, Dc), logits (N, K) = z.e, all float32."""
        z_n = _to_rows(z, self.code_dim)
        codebook = self.embedding.weight.float()
        return z_n, codebook, z_n @ codebook.t()

    @torch.no_grad()
    def quantize_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, Dc, H, W) -> (B, H*W) int64: the argmax of softmax(z.e), as forward."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._logits(z)[2].softmax(dim=-1).argmax(dim=-1).view(z.shape[0], -1)

    def forward(self, z: torch.Tensor, replace_ratio: float | None = None
                ) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """z (B, Dc, H, W) -> quant (B, Dc, H, W) float32 (value: the codeword; gradient: through the softmax to z
        and to every code), losses, codes (B, H*W) int64."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_n, codebook, logits = self._logits(z)  # (N, Dc), (K, Dc), (N, K)
            soft = logits.softmax(dim=-1)
            indices = soft.argmax(dim=-1)  # (N,)
            hard = torch.zeros_like(logits).scatter_(1, indices[:, None], 1.0)
            quant = (hard - soft.detach() + soft) @ codebook  # (N, K) @ (K, Dc): value hard, gradient soft

            zero = z_n.new_zeros(())
            losses = QuantizerLosses(zero, zero, zero, 0.0)
            if self.training:
                z_q = codebook[indices]  # (N, Dc): the reference's z_q_2 (hard one-hot times the codebook)
                losses.vq = F.mse_loss(quant, z_n) + self.beta * F.mse_loss(z_q, z_n.detach())
                losses.commit = F.mse_loss(z_q.detach(), z_n)
                if self.entropy_loss_ratio > 0:
                    losses.entropy = self.entropy_loss_ratio * entropy_loss(logits, self.entropy_temperature,
                                                                            self.entropy_all_ranks)
                if self.show_usage:
                    losses.usage = update_usage_window(self.codebook_used, indices, self.codebook_size)
            if replace_ratio and self.training:
                quant = replace_with_continuous(z_n, quant, replace_ratio)
        return _to_map(quant, b, h, w), losses, indices.view(b, h * w)

    def lookup(self, codes: torch.Tensor, latent_shape: tuple[int, int]) -> torch.Tensor:
        """Codes (B, H*W) or (B*H*W,) -> codewords (B, Dc, H, W) float32."""
        rows = self.embedding.weight.float()[codes.reshape(-1)]  # (B*H*W, Dc)
        return _to_map(rows, -1, *latent_shape).contiguous()


class LFQ(nn.Module):
    """Lookup-free quantizer (official `vq/lfq.py`, one codebook, no token factorization, deterministic signs).

    Args:
        codebook_size: K, must be 2**code_dim (the official asserts a power of two with log2(K) = Dc).
        code_dim: Dc, the number of bits.
        beta: commitment loss weight (beta |z - sg(q)|^2).
        entropy_loss_ratio: weight of the entropy loss (0 disables it).
        entropy_temperature: its softmax temperature (official: 0.01).
        show_usage: keep the `codebook_used` window buffer (official key `quantize.codebook_used`).
        entropy_all_ranks: see `quantizer.entropy_loss`.
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 entropy_temperature: float = 0.01, show_usage: bool = True, entropy_all_ranks: bool = False) -> None:
        super().__init__()
        if codebook_size != 2**code_dim:
            raise QuantizerConfigError(f"lfq needs codebook_size = 2**code_dim = {2**code_dim} "
                                       f"(codebook_embed_dim {code_dim} bits), got {codebook_size}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.entropy_loss_ratio, self.entropy_temperature = beta, entropy_loss_ratio, entropy_temperature
        self.show_usage, self.entropy_all_ranks = show_usage, entropy_all_ranks
        self.register_buffer("bit_values", 2 ** torch.arange(code_dim), persistent=False)  # (Dc,) int64: 2^i
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def implicit_codebook(self, device: torch.device | None = None) -> torch.Tensor:
        """(K, Dc) float32 in {-1, 1}: row k holds the bits of k (bit i in channel i)."""
        return self.codes_to_values(torch.arange(self.codebook_size, device=device))

    def codes_to_values(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (...) int64 -> (..., Dc) float32 in {-1, 1}."""
        bits = (codes.unsqueeze(-1) & self.bit_values.to(codes.device)) != 0
        return bits.float() * 2.0 - 1.0

    def _codes(self, q: torch.Tensor) -> torch.Tensor:
        """(N, Dc) in {-1, 1} -> (N,) int64."""
        return ((q > 0).long() * self.bit_values).sum(dim=-1)

    @torch.no_grad()
    def quantize_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, Dc, H, W) -> (B, H*W) int64."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._codes(torch.where(_to_rows(z, self.code_dim) > 0, 1.0, -1.0)).view(z.shape[0], -1)

    def forward(self, z: torch.Tensor, replace_ratio: float | None = None
                ) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """z (B, Dc, H, W) -> quant (B, Dc, H, W) float32 in {-1, 1} (straight-through), losses, codes (B, H*W)."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_n = _to_rows(z, self.code_dim)  # (N, Dc)
            q = torch.where(z_n > 0, 1.0, -1.0)  # (N, Dc); exactly 0 goes to -1, as the official
            indices = self._codes(q)

            zero = z_n.new_zeros(())
            losses = QuantizerLosses(zero, zero, zero, 0.0)
            if self.training:
                losses.commit = self.beta * F.mse_loss(z_n, q)
                if self.entropy_loss_ratio > 0:
                    # logits 2 z.c over all K implicit codes: -|z - c|^2 up to a per-row constant
                    logits = 2 * z_n @ self.implicit_codebook(z.device).t()  # (N, K)
                    losses.entropy = self.entropy_loss_ratio * entropy_loss(logits, self.entropy_temperature,
                                                                            self.entropy_all_ranks)
                if self.show_usage:
                    losses.usage = update_usage_window(self.codebook_used, indices, self.codebook_size)
            quant = z_n + (q - z_n).detach()
            if replace_ratio and self.training:
                quant = replace_with_continuous(z_n, quant, replace_ratio)
        return _to_map(quant, b, h, w), losses, indices.view(b, h * w)

    def lookup(self, codes: torch.Tensor, latent_shape: tuple[int, int]) -> torch.Tensor:
        """Codes (B, H*W) or (B*H*W,) -> values (B, Dc, H, W) float32 in {-1, 1} (official `get_codebook_entry`)."""
        return _to_map(self.codes_to_values(codes.reshape(-1)), -1, *latent_shape).contiguous()


class FSQ(nn.Module):
    """Finite scalar quantizer (the official `fsq/fsq_model.py` `FSQ`, one codebook, no projections).

    Channel i is bounded to levels[i] values by a shifted tanh, rounded (straight-through) and divided by
    levels[i] // 2: odd levels give values in [-1, 1], even levels in [-1, 1 - 2/levels[i]].

    Args:
        levels: the number of values per channel, e.g. [8, 5, 5, 5] (official default); Dc = len(levels).
        codebook_size: optional check, must equal prod(levels) when given.
        code_dim: optional check, must equal len(levels) when given.
        show_usage: keep the `codebook_used` window buffer of 4K entries (official key and size).
    """

    def __init__(self, levels: list[int] | tuple[int, ...], codebook_size: int | None = None,
                 code_dim: int | None = None, show_usage: bool = True) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise QuantizerConfigError(f"fsq levels must be a non-empty list of integers >= 2, got {levels}")
        size = math.prod(levels)
        if codebook_size is not None and codebook_size != size:
            raise QuantizerConfigError(f"fsq levels {levels} give codebook_size {size}, not {codebook_size}")
        if code_dim is not None and code_dim != len(levels):
            raise QuantizerConfigError(f"fsq levels {levels} give code_dim {len(levels)}, not {code_dim}")
        self.levels, self.codebook_size, self.code_dim, self.show_usage = levels, size, len(levels), show_usage
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)  # (Dc,) int64
        self.register_buffer("_basis", torch.tensor([math.prod(levels[:i]) for i in range(len(levels))]),
                             persistent=False)  # (Dc,) int64: prod(levels[:i])
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(size * 4))

    def bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """(N, Dc) -> (N, Dc) in (-(n-1)/2 - offset, (n-1)/2 - offset) per channel, offset 0.5 for even n."""
        half_l = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def _values(self, z_n: torch.Tensor) -> torch.Tensor:
        """(N, Dc) -> quantized values (N, Dc), straight-through through the rounding."""
        bounded = self.bound(z_n)
        return (bounded + (bounded.round() - bounded).detach()) / (self._levels // 2)

    def _codes(self, values: torch.Tensor) -> torch.Tensor:
        """(N, Dc) values -> (N,) int64 via the level indices (values * half_width + half_width)."""
        half_width = self._levels // 2
        return ((values * half_width + half_width).round().long() * self._basis).sum(dim=-1)

    def codes_to_values(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (...) int64 -> (..., Dc) float32 (official `_indices_to_codes`)."""
        level_indices = (codes.unsqueeze(-1) // self._basis) % self._levels
        half_width = self._levels // 2
        return (level_indices - half_width) / half_width

    @torch.no_grad()
    def quantize_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, Dc, H, W) -> (B, H*W) int64."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._codes(self._values(_to_rows(z, self.code_dim))).view(z.shape[0], -1)

    def forward(self, z: torch.Tensor, replace_ratio: float | None = None
                ) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """z (B, Dc, H, W) -> quant (B, Dc, H, W) float32, zero losses (FSQ has none), codes (B, H*W) int64."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_n = _to_rows(z, self.code_dim)  # (N, Dc)
            quant = self._values(z_n)
            indices = self._codes(quant.detach())
            zero = z_n.new_zeros(())
            losses = QuantizerLosses(zero, zero, zero, 0.0)
            if self.training and self.show_usage:
                losses.usage = update_usage_window(self.codebook_used, indices, self.codebook_size)
            if replace_ratio and self.training:
                quant = replace_with_continuous(z_n, quant, replace_ratio)
        return _to_map(quant, b, h, w), losses, indices.view(b, h * w)

    def lookup(self, codes: torch.Tensor, latent_shape: tuple[int, int]) -> torch.Tensor:
        """Codes (B, H*W) or (B*H*W,) -> values (B, Dc, H, W) float32 (official `indices_to_codes`)."""
        return _to_map(self.codes_to_values(codes.reshape(-1)), -1, *latent_shape).contiguous()


# name -> class; each takes the keyword parameters of its __init__ (see `build_quantizer`).
QUANTIZERS: dict[str, type[nn.Module]] = {"vq": VectorQuantizer, "simvq": SimVQ, "ibq": IBQ, "lfq": LFQ, "fsq": FSQ}


def quantizer_params(name: str) -> list[str]:
    """The keyword parameters `build_quantizer(name, ...)` accepts."""
    return [p for p in inspect.signature(QUANTIZERS[name].__init__).parameters if p != "self"]


def build_quantizer(name: str, **params: object) -> nn.Module:
    """Build quantizer `name` ("vq", "simvq", "ibq", "lfq", "fsq") from its keyword parameters.

    Raises:
        QuantizerConfigError: unknown name, unknown or missing parameter, or inconsistent sizes.
    """
    if name not in QUANTIZERS:
        raise QuantizerConfigError(f"unknown quantizer {name!r}; choose one of {sorted(QUANTIZERS)}")
    accepted = quantizer_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise QuantizerConfigError(f"quantizer {name!r} takes no parameter {', '.join(unknown)}; "
                                   f"its parameters: {', '.join(accepted)}")
    try:
        inspect.signature(QUANTIZERS[name]).bind(**params)
    except TypeError as err:
        raise QuantizerConfigError(f"quantizer {name!r}: {err}") from None
    return QUANTIZERS[name](**params)
