"""ADM-protocol metric core (gigatok/eval/metrics.py), ADM npz batches (npz.py) and evaluation guards (guards.py).

Every metric is checked against a slow, independent implementation written here (plain numpy/scipy loops,
different formulas where one exists), on the same features.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
import torch
from scipy import linalg
from sklearn.datasets import load_digits

from gigatok.eval import metrics
from gigatok.eval.guards import check_pair, resolve_purpose
from gigatok.eval.metrics import (
    FrechetDistanceError,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_score,
    pairwise_sq_distances,
    precision_recall,
)
from gigatok.eval.npz import (
    NpzFormatError,
    npz_info,
    read_image_batches,
    read_reference_stats,
    write_image_npz,
)


# ------------------------------------------------------------------------------------------- slow references
def reference_fid(x1: np.ndarray, x2: np.ndarray, eps: float = 0.0) -> float:
    """W2 distance between Gaussians through the symmetric form tr sqrt(S1^1/2 S2 S1^1/2) (eigh, not sqrtm)."""
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1 = np.cov(x1, rowvar=False) + eps * np.eye(x1.shape[1])
    s2 = np.cov(x2, rowvar=False) + eps * np.eye(x1.shape[1])
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def reference_inception_score(logits: np.ndarray, split_size: int) -> float:
    scores = []
    for start in range(0, len(logits), split_size):
        part = logits[start:start + split_size].astype(np.float64)
        probs = [np.exp(row - row.max()) / np.exp(row - row.max()).sum() for row in part]
        marginal = np.mean(probs, axis=0)
        kls = [sum(p[c] * math.log(p[c] / marginal[c]) for c in range(len(p)) if p[c] > 0) for p in probs]
        scores.append(math.exp(sum(kls) / len(kls)))
    return sum(scores) / len(scores)


def reference_precision_recall(ref: np.ndarray, sample: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Exact float64 distances and explicit loops (the features used with it are exact in float16)."""
    def sq(a, b):
        return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum())

    def radii(x):
        return [sorted(sq(x[i], x[j]) for j in range(len(x)))[k] for i in range(len(x))]

    r_ref, r_sample = radii(ref), radii(sample)
    precision = np.mean([any(sq(s, ref[j]) <= r_ref[j] for j in range(len(ref))) for s in sample])
    recall = np.mean([any(sq(r, sample[j]) <= r_sample[j] for j in range(len(sample))) for r in ref])
    return float(precision), float(recall)


def integer_features(rng: np.random.Generator, n: int, d: int = 8, low: int = -3, high: int = 4) -> np.ndarray:
    """Small integers: every intermediate of the float16 distance path is exact, and there are many ties."""
    return rng.integers(low, high, (n, d)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- FID
def test_feature_statistics_float64_ddof1():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])


def test_fid_of_real_stats_against_themselves_is_zero():
    digits = load_digits().data  # real data: 1797 x 64, three constant pixels, so a singular covariance
    mu, sigma = feature_statistics(digits)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert abs(frechet_distance_from_features(digits[:500], digits[:500])) < 1e-6


def test_fid_matches_slow_reference():
    digits = load_digits().data
    rng = np.random.default_rng(1)
    a, b = digits[rng.permutation(1797)[:900]], digits[rng.permutation(1797)[:700]] + rng.normal(0, 0.5, (700, 64))
    expected = reference_fid(a, b)
    assert expected > 1
    assert frechet_distance(*feature_statistics(a), *feature_statistics(b)) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_from_features_exact_for_sets_smaller_than_the_dimension():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10, 32)), rng.normal(0.3, 1.2, size=(14, 32))  # rank-deficient covariances
    assert frechet_distance_from_features(a, b) == pytest.approx(reference_fid(a, b), rel=1e-6)
    assert abs(frechet_distance_from_features(a, a)) < 1e-9


def test_fid_retries_a_non_finite_sqrtm_with_eps(monkeypatch):
    # S1 S2 = [[0, 1], [0, 0]] has no square root: sqrtm returns inf; with 1e-6 I added it is fine.
    sigma1, sigma2 = np.diag([1.0, 0.0]), np.array([[0.0, 1.0], [1.0, 1e7]])
    calls = []
    real_sqrtm = linalg.sqrtm
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda a: calls.append(a) or real_sqrtm(a))
    mu = np.zeros(2)
    value = frechet_distance(mu, sigma1, mu, sigma2)
    assert len(calls) == 2 and not np.isfinite(real_sqrtm(calls[0])).all()
    offset = 1e-6 * np.eye(2)
    eig = np.linalg.eigvals((sigma1 + offset) @ (sigma2 + offset))
    expected = np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eig.astype(complex)).sum().real
    assert value == pytest.approx(expected, rel=1e-6)


