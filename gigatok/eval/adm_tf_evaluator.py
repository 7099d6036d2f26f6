#!/usr/bin/env python
"""The ADM evaluator on TensorFlow: IS, FID, sFID, precision and recall of a sample batch against a reference batch.

A standalone script (standard library, numpy, scipy and tensorflow only; it never imports torch or gigatok), so it
runs in a separate evaluation environment (`bash env_install.sh --eval-env`), like the official
`evaluations/c2i/evaluator.py` of LlamaGen/GigaTok. It re-implements the protocol of OpenAI's evaluator
(openai/guided-diffusion `evaluations/evaluator.py`):

- network: the TF "inception-2015-12-05" graph `classify_image_graph_def.pb`; a float32 NHWC [0, 255] placeholder
  replaces the tensor `ExpandDims:0` (skipping the JPEG decoder), so the graph's own bilinear resize to 299 and
  (x - 128) / 128 still apply; features are `pool_3:0` (2048-d) and the first 7 channels of `mixed_6/conv:0`
  flattened in NHWC order (17 * 17 * 7 = 2023-d); IS logits are pool_3 @ (the weight input of
  `softmax/logits/MatMul`), no bias; images in batches of 64, softmax in batches of 512;
- statistics: the reference's stored mu/sigma/mu_s/sigma_s when it has `mu`, else np.mean / np.cov (float64);
  FID/sFID: TTUR formula with scipy sqrtm, 1e-6 * I retry, imaginary-part check;
- IS: splits of 5000 in file order, exp(mean KL) per split, mean over splits;
- precision/recall: k = 3 radii over squared L2 distances computed in float16 with a float32 fallback, in
  10000 x 10000 blocks.

The graph cannot be downloaded offline: pass --graph, or put it in the current folder (download URL below).
Writes `<sample>.txt` (the five ADM lines, as LlamaGen's copy does) and `<sample>.json` (same keys as
gigatok.eval.adm, evaluator "adm-tensorflow") next to the sample batch, unless --no-write; --json-out writes the
JSON to another path as well (gigatok.eval.adm reads it from there).

Usage:
    python adm_tf_evaluator.py REF.npz SAMPLE.npz [--graph classify_image_graph_def.pb] [--batch-size 64]
        [--json-out PATH] [--no-write]
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from scipy import linalg

GRAPH_NAME = "classify_image_graph_def.pb"
GRAPH_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/classify_image_graph_def.pb"
INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
SPATIAL_TENSOR = "mixed_6/conv:0"
SOFTMAX_MATMUL_OP = "softmax/logits/MatMul"
SPATIAL_CHANNELS = 7
SOFTMAX_BATCH = 512
IS_SPLIT = 5000
PR_K = 3
PR_BLOCK = 10000
EVALUATOR = "adm-tensorflow"


class UserError(Exception):
    """A problem the user must fix (missing file, bad batch, no TensorFlow); printed as `error: ...`, exit 2."""


# ----------------------------------------------------------------------------------------------- npz streaming
def _open_member(path: Path, key: str):
    if not path.is_file():
        raise UserError(f"'{path}' does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UserError(f"'{path}' is not an .npz (zip) file") from None
    if f"{key}.npy" not in zf.namelist():
        zf.close()
        raise UserError(f"'{path}' has no '{key}' array")
    return zf, zf.open(f"{key}.npy")


def _npy_header(fp) -> tuple[tuple[int, ...], np.dtype, bool]:
    magic = fp.read(8)
    if magic[:6] != b"\x93NUMPY":
        raise UserError("not a .npy member")
    length = int.from_bytes(fp.read(2 if magic[6] == 1 else 4), "little")
    meta = ast.literal_eval(fp.read(length).decode("latin1" if magic[6] < 3 else "utf8"))
    return tuple(meta["shape"]), np.lib.format.descr_to_dtype(meta["descr"]), bool(meta["fortran_order"])


def batch_info(path: Path) -> tuple[int, int, int]:
    """(N, H, W) of arr_0, checking it is (N, H, W, 3) uint8."""
    zf, fp = _open_member(path, "arr_0")
    with zf, fp:
        shape, dtype, _ = _npy_header(fp)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"'{path}': arr_0 is {dtype} {shape}; ADM batches are (N, H, W, 3) uint8 in [0, 255]")
    return shape[0], shape[1], shape[2]


def iter_batches(path: Path, batch_size: int):
    """Yield (n, H, W, 3) uint8 batches of arr_0 without loading the whole array."""
    zf, fp = _open_member(path, "arr_0")
    with zf, fp:
        shape, dtype, fortran = _npy_header(fp)
        if fortran:
            with zf.open("arr_0.npy") as whole:
                images = np.ascontiguousarray(np.lib.format.read_array(whole))
            for start in range(0, shape[0], batch_size):
                yield images[start:start + batch_size]
            return
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            rows = min(batch_size, shape[0] - start)
            data = fp.read(rows * row_bytes)
            if len(data) != rows * row_bytes:
                raise UserError(f"'{path}': arr_0 is truncated")
            yield np.frombuffer(data, dtype=dtype).reshape(rows, *shape[1:])


def stored_statistics(path: Path) -> dict[str, np.ndarray] | None:
    """mu/sigma/mu_s/sigma_s of a reference batch when it has `mu` (ADM: then they are used as stored)."""
    with np.load(path) as data:
        if "mu" not in data.files:
            return None
        return {k: data[k].astype(np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in data.files}


# ------------------------------------------------------------------------------------------------- metrics
def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """TTUR/ADM Frechet distance with scipy's sqrtm, the eps * I retry and the imaginary-part check."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(f"statistics do not match: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonal of both covariances")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component of {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, split_size: int = IS_SPLIT) -> float:
    """ADM's Inception Score from softmax probabilities (N, C), computed as the original (float32 numpy)."""
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------------------- TF graph
def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError as err:
        raise UserError(f"this evaluator needs TensorFlow ({err}); build its environment with "
                        "`bash env_install.sh --eval-env` and run it with the python that prints") from None
    return tf.compat.v1


