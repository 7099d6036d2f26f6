"""ADM-protocol metrics on Inception features: FID/sFID, Inception Score and improved precision/recall.

These follow the OpenAI ADM evaluator (openai/guided-diffusion `evaluations/evaluator.py`, copied by LlamaGen and
GigaTok as `evaluations/c2i/evaluator.py`), so numbers are comparable with the papers given the same features:

- FID / sFID: TTUR Frechet distance on float64 statistics (np.cov, ddof=1) with `scipy.linalg.sqrtm`; a non-finite
  square root is retried with 1e-6 * I added to both covariances, a diagonal imaginary part above 1e-3 is an error,
  a smaller one is dropped.
- Inception Score: softmax of the unbiased logits (pool_3 @ W, no bias), KL(p(y|x) || p(y)) per sequential split
  of 5000 (no shuffling), exp of the mean KL per split, mean over splits (no std). We do it in float64 from
  log-softmax, which never forms 0 * log 0.
- Precision / recall (Kynkaanniemi et al. 2019, ADM settings): k = 3, squared L2 distances |u|^2 - 2 u.v + |v|^2
  clamped at 0 in 10000 x 10000 blocks, first in float16 and in float32 only when the float16 block overflows.
  Radius of a point = distance to its k-th nearest neighbour in its own set (index k of the sorted row: index 0
  is the point itself). A point is inside the other set's manifold when its distance to some point of that set
  is <= that point's radius. Precision = fraction of samples inside the reference manifold; recall = fraction of
  reference points inside the sample manifold.

Distances run in torch on the evaluator device (GPU when there is one). On 2 CPU cores, 5000 reference and 5000
sample features of 2048-d take 7 s; the ADM sizes (10k reference, 50k samples: ~3e9 pairs) about 5 minutes. ADM's float16 step is reproduced with TensorFlow-on-GPU semantics: features and their squares
rounded to float16, dot products and row sums accumulated in float32 and rounded to float16, then
|u|^2 - 2 u.v + |v|^2 evaluated in float16 (float16 matmuls are very slow on CPU; float32 ones with float16
rounding are not, and give the same numbers on CPU and GPU). TF32 is off inside `pairwise_sq_distances`.
TensorFlow on CPU accumulates float16 differently: measured against adm_tf_evaluator.py on CPU, 56% of the
float16 distances are identical and the rest differ by a few float16 steps, which moved P/R by one or two
boundary points on 200-500-image sets (e.g. recall 0.8267 vs 0.82); float32 distances differ from both by as much.

Shape letters: D width; N a flattened count, stated where used. Here D is the width of one feature vector (2048 for
pool_3, 2023 for the spatial sFID features) and N a number of images (N1, N2, N_ref, N_sample: those of one set).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from scipy import linalg
from scipy.special import logsumexp

from gigatok.errors import UserError

logger = logging.getLogger(__name__)

SQRTM_EPS = 1e-6  # added to both covariances when sqrtm of their product is not finite (ADM/TTUR)
IMAG_ATOL = 1e-3  # largest diagonal imaginary part of sqrtm that is dropped silently (ADM/TTUR)


class FrechetDistanceError(UserError, ValueError):
    """The Frechet distance cannot be computed (mismatched statistics or a clearly complex matrix square root)."""


PR_K = 3  # precision/recall: the k-th nearest neighbour's distance is a point's radius (ADM)
MIN_IMAGES = PR_K + 1  # fewest images per set the metrics are defined for


class TooFewImagesError(UserError, ValueError):
    """A set too small for the metrics (precision/recall need more than k = 3 images per set)."""


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, as the ADM evaluator computes them.

    Args:
        features: (N, D) features, N >= 2 (any float dtype; computed in float64).

    Returns:
        mu (D,) float64 and sigma (D, D) float64 (`np.cov(rowvar=False)`, i.e. divided by N - 1).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_statistics needs (N, D) features with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between two Gaussians, |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), ADM/TTUR
    numerics.

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances (float64 recommended).

    Returns:
        The distance (>= 0 up to rounding; slightly negative values are possible for nearly equal statistics).

    Raises:
        FrechetDistanceError: shapes differ, or sqrtm(sigma1 sigma2) has a diagonal imaginary part above 1e-3.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise FrechetDistanceError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape} "
            "(pool_3 statistics are 2048-d, spatial/sFID ones 2023-d)")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # The product is (nearly) singular: regularise both covariances, as ADM does.
        logger.warning(f"FID: sqrtm of the covariance product is not finite; adding {SQRTM_EPS} * I to both "
                       "covariances (ADM/TTUR fallback)")
        offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            raise FrechetDistanceError(
                f"sqrtm of the covariance product has an imaginary component of up to "
                f"{np.max(np.abs(covmean.imag)):.3g} (> {IMAG_ATOL}): the statistics are not valid covariances "
                "(not positive semi-definite, NaN features, or far too few samples)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """The same Frechet distance computed exactly from the features, for sets smaller than the feature dimension.

    With Xi the centred (Ni, D) features and sigma_i = Xi^T Xi / (Ni - 1), the non-zero eigenvalues of
    sigma_1 sigma_2 are the squared singular values of X1 X2^T / sqrt((N1 - 1)(N2 - 1)), so tr sqrtm(sigma_1 sigma_2)
    is the sum of those singular values. When min(N1, N2) <= D the covariances are singular: `scipy.linalg.sqrtm` is
    then slow (about a minute for D = 2048 on a laptop CPU) and only accurate to ~1e-3, while this is exact and takes
    milliseconds.

    Args:
        features1, features2: (N1, D), (N2, D) features, N1, N2 >= 2.

    Returns:
        The Frechet distance between the Gaussians fitted to the two sets (equal to `frechet_distance` on their
        `feature_statistics` up to sqrtm's error).
    """
    x1, x2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 2:
        raise FrechetDistanceError(f"need (N1, D) and (N2, D) features with N >= 2, got {x1.shape} and {x2.shape}")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    x1c, x2c = x1 - mu1, x2 - mu2
    n1, n2 = len(x1) - 1, len(x2) - 1
    singular_values = np.linalg.svd(x1c @ x2c.T, compute_uv=False)  # (min(N1, N2),)
    tr_covmean = singular_values.sum() / math.sqrt(n1 * n2)
    diff = mu1 - mu2
    return float(diff @ diff + (x1c * x1c).sum() / n1 + (x2c * x2c).sum() / n2 - 2.0 * tr_covmean)


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """Inception Score with the ADM convention (improved-GAN formula, sequential splits, mean over splits).

    Args:
        logits: (N, 1008) unbiased Inception logits (pool_3 @ softmax weight, no bias) of the SAMPLES.
        split_size: images per split; the last split may be smaller (ADM: 5000, so 50k samples give 10 splits).

    Returns:
        mean over splits of exp(mean_x KL(p(y|x) || p(y))).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"inception_score needs (N, C) logits with N >= 1, got shape {logits.shape}")
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)  # (N, 1008) log softmax
    scores = []
    for start in range(0, len(log_p), split_size):
        part = log_p[start:start + split_size]  # (<= split_size, 1008)
        log_mean_p = logsumexp(part, axis=0) - math.log(len(part))  # (1008,) log of the split's marginal p(y)
        p = np.exp(part)
        kl = np.where(p > 0, p * (part - log_mean_p), 0.0).sum(axis=1)  # (<= split_size,) KL per image
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores))


