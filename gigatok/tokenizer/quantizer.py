"""Vector quantizer with an l2-normalised codebook, vq/commitment/entropy losses and the rotation trick.

Matches the official `VectorQuantizer` (keys `quantize.embedding.weight`, `quantize.codebook_used`). The maths
runs in fp32 with autocast disabled: argmin over 16k codes and the entropy softmax at temperature 0.01 are not
safe in half precision.

Shape letters: B batch; H, W height and width of an image or feature map; G latent grid side (G*G 2D tokens);
L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook size (= GPT vocabulary);
Dc code dim (codebook_embed_dim); N a flattened count, stated where used. Here H, W are those of the latent map
(H = 1 and W = L for 1D tokens, H = W = G for 2D, so H*W = L) and N = B*H*W vectors.

Every quantizer (this one and those of `quantizer_zoo.py`: simvq, ibq, lfq, fsq) follows the `Quantizer` contract:
`forward(z, replace_ratio)` -> (quant, `QuantizerLosses`, codes), `quantize_to_codes`, `lookup`, `codebook_size`
(the GPT vocabulary), `code_dim`, and, where `show_usage`, the `codebook_used` window buffer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

USAGE_WINDOW = 65536  # length of the sliding window of recent indices kept in `codebook_used`


@dataclass
class QuantizerLosses:
    """Training losses of one quantizer call (scalars; zero tensors in eval). `usage` is a Python float: the share
    of codes seen in the sliding window of the last 65,536 indices of this rank (fsq: 4K indices)."""

    vq: torch.Tensor
    commit: torch.Tensor
    entropy: torch.Tensor
    usage: float


@runtime_checkable
class Quantizer(Protocol):
    """What a tokenizer needs from its `quantize` module (an `nn.Module`).

    `codebook_size` is K, the number of distinct codes (implicit for lfq = 2**Dc and fsq = prod(levels)): codes lie
    in [0, K) and K is the GPT vocabulary. `code_dim` is Dc, the channels of z and of the quantized output.
    """

    codebook_size: int
    code_dim: int

    def forward(self, z: torch.Tensor, replace_ratio: float | None = None
                ) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """z (B, Dc, H, W) -> quant (B, Dc, H, W) float32, losses (zeros in eval), codes (B, H*W) int64."""
        ...

    def quantize_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Dc, H, W) -> codes (B, H*W) int64, without gradients or losses."""
        ...

    def lookup(self, codes: torch.Tensor, latent_shape: tuple[int, int]) -> torch.Tensor:
        """codes (B, H*W) or (B*H*W,) -> quantized values (B, Dc, H, W) float32, equal to forward's quant."""
        ...


@torch.no_grad()
def update_usage_window(window: torch.Tensor, indices: torch.Tensor, codebook_size: int) -> float:
    """Shift the usage window left by N, write these N indices at its end, return #unique / K.

    The official sliding window (65,536 entries for vq/lfq, 4K for fsq); its zero fill counts as code 0 until the
    window is full, as in the official code.
    """
    n = min(indices.numel(), window.numel())
    window.copy_(torch.cat([window[n:], indices.reshape(-1)[-n:].to(window.dtype)]))
    return torch.unique(window).numel() / codebook_size


def replace_with_continuous(z: torch.Tensor, quant: torch.Tensor, replace_ratio: float) -> torch.Tensor:
    """Keep each row of z (N, Dc) instead of its quantized row with probability replace_ratio (official
    `random_mix_reg`); quant (N, Dc) -> (N, Dc)."""
    keep = torch.bernoulli(torch.full((z.shape[0], 1), float(replace_ratio), device=z.device))
    return torch.where(keep.bool(), z, quant)  # (N, 1) mask broadcast over Dc


def entropy_loss(affinity: torch.Tensor, temperature: float, all_ranks: bool = False) -> torch.Tensor:
    """Mean per-row entropy minus entropy of the mean distribution of softmax(affinity / temperature).

    Minimising it makes each row confident and the batch spread over the codebook. The +1e-5 terms are the
    official ones (inside the per-row log-softmax and inside the log of the mean).

    Args:
        affinity: (N, K) float32, e.g. negative distances.
        all_ranks: average the code distribution over every rank of the process group (differentiably), so the
            "spread over the codebook" term sees the global batch instead of this rank's (the official code uses
            the local batch). Needs the same N on every rank.
    """
    logits = affinity / temperature
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits + 1e-5, dim=-1)
    avg_probs = probs.mean(dim=0)
    if all_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        avg_probs = dist_nn.all_reduce(avg_probs) / dist.get_world_size()  # (K,), gradient reaches every rank
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
    return sample_entropy - avg_entropy