def _pairwise(tf, u, v):
    """max(|u|^2 - 2 u.v + |v|^2, 0) for all row pairs, in the dtype of u and v."""
    norm_u = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
    norm_v = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
    return tf.maximum(norm_u - 2 * tf.matmul(u, v, transpose_b=True) + norm_v, 0.0)


class TFInceptionEvaluator:
    """One TF session holding the Inception graph, the softmax head and the precision/recall distance block."""

    def __init__(self, graph_path: Path):
        tf = _tensorflow()
        graph_def = tf.GraphDef()
        try:
            graph_def.ParseFromString(graph_path.read_bytes())
        except Exception as err:  # noqa: BLE001 -- protobuf raises its own DecodeError
            raise UserError(f"'{graph_path}' is not a TF GraphDef ({err}); re-download it from {GRAPH_URL}") from None
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf.placeholder(tf.float32, [None, None, None, 3])
            try:
                pool, spatial, matmul = tf.import_graph_def(
                    graph_def, input_map={INPUT_TENSOR: self.images},
                    return_elements=[POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL_OP], name="inception")
            except (ValueError, KeyError) as err:
                raise UserError(f"'{graph_path}' is not the FID Inception graph ({err})") from None
            self.pool = tf.reshape(pool, [tf.shape(pool)[0], -1])  # (N, 2048)
            self.spatial = tf.reshape(spatial[..., :SPATIAL_CHANNELS], [tf.shape(spatial)[0], -1])  # (N, 2023) NHWC
            self.pool_in = tf.placeholder(tf.float32, [None, None])
            self.logits = tf.matmul(self.pool_in, matmul.inputs[1])  # (N, 1008) unbiased logits
            self.softmax = tf.nn.softmax(self.logits)
            self.u = tf.placeholder(tf.float32, [None, None])
            self.v = tf.placeholder(tf.float32, [None, None])
            dist16 = _pairwise(tf, tf.cast(self.u, tf.float16), tf.cast(self.v, tf.float16))
            self.dist = tf.cond(tf.reduce_all(tf.math.is_finite(dist16)), lambda: tf.cast(dist16, tf.float32),
                                lambda: _pairwise(tf, self.u, self.v))
        config = tf.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        self.sess = tf.Session(graph=self.graph, config=config)

    def activations(self, path: Path, batch_size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(pool (N, 2048), spatial (N, 2023)) float32 for the images of a batch file."""
        pools, spatials, done, start = [], [], 0, time.time()
        for batch in iter_batches(path, batch_size):
            pool, spatial = self.sess.run([self.pool, self.spatial], {self.images: batch.astype(np.float32)})
            pools.append(pool)
            spatials.append(spatial)
            done += len(batch)
            print(f"\r  {done}/{count} images ({time.time() - start:.0f} s)", end="", flush=True)
        print()
        return np.concatenate(pools), np.concatenate(spatials)

    def probabilities(self, pool: np.ndarray) -> np.ndarray:
        return np.concatenate([self.sess.run(self.softmax, {self.pool_in: pool[i:i + SOFTMAX_BATCH]})
                               for i in range(0, len(pool), SOFTMAX_BATCH)])

    def distances(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.sess.run(self.dist, {self.u: u, self.v: v})

    def radii(self, features: np.ndarray, k: int = PR_K, block: int = PR_BLOCK) -> np.ndarray:
        """Squared distance of each point to its k-th nearest neighbour in its own set (index 0 is itself)."""
        radii = np.zeros(len(features), np.float32)
        rows = np.zeros([min(block, len(features)), len(features)], np.float32)
        for r0 in range(0, len(features), block):
            r1 = min(r0 + block, len(features))
            for c0 in range(0, len(features), block):
                c1 = min(c0 + block, len(features))
                rows[:r1 - r0, c0:c1] = self.distances(features[r0:r1], features[c0:c1])
            radii[r0:r1] = np.partition(rows[:r1 - r0], k, axis=1)[:, k]
        return radii

    def precision_recall(self, ref: np.ndarray, sample: np.ndarray, block: int = PR_BLOCK) -> tuple[float, float]:
        radii_ref, radii_sample = self.radii(ref), self.radii(sample)
        ref_in = np.zeros(len(ref), bool)
        sample_in = np.zeros(len(sample), bool)
        for r0 in range(0, len(ref), block):
            for c0 in range(0, len(sample), block):
                dist = self.distances(ref[r0:r0 + block], sample[c0:c0 + block])
                ref_in[r0:r0 + block] |= (dist <= radii_sample[None, c0:c0 + block]).any(axis=1)
                sample_in[c0:c0 + block] |= (dist <= radii_ref[r0:r0 + block, None]).any(axis=0)
        return float(sample_in.mean()), float(ref_in.mean())


# ------------------------------------------------------------------------------------------------- results
def format_results(results: dict, parseable: bool = True) -> str:
    """The five ADM result lines (the `.txt` file, or the console with `parseable=False`); gigatok.eval.adm uses this
    function too, so both evaluators write the same text."""
    score, reason = results.get("inception_score"), results.get("inception_score_unavailable")
    if score is not None:
        lines = [f"Inception Score: {float(score)!r}"]
    else:
        lines = ["Inception Score: nan" if parseable else f"Inception Score: unavailable ({reason})"]
    lines += [f"FID: {float(results['fid'])!r}", f"sFID: {float(results['sfid'])!r}",
              f"Precision: {float(results['precision'])!r}", f"Recall: {float(results['recall'])!r}"]
    if score is None and parseable:
        lines.append(f"# Inception Score unavailable: {reason}")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def evaluate(ref_path: Path, sample_path: Path, graph_path: Path, batch_size: int, purpose: str = "generation") -> dict:
    num_ref, _, _ = batch_info(ref_path)
    num_samples, _, _ = batch_info(sample_path)
    stored = stored_statistics(ref_path)
    evaluator = TFInceptionEvaluator(graph_path)
    print("warming up TensorFlow...")
    evaluator.sess.run(evaluator.pool, {evaluator.images: np.zeros([8, 64, 64, 3], np.float32)})
    print("computing reference batch activations...")
    ref_pool, ref_spatial = evaluator.activations(ref_path, batch_size, num_ref)
    if stored is not None and "mu_s" in stored:
        ref_stats, ref_stats_s = (stored["mu"], stored["sigma"]), (stored["mu_s"], stored["sigma_s"])
    elif stored is not None:
        raise UserError(f"'{ref_path}' stores mu/sigma but not mu_s/sigma_s (the ADM evaluator needs all four)")
    else:
        ref_stats, ref_stats_s = statistics(ref_pool), statistics(ref_spatial)
    print("computing sample batch activations...")
    sample_pool, sample_spatial = evaluator.activations(sample_path, batch_size, num_samples)
    print("computing evaluations...")
    results = {
        "inception_score": inception_score(evaluator.probabilities(sample_pool)),
        "inception_score_unavailable": None,
        "fid": frechet_distance(*statistics(sample_pool), *ref_stats),
        "sfid": frechet_distance(*statistics(sample_spatial), *ref_stats_s),
    }
    results["precision"], results["recall"] = evaluator.precision_recall(ref_pool, sample_pool)
    results.update(num_samples=num_samples, num_reference=num_ref, evaluator=EVALUATOR, warnings=[],
                   fid_method="sqrtm", reference_stats="stored" if stored is not None else "computed",
                   inception={"graph": str(graph_path)}, purpose=purpose, reference_path=str(ref_path),
                   sample_path=str(sample_path))
    return results


def resolve_graph(graph: str | None) -> Path:
    path = Path(graph).expanduser() if graph else Path.cwd() / GRAPH_NAME
    if not path.is_file():
        where = f"'{path}'" if graph else f"{GRAPH_NAME} in the current folder ({Path.cwd()})"
        raise UserError(f"the TF Inception graph {where} does not exist and cannot be downloaded from here: "
                        f"download {GRAPH_URL} and pass it with --graph (or put it in the current folder)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ref_batch", help="reference batch .npz (arr_0 uint8 NHWC, optional mu/sigma/mu_s/sigma_s)")
    parser.add_argument("sample_batch", help="sample batch .npz (arr_0 uint8 NHWC)")
    parser.add_argument("--graph", default=None, help=f"path of {GRAPH_NAME} (default: ./{GRAPH_NAME})")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Inception batch (ADM: 64)")
    parser.add_argument("--json-out", default=None, help="also write the JSON results to this path")
    parser.add_argument("--no-write", action="store_true", help="do not write <sample>.txt / <sample>.json")
    parser.add_argument("--purpose", choices=["generation", "reconstruction"], default="generation",
                        help="only recorded in the JSON (gFID vs rFID)")
    args = parser.parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise UserError("--batch-size must be positive")
        results = evaluate(Path(args.ref_batch), Path(args.sample_batch), resolve_graph(args.graph), args.batch_size,
                           args.purpose)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_results(results, parseable=False), end="")
    sample = Path(args.sample_batch)
    payload = json.dumps(results, indent=2, sort_keys=True) + "\n"
    if not args.no_write:
        _write_atomic(sample.with_suffix(".json"), payload)
        _write_atomic(sample.with_suffix(".txt"), format_results(results, parseable=True))
        print(f"wrote {sample.with_suffix('.txt')} and {sample.with_suffix('.json')}")
    if args.json_out:
        _write_atomic(Path(args.json_out), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