@contextlib.contextmanager
def _full_precision_matmul() -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the float16 rounding below is the only rounding
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, use_fp16: bool = True) -> torch.Tensor:
    """Squared L2 distances between two feature blocks, ADM `DistanceBlock` numerics.

    Args:
        u: (N1, D) float32 features. v: (N2, D) float32 features, same device.
        use_fp16: first try the float16 computation (ADM); False computes in float32 only.

    Returns:
        (N1, N2) float32 distances max(|u|^2 - 2 u.v + |v|^2, 0); computed in float16 (see the module docstring)
        unless that block has a non-finite value, in which case it is recomputed in float32.
    """
    with _full_precision_matmul():
        if use_fp16:
            u16, v16 = u.half(), v.half()
            norm_u = (u16 * u16).sum(1, dtype=torch.float32).half()  # (N1,) float16 squares, float32 accumulation
            norm_v = (v16 * v16).sum(1, dtype=torch.float32).half()  # (N2,)
            dots = (u16.float() @ v16.float().T).half()  # (N1, N2) float32 accumulation, float16 result
            dist = (norm_u[:, None] - 2 * dots + norm_v[None, :]).clamp_min_(0)  # float16 arithmetic
            if bool(torch.isfinite(dist).all()):
                return dist.float()
        norm_u, norm_v = (u * u).sum(1), (v * v).sum(1)
        return (norm_u[:, None] - 2 * (u @ v.T) + norm_v[None, :]).clamp_min_(0)