def rotate_to(e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Rotation trick (Fifty et al. 2024): a value equal to z_q whose gradient reaches e through the rotation (and
    rescaling) that maps e onto z_q, instead of a straight-through copy. e, z_q: (N, Dc); returns (N, Dc)."""
    e_norm = e.norm(dim=-1, keepdim=True)
    q_norm = z_q.norm(dim=-1, keepdim=True)
    u = (e / (e_norm + 1e-6)).detach()
    q = (z_q / (q_norm + 1e-6)).detach()
    w = F.normalize(u + q, dim=-1, eps=0.0).detach()
    # Householder-style rotation R e = e - 2 (e.w) w + 2 (e.u) q, applied row-wise.
    rotated = e - 2 * (e * w).sum(-1, keepdim=True) * w + 2 * (e * u).sum(-1, keepdim=True) * q
    return rotated * (q_norm / (e_norm + 1e-6)).detach()


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer.

    Args:
        codebook_size: K.
        code_dim: Dc.
        beta: commitment loss weight.
        entropy_loss_ratio: weight of the entropy loss (0 disables it and skips its softmax).
        entropy_temperature: softmax temperature of the entropy loss (official: 0.01).
        l2_norm: normalise inputs and codebook rows (all released configs).
        show_usage: keep the `codebook_used` window buffer (all released configs).
        rot: rotation-trick gradient instead of straight-through.
        entropy_all_ranks: average the entropy loss's code distribution over all ranks (see `entropy_loss`).
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 entropy_temperature: float = 0.01, l2_norm: bool = True, show_usage: bool = True,
                 rot: bool = False, entropy_all_ranks: bool = False) -> None:
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.entropy_loss_ratio, self.entropy_temperature = beta, entropy_loss_ratio, entropy_temperature
        self.entropy_all_ranks = entropy_all_ranks
        self.l2_norm, self.show_usage, self.rot = l2_norm, show_usage, rot
        self.embedding = nn.Embedding(codebook_size, code_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if show_usage:
            # A plain buffer (the official code wraps it in nn.Parameter, which breaks in-place updates on CPU).
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """(K, Dc) float32 codebook as used for lookup (normalised rows when l2_norm)."""
        weight = self.embedding.weight.float()
        return F.normalize(weight, dim=-1) if self.l2_norm else weight

    @staticmethod
    def distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, K) = |z|^2 + |e|^2 - 2 z.e (the official expansion, kept for identical argmins)."""
        return (z**2).sum(dim=1, keepdim=True) + (codebook**2).sum(dim=1) - 2 * (z @ codebook.t())

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)  # (B, Dc, H, W) -> (N, Dc)
        return F.normalize(z, dim=-1) if self.l2_norm else z

    @torch.no_grad()
    def quantize_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices only: (B, Dc, H, W) -> (B, H*W) = (B, L) int64, b-major then raster (1D: token order)."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.distances(self._flatten(z), self.codebook()).argmin(dim=1).view(b, h * w)

    def forward(self, z: torch.Tensor, replace_ratio: float | None = None
                ) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """Quantize z (B, Dc, H, W) of any float dtype.

        Args:
            replace_ratio: in training, each token keeps its continuous (normalised) value instead of its codeword
                with this probability (official `random_mix_reg`; the official code only runs it with `rot`).

        Returns:
            quant: (B, Dc, H, W) float32; its value is the (normalised) codeword, its gradient that of the
                rotation trick or the straight-through estimator.
            losses: `QuantizerLosses` (zeros in eval mode).
            codes: (B, H*W) = (B, L) int64.
        """
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_n = self._flatten(z)  # (N, Dc)
            codebook = self.codebook()  # (K, Dc)
            d = self.distances(z_n, codebook)  # (N, K)
            indices = d.argmin(dim=1)  # (N,)
            z_q = codebook[indices]  # (N, Dc)

            zero = z_n.new_zeros(())
            losses = QuantizerLosses(zero, zero, zero, 0.0)
            if self.training:
                losses.vq = F.mse_loss(z_q, z_n.detach())
                losses.commit = self.beta * F.mse_loss(z_q.detach(), z_n)
                if self.entropy_loss_ratio > 0:
                    losses.entropy = self.entropy_loss_ratio * entropy_loss(-d, self.entropy_temperature,
                                                                            self.entropy_all_ranks)
                if self.show_usage:
                    losses.usage = self._update_usage(indices)

            if self.rot:
                quant = rotate_to(z_n / z_n.norm(dim=-1, keepdim=True), z_q)
            else:
                quant = z_n + (z_q - z_n).detach()
            if replace_ratio and self.training:
                quant = replace_with_continuous(z_n, quant, replace_ratio)
        quant = quant.view(b, h, w, self.code_dim).permute(0, 3, 1, 2)  # (N, Dc) -> (B, Dc, H, W)
        return quant, losses, indices.view(b, h * w)

    @torch.no_grad()
    def _update_usage(self, indices: torch.Tensor) -> float:
        """Shift the window left by N and write this batch's indices at its end; return #unique / K."""
        return update_usage_window(self.codebook_used, indices, self.codebook_size)

    def lookup(self, codes: torch.Tensor, latent_shape: tuple[int, int]) -> torch.Tensor:
        """Codes (B, H*W) or (B*H*W,) -> normalised codewords (B, Dc, H, W) float32 (the official
        `get_codebook_entry`)."""
        h, w = latent_shape
        z_q = self.codebook()[codes.reshape(-1)]  # (B*H*W, Dc)
        return z_q.view(-1, h, w, self.code_dim).permute(0, 3, 1, 2).contiguous()  # -> (B, Dc, H, W)