def test_fid_rejects_a_clearly_complex_sqrtm():
    mu = np.zeros(2)
    with pytest.raises(FrechetDistanceError, match="imaginary component"):
        frechet_distance(mu, np.eye(2), mu, np.diag([-1.0, 1.0]))  # sqrtm has i on the diagonal
    with pytest.raises(FrechetDistanceError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), mu, np.eye(2))


# ----------------------------------------------------------------------------------------- Inception Score
def test_inception_score_matches_slow_reference_with_a_partial_last_split():
    logits = np.random.default_rng(3).normal(0, 3, (23, 11)).astype(np.float32)
    assert inception_score(logits, split_size=7) == pytest.approx(reference_inception_score(logits, 7), rel=1e-6)
    assert inception_score(logits, split_size=5000) == pytest.approx(reference_inception_score(logits, 5000),
                                                                     rel=1e-6)


def test_inception_score_limits():
    assert inception_score(np.zeros((12, 5))) == pytest.approx(1.0)  # uniform predictions: IS 1
    confident = np.full((40, 8), -1e4)
    confident[np.arange(40), np.arange(40) % 8] = 0  # each class equally often, fully confident: IS = classes
    assert inception_score(confident) == pytest.approx(8.0, rel=1e-9)


# ---------------------------------------------------------------------------------------- precision/recall
def test_fp16_distances_equal_fp32_where_finite_and_fall_back_on_overflow():
    rng = np.random.default_rng(4)
    u, v = torch.from_numpy(rng.random((30, 64), np.float32) * 2), torch.from_numpy(rng.random((20, 64), np.float32))
    exact = ((u.double()[:, None] - v.double()[None]) ** 2).sum(-1)
    fp16 = pairwise_sq_distances(u, v)
    fp32 = pairwise_sq_distances(u, v, use_fp16=False)
    assert fp16.dtype == torch.float32 and fp16.shape == (30, 20)
    torch.testing.assert_close(fp32.double(), exact, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fp16.double(), exact, rtol=5e-3, atol=0.05)  # float16 resolution at ~40
    assert not torch.equal(fp16, fp32)  # it really went through float16
    big = u * 60  # |u|^2 ~ 60^2 * 85 > 65504: float16 overflows, the block is redone in float32
    torch.testing.assert_close(pairwise_sq_distances(big, v), pairwise_sq_distances(big, v, use_fp16=False))
    ints = torch.from_numpy(integer_features(rng, 9))
    assert torch.equal(pairwise_sq_distances(ints, ints), pairwise_sq_distances(ints, ints, use_fp16=False))


@pytest.mark.parametrize("blocks", [(10000, 10000), (7, 5)])
def test_precision_recall_match_slow_reference(blocks):
    rng = np.random.default_rng(5)
    ref, sample = integer_features(rng, 40), integer_features(rng, 33, low=-1, high=5)  # shifted samples
    expected = reference_precision_recall(ref, sample)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    got = precision_recall(ref, sample, row_batch=blocks[0], col_batch=blocks[1])
    assert got == pytest.approx(expected, rel=1e-6)


def test_precision_recall_continuous_features_and_edge_cases():
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(60, 16)).astype(np.float32)
    sample = rng.normal(0.5, 1.0, size=(50, 16)).astype(np.float32)
    assert precision_recall(ref, ref) == (1.0, 1.0)
    fp32 = precision_recall(ref, sample, use_fp16=False)
    assert fp32 == pytest.approx(reference_precision_recall(ref, sample), abs=1e-12)
    fp16 = precision_recall(ref, sample)
    assert fp16 == pytest.approx(fp32, abs=0.05)  # float16 rounding moves at most a couple of boundary points
    with pytest.raises(ValueError, match="more than 3 images"):
        precision_recall(ref[:3], sample)


# ------------------------------------------------------------------------------------------------- npz
def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("compressed", [False, True])
def test_streaming_reader_equals_np_load(tmp_path, compressed):
    images = _images(23)
    path = tmp_path / "batch.npz"
    (np.savez_compressed if compressed else np.savez)(path, arr_0=images)
    batches = list(read_image_batches(path, 5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (8, 8, 3) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), np.load(path)["arr_0"])


