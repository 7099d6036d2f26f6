"""Loud warnings for evaluations whose numbers would not mean what they seem to mean.

They look only at `npz_info` of both batches (no pixels), so they run before any heavy work. Each warning is
logged with a banner and returned, so the evaluator can also store it in the results file. Nothing here stops an
evaluation: small or mismatched sets are fine for smoke tests, as long as nobody quotes the numbers as gFID/rFID.

The two ADM references:
- generation (gFID): `VIRTUAL_imagenet256_labeled.npz`, with stored full-train-set statistics (mu/sigma) and 10k
  images for precision/recall, against 50k generated samples;
- reconstruction (rFID): a self-made `val_imagenet.npz` with the 50k ImageNet-val images (center crop 256) and no
  stored statistics, against the 50k reconstructions of those same images.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

PURPOSES = ("auto", "generation", "reconstruction")
ADM_NUM_SAMPLES = 50_000  # samples (and ImageNet-val images) in the published gFID/rFID protocol
ADM_NUM_PR_REFERENCE = 10_000  # reference images ADM uses for precision/recall
FEATURE_DIM = 2048  # below this many images the pool_3 covariance is singular
GENERATION_REFERENCE_PREFIX = "VIRTUAL_imagenet"  # VIRTUAL_imagenet256_labeled.npz, VIRTUAL_imagenet512.npz, ...

_BANNER = "=" * 100


def is_generation_reference(info: dict[str, Any]) -> bool:
    """Whether a batch is (or looks like) a generation reference: tagged so, named VIRTUAL_imagenet*, or with
    stored statistics (only the ADM generation references carry them)."""
    return (info.get("kind") == "reference-generation" or Path(info["path"]).name.startswith(GENERATION_REFERENCE_PREFIX)
            or bool(info.get("has_stats")))


def is_reconstruction_reference(info: dict[str, Any]) -> bool:
    """Whether a batch is tagged as a reconstruction (ImageNet-val) reference."""
    return info.get("kind") == "reference-reconstruction"


def resolve_purpose(purpose: str, sample_info: dict[str, Any], ref_info: dict[str, Any]) -> str:
    """"generation" or "reconstruction": the requested one, else the sample's tag, else the reference's kind,
    else "generation" (the ADM default)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if purpose != "auto":
        return purpose
    if sample_info.get("kind") in ("generation", "reconstruction"):
        return sample_info["kind"]
    return "reconstruction" if is_reconstruction_reference(ref_info) else "generation"


def check_pair(sample_info: dict[str, Any], ref_info: dict[str, Any], purpose: str) -> list[str]:
    """All warnings for evaluating `sample_info` against `ref_info` (both from `npz_info`) for a resolved purpose.

    Returns:
        The warning messages, most important first; empty for a clean pair.
    """
    found = []
    sample_kind, ref_kind = sample_info.get("kind"), ref_info.get("kind")
    num_samples, num_ref = sample_info["count"], ref_info["count"]
    sample_name, ref_name = Path(sample_info["path"]).name, Path(ref_info["path"]).name
    if (sample_kind or "").startswith("reference-") or (sample_info.get("has_stats") and not ref_info.get("has_stats")):
        found.append(f"the SAMPLE batch '{sample_name}' looks like a reference batch (kind {sample_kind!r}, stored "
                     f"statistics: {sample_info.get('has_stats')}): are the arguments swapped? The order is "
                     "REFERENCE then SAMPLE.")
    if purpose == "reconstruction" and is_generation_reference(ref_info):
        found.append(f"reconstructions are evaluated against the GENERATION reference '{ref_name}' (kind "
                     f"{ref_kind!r}, stored statistics: {ref_info.get('has_stats')}): rFID is measured against the "
                     "ImageNet-val images that were reconstructed (a self-made val_imagenet.npz of the 50k val "
                     "images, center-cropped), not against VIRTUAL_imagenet256_labeled.npz. This number is not rFID.")
    if purpose == "generation" and (is_reconstruction_reference(ref_info) or sample_kind == "reconstruction"):
        found.append(f"generated samples are evaluated against the RECONSTRUCTION (ImageNet-val) reference "
                     f"'{ref_name}' (kind {ref_kind!r}, sample kind {sample_kind!r}): published gFID uses "
                     "VIRTUAL_imagenet256_labeled.npz (train-set statistics). This number is not gFID.")
    if (sample_info["height"], sample_info["width"]) != (ref_info["height"], ref_info["width"]):
        found.append(f"resolutions differ: samples are {sample_info['height']}x{sample_info['width']}, reference "
                     f"images {ref_info['height']}x{ref_info['width']}. Inception resizes both to 299, but the "
                     "numbers are not comparable to published ones; resize the samples to the reference resolution "
                     "first (LlamaGen: bicubic F.interpolate, e.g. 384 -> 256).")
    if num_samples < ADM_NUM_SAMPLES:
        metric = "gFID" if purpose == "generation" else "rFID (all 50,000 ImageNet-val images)"
        message = (f"only {num_samples:,} samples (< {ADM_NUM_SAMPLES:,}): FID is biased upwards with fewer "
                   f"samples, so this is not comparable to published {metric}.")
        if num_samples <= FEATURE_DIM:
            message += (f" With <= {FEATURE_DIM} images the feature covariance is singular: treat FID/sFID/IS as a "
                        "smoke test only.")
        found.append(message)
    if num_ref < ADM_NUM_PR_REFERENCE:
        stats = ("precision/recall" if ref_info.get("has_stats") else "FID/sFID (computed from these images) and "
                 "precision/recall")
        found.append(f"the reference has only {num_ref:,} images (ADM uses {ADM_NUM_PR_REFERENCE:,} for "
                     f"precision/recall and 50,000 for rFID): {stats} are noisy and not comparable to published "
                     "numbers.")
    return found


def emit_warnings(messages: list[str], logger: logging.Logger) -> None:
    """Log each warning inside a banner, so it stands out in long evaluation logs."""
    for message in messages:
        logger.warning(f"\n{_BANNER}\nEVALUATION WARNING: {message}\n{_BANNER}")