def manifold_radii(features: torch.Tensor, k: int = PR_K, row_batch: int = 10000, col_batch: int = 10000,
                   use_fp16: bool = True) -> torch.Tensor:
    """Distance of every point to its k-th nearest neighbour in its own set (the point itself is neighbour 0).

    Args:
        features: (N, D) float32, N > k.

    Returns:
        (N,) float32 squared radii, on the features' device. Equal to ADM's `np.partition(row, k)[k]` over full
        rows; only the k + 1 smallest distances of each row are kept while the column blocks stream by, so memory
        is row_batch x (col_batch + k + 1) instead of row_batch x N.
    """
    num = features.shape[0]
    if num <= k:
        raise TooFewImagesError(f"precision/recall with k={k} need more than {k} images per set, got {num}")
    radii = torch.empty(num, dtype=torch.float32, device=features.device)
    for r0 in range(0, num, row_batch):
        rows = features[r0:r0 + row_batch]
        smallest = None  # (<= row_batch, k + 1) smallest distances seen so far, ascending
        for c0 in range(0, num, col_batch):
            block = pairwise_sq_distances(rows, features[c0:c0 + col_batch], use_fp16)  # (<= row_batch, <= col_batch)
            candidates = block if smallest is None else torch.cat([smallest, block], dim=1)
            smallest = torch.topk(candidates, min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii[r0:r0 + rows.shape[0]] = smallest[:, k]
    return radii


def precision_recall(ref_features: np.ndarray, sample_features: np.ndarray, k: int = 3, row_batch: int = 10000,
                     col_batch: int = 10000, device: str | torch.device | None = None,
                     use_fp16: bool = True) -> tuple[float, float]:
    """Improved precision and recall (ADM `ManifoldEstimator`, k = 3) of samples against a reference set.

    Args:
        ref_features: (N_ref, D) pool_3 features of the reference images.
        sample_features: (N_sample, D) pool_3 features of the samples.
        k: neighbourhood size (ADM: 3).
        row_batch, col_batch: block size of the distance computation (memory ~ 4 * row_batch * col_batch bytes,
            several times over; 10000 x 10000 as ADM needs ~2 GB).
        device: where distances are computed (default CPU); results do not depend on it.
        use_fp16: ADM's float16 distances with float32 fallback (True) or float32 throughout.

    Returns:
        (precision, recall): the fraction of samples inside the reference manifold and the fraction of reference
        images inside the sample manifold.
    """
    device = torch.device(device or "cpu")
    ref = torch.from_numpy(np.ascontiguousarray(ref_features, dtype=np.float32)).to(device)
    sample = torch.from_numpy(np.ascontiguousarray(sample_features, dtype=np.float32)).to(device)
    if ref.ndim != 2 or sample.ndim != 2 or ref.shape[1] != sample.shape[1]:
        raise ValueError(f"precision_recall needs (N, D) features of equal D, got {tuple(ref.shape)} and "
                         f"{tuple(sample.shape)}")
    radii_ref = manifold_radii(ref, k, row_batch, col_batch, use_fp16)
    radii_sample = manifold_radii(sample, k, row_batch, col_batch, use_fp16)
    ref_inside = torch.zeros(len(ref), dtype=torch.bool, device=device)
    sample_inside = torch.zeros(len(sample), dtype=torch.bool, device=device)
    # Rows are reference points and columns samples, as in ADM (the float16 rounding is not symmetric).
    for r0 in range(0, len(ref), row_batch):
        r1 = min(r0 + row_batch, len(ref))
        for c0 in range(0, len(sample), col_batch):
            c1 = min(c0 + col_batch, len(sample))
            dist = pairwise_sq_distances(ref[r0:r1], sample[c0:c1], use_fp16)  # (<= row_batch, <= col_batch)
            ref_inside[r0:r1] |= (dist <= radii_sample[None, c0:c1]).any(dim=1)
            sample_inside[c0:c1] |= (dist <= radii_ref[r0:r1, None]).any(dim=0)
    return float(sample_inside.double().mean()), float(ref_inside.double().mean())