def test_streaming_reader_reads_fortran_order_and_detects_truncation(tmp_path):
    images = _images(6)
    np.savez(tmp_path / "f.npz", arr_0=np.asfortranarray(images))
    np.testing.assert_array_equal(np.concatenate(list(read_image_batches(tmp_path / "f.npz", 4))), images)
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=images)
    data = zipfile.ZipFile(good).read("arr_0.npy")
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as zf:
        zf.writestr("arr_0.npy", data[:-100])
    with pytest.raises(NpzFormatError, match="truncated"):
        list(read_image_batches(tmp_path / "cut.npz", 4))


def test_write_image_npz_round_trip_and_atomic(tmp_path):
    images, labels = _images(5), np.arange(5)
    path = write_image_npz(tmp_path / "sub" / "samples.npz", images, labels=labels, kind="generation")
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.npz"]  # no temp file left behind
    with np.load(path) as data:
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["arr_1"], labels)
    info = npz_info(path)
    assert (info["count"], info["height"], info["width"], info["kind"]) == (5, 8, 8, "generation")
    assert info["has_labels"] and not info["has_stats"]
    assert read_reference_stats(path) is None
    with pytest.raises(NpzFormatError, match="kind must be one of"):
        write_image_npz(tmp_path / "x.npz", images, kind="samples")
    with pytest.raises(NpzFormatError, match="uint8"):
        write_image_npz(tmp_path / "x.npz", images.astype(np.float32))
    assert not (tmp_path / "x.npz").exists()


def test_read_reference_stats(tmp_path):
    rng = np.random.default_rng(7)
    stats = {"mu": rng.normal(size=4), "sigma": np.eye(4), "mu_s": rng.normal(size=3), "sigma_s": np.eye(3)}
    np.savez(tmp_path / "ref.npz", arr_0=_images(4), **stats)
    got = read_reference_stats(tmp_path / "ref.npz")
    assert sorted(got) == sorted(stats) and all(np.array_equal(got[k], stats[k]) for k in stats)
    assert npz_info(tmp_path / "ref.npz")["has_stats"]
    np.savez(tmp_path / "bad.npz", arr_0=_images(4), mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(NpzFormatError, match="expected"):
        read_reference_stats(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------------- guards
def _info(path: str, count: int = 50_000, size: int = 256, kind: str | None = None, has_stats: bool = False) -> dict:
    return {"path": path, "count": count, "height": size, "width": size, "kind": kind, "has_stats": has_stats}


def test_guards_quiet_on_clean_pairs():
    virtual = _info("VIRTUAL_imagenet256_labeled.npz", count=10_000, has_stats=True)
    assert check_pair(_info("samples.npz", kind="generation"), virtual, "generation") == []
    val = _info("val_imagenet.npz", kind="reference-reconstruction")
    recon = _info("recon.npz", kind="reconstruction")
    assert check_pair(recon, val, resolve_purpose("auto", recon, val)) == []


def test_guards_fire():
    virtual = _info("VIRTUAL_imagenet256_labeled.npz", count=10_000, has_stats=True)
    val = _info("val.npz", kind="reference-reconstruction")

    def one(sample, ref, purpose, needle):
        found = check_pair(sample, ref, resolve_purpose(purpose, sample, ref))
        assert len(found) == 1 and needle in found[0], found

    one(_info("s.npz", count=10_000), virtual, "generation", "not comparable to published gFID")
    one(_info("s.npz", size=384), virtual, "generation", "resolutions differ")
    one(_info("r.npz", kind="reconstruction"), virtual, "auto", "GENERATION reference")
    one(_info("r.npz"), _info("any_name.npz", has_stats=True, count=10_000), "reconstruction", "not rFID")
    one(_info("r.npz"), _info("VIRTUAL_imagenet256_labeled_copy.npz", count=10_000), "reconstruction", "not rFID")
    one(_info("g.npz", kind="generation"), val, "auto", "RECONSTRUCTION (ImageNet-val) reference")
    one(_info("g.npz"), _info("ref.npz", count=5000, kind="reference-generation"), "generation",
        "only 5,000 images")
    one(_info("ref.npz", kind="reference-generation"), _info("s.npz", kind="reference-generation"), "generation",
        "arguments swapped")
    tiny = check_pair(_info("s.npz", count=100), _info("ref.npz", count=100), "generation")
    assert len(tiny) == 2 and "smoke test" in tiny[0]
