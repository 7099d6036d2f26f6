"""Evaluate an image batch against a reference batch with the ADM protocol: IS, FID, sFID, precision, recall.

Two evaluators give the same result files:
- "gigatok-pytorch" (default): our pure-PyTorch FID Inception (gigatok/eval/inception.py, TF1-bilinear resize to
  299, weights of the TF 2015-12-05 graph) and the ADM metric code in gigatok/eval/metrics.py. Expected agreement
  with the TF evaluator (SPEC_evaluation.md section 2): FID ~1e-4 relative, sFID ~1e-5, IS ~1e-3, P/R ~0.002.
- "adm-tensorflow": gigatok/eval/adm_tf_evaluator.py, a standalone re-implementation of OpenAI's TF evaluator on
  `classify_image_graph_def.pb`, run as a subprocess in a separate interpreter with TensorFlow (`eval_python`,
  from EVAL_PYTHON_PATH / --eval-python-path as in the official scripts; `bash env_install.sh --eval-env` builds
  one). This is the canonical path for numbers that go next to published ones.

Protocol (both paths): the reference's stored mu/sigma/mu_s/sigma_s are used when it has them (ADM's
VIRTUAL_imagenet256_labeled.npz), else statistics come from its images; the reference images always go through
Inception (precision/recall need them); IS is computed on the samples only. One deviation, for tiny sets only:
when a set has no more images than the feature dimension and both sets are small (<= 4096 images), FID/sFID
use the exact feature-space formula `metrics.frechet_distance_from_features` instead of scipy's sqrtm, which is
then both slow (~1 min per call on CPU) and inaccurate (~1e-3); `results["fid_method"]` records which was used.

Reference features are cached next to the reference as `<ref stem>.gigatok_cache.npz`, keyed by the weights
file's SHA-1 and the reference's size and mtime, so repeated evaluations (CFG search) skip the 10k-50k images.

Shape letters: H, W height and width of an image or feature map; N a flattened count, stated where used. Here N is
the number of images of a batch file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigatok.errors import UserError

# The five ADM result lines: one format for both evaluators, owned by the standalone TF script (no torch, no gigatok).
from gigatok.eval.adm_tf_evaluator import format_results
from gigatok.eval.guards import FEATURE_DIM, check_pair, emit_warnings, resolve_purpose
from gigatok.eval.inception import (
    extract_features,
    find_inception_weights,
    load_inception,
)
from gigatok.eval.metrics import (
    MIN_IMAGES,
    PR_K,
    TooFewImagesError,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_score,
    precision_recall,
)
from gigatok.eval.npz import npz_info, read_image_batches, read_reference_stats
from gigatok.infra.io import save_npz_atomic, write_text_atomic

TF_SCRIPT = Path(__file__).with_name("adm_tf_evaluator.py")
TF_GRAPH_NAME = "classify_image_graph_def.pb"
TF_GRAPH_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/classify_image_graph_def.pb"
RESULT_KEYS = ("inception_score", "inception_score_unavailable", "fid", "sfid", "precision", "recall",
               "num_samples", "num_reference", "evaluator", "warnings")
GRAM_MAX_IMAGES = 4096  # both sets at most this large (and one <= FEATURE_DIM): exact feature-space FID
CACHE_VERSION = 1
_SAME_INTERPRETER = ("", "python")  # the official scripts' default --eval-python-path means "this python"
_WEIGHTS_SHA1: dict[tuple[str, int, int], str] = {}


class EvaluatorError(UserError, ValueError):
    """The external (TensorFlow) evaluator cannot be run or failed, or its result file is unusable."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/"auto" -> CUDA when available, else CPU; "cuda" without a GPU is a user error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluatorError("device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    return device


def external_interpreter(eval_python: str | None) -> str | None:
    """The interpreter to run the TF evaluator with, or None for our PyTorch path ("python", empty, None, or
    the running interpreter itself)."""
    if eval_python is None or eval_python.strip() in _SAME_INTERPRETER:
        return None
    found = shutil.which(eval_python)
    if found is None:
        raise EvaluatorError(f"--eval-python-path / EVAL_PYTHON_PATH '{eval_python}' is not an executable "
                             "interpreter. Build the evaluation environment with `bash env_install.sh --eval-env` "
                             "and use the python it prints, or pass 'python' for the PyTorch evaluator.")
    if os.path.abspath(found) == os.path.abspath(sys.executable):
        return None
    return found


def evaluate_npz(ref_path: str | os.PathLike, sample_path: str | os.PathLike, *, inception_weights: str | None = None,
                 device: str | torch.device | None = None, batch_size: int = 64, purpose: str = "auto",
                 eval_python: str | None = None, logger: logging.Logger | None = None, use_cache: bool = True,
                 progress: bool = True) -> dict[str, Any]:
    """Compute IS, FID, sFID, precision and recall of a sample batch against a reference batch (ADM protocol).

    Everything cheap is checked first (both npz files, the weights or the TF interpreter and graph), and the
    guards' warnings are logged before any image goes through Inception.

    Args:
        ref_path: reference batch (VIRTUAL_imagenet256_labeled.npz for gFID, val_imagenet.npz for rFID).
        sample_path: sample batch, `arr_0` (N, H, W, 3) uint8.
        inception_weights: PyTorch path: weights file (default lookup in `find_inception_weights`); TF path:
            the `classify_image_graph_def.pb` file (default ./classify_image_graph_def.pb).
        device: "auto"/None, "cpu", "cuda" (PyTorch path).
        batch_size: images per Inception forward (ADM: 64).
        purpose: "generation", "reconstruction" or "auto" (from the batches' gigatok_kind tags and names).
        eval_python: interpreter with TensorFlow for the TF evaluator; None/"python"/this interpreter: PyTorch.
        logger: where progress and warnings go (default: this module's logger).
        use_cache: read/write the reference feature cache (PyTorch path).
        progress: show progress bars.

    Returns:
        {"inception_score": float | None, "inception_score_unavailable": str | None, "fid", "sfid", "precision",
         "recall": float, "num_samples", "num_reference": int, "evaluator": "gigatok-pytorch" | "adm-tensorflow",
         "warnings": [str], plus "purpose", "fid_method", "reference_stats", "reference_path", "sample_path",
         "inception" (what network ran)}.
    """
    logger = logger or logging.getLogger(__name__)
    if batch_size <= 0:
        raise EvaluatorError(f"batch size must be positive, got {batch_size}")
    ref_info, sample_info = npz_info(ref_path), npz_info(sample_path)
    for path, info in ((sample_path, sample_info), (ref_path, ref_info)):
        if info["count"] < MIN_IMAGES:
            raise TooFewImagesError(f"'{path}' holds {info['count']} image(s); the ADM metrics need at least "
                                    f"{MIN_IMAGES} per set (precision/recall take each image's {PR_K}rd nearest "
                                    "neighbour). Evaluate more images.")
    resolved = resolve_purpose(purpose, sample_info, ref_info)
    warnings = check_pair(sample_info, ref_info, resolved)
    interpreter, weights_or_graph = check_evaluator(eval_python, inception_weights)  # fails before heavy work
    logger.info(f"evaluating '{sample_path}' ({sample_info['count']} images, {sample_info['height']}x"
                f"{sample_info['width']}) against '{ref_path}' ({ref_info['count']} images, stored statistics: "
                f"{ref_info['has_stats']}), purpose {resolved}")
    emit_warnings(warnings, logger)
    if interpreter is None:
        results = _evaluate_pytorch(Path(ref_path), Path(sample_path), ref_info, sample_info, weights_or_graph,
                                    resolve_device(device), batch_size, use_cache, progress, logger)
    else:
        results = _run_tf_evaluator(interpreter, Path(ref_path), Path(sample_path), weights_or_graph, batch_size,
                                    resolved, logger)
    results.update(purpose=resolved, reference_path=str(ref_path), sample_path=str(sample_path))
    extra = [w for w in results.get("warnings", []) if w not in warnings]
    emit_warnings(extra, logger)
    results["warnings"] = warnings + extra
    return results


def _is_unavailable_reason(weights_kind: str) -> str:
    return (f"the Inception weights in use ({weights_kind}) have no 1008-way classifier head, so the Inception Score "
            "cannot be computed. For IS, pass --inception-weights with torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or "
            "put one into $TORCH_HOME/hub/checkpoints), or use the TF evaluator (--eval-python-path).")


def _frechet(sample: np.ndarray, ref: np.ndarray | None, ref_stats: tuple[np.ndarray, np.ndarray]) -> tuple[float, str]:
    """FID between sample features and the reference (features when computed from images, else stored stats)."""
    if (ref is not None and min(len(sample), len(ref)) <= FEATURE_DIM
            and max(len(sample), len(ref)) <= GRAM_MAX_IMAGES):
        return frechet_distance_from_features(sample, ref), "gram"
    mu, sigma = feature_statistics(sample)
    return frechet_distance(mu, sigma, *ref_stats), "sqrtm"


def _evaluate_pytorch(ref_path: Path, sample_path: Path, ref_info: dict[str, Any], sample_info: dict[str, Any],
                      weights: tuple[Path, str], device: torch.device, batch_size: int, use_cache: bool,
                      progress: bool, logger: logging.Logger) -> dict[str, Any]:
    stored = read_reference_stats(ref_path)
    logger.info(f"Inception weights: {weights[0]} ({weights[1]}), device {device}")
    model = load_inception(str(weights[0]), device)
    ref = _reference_features(model, ref_path, ref_info, weights, stored, batch_size, use_cache, progress, logger)
    logger.info(f"computing sample activations ({sample_info['count']} images)...")
    sample = extract_features(model, read_image_batches(sample_path, batch_size), batch_size, device, progress,
                              total=sample_info["count"])
    del model
    logger.info("computing FID, sFID, IS, precision and recall...")
    results: dict[str, Any] = {"evaluator": "gigatok-pytorch", "num_samples": len(sample["pool"]),
                               "num_reference": ref_info["count"]}
    fid, fid_method = _frechet(sample["pool"], ref.get("pool_for_stats"), (ref["mu"], ref["sigma"]))
    sfid, _ = _frechet(sample["spatial"], ref.get("spatial"), (ref["mu_s"], ref["sigma_s"]))
    if "logits" in sample:
        results.update(inception_score=inception_score(sample["logits"]), inception_score_unavailable=None)
    else:
        results.update(inception_score=None, inception_score_unavailable=_is_unavailable_reason(weights[1]))
    precision, recall = precision_recall(ref["pool"], sample["pool"], device=device)
    results.update(fid=fid, sfid=sfid, precision=precision, recall=recall, fid_method=fid_method,
                   reference_stats=ref["stats_source"], warnings=list(ref["warnings"]),
                   inception={"weights": str(weights[0]), "kind": weights[1], "device": str(device)})
    return results


def _weights_sha1(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _WEIGHTS_SHA1:
        digest = hashlib.sha1()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _WEIGHTS_SHA1[key] = digest.hexdigest()
    return _WEIGHTS_SHA1[key]


def cache_path(ref_path: str | os.PathLike) -> Path:
    """Where the reference feature cache of `ref_path` lives: `<ref stem>.gigatok_cache.npz` next to it."""
    ref_path = Path(ref_path)
    return ref_path.with_name(f"{ref_path.stem}.gigatok_cache.npz")


def _reference_features(model: torch.nn.Module, ref_path: Path, ref_info: dict[str, Any], weights: tuple[Path, str],
                        stored: dict[str, np.ndarray] | None, batch_size: int, use_cache: bool, progress: bool,
                        logger: logging.Logger) -> dict[str, Any]:
    """Reference pool features (for P/R) and statistics (stored, else from the images), through the cache.

    Returns:
        {"pool": (N, 2048) float32, "mu", "sigma", "mu_s", "sigma_s": float64 statistics, "stats_source":
         "stored" | "computed" | "stored+computed-spatial", "warnings": [str], and, for small computed-stats
         references, "pool_for_stats" / "spatial" features for the exact small-set FID}.
    """
    stat = ref_path.stat()
    key = json.dumps({"version": CACHE_VERSION, "weights_kind": weights[1], "weights_sha1": _weights_sha1(weights[0]),
                      "reference": ref_path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, sort_keys=True)
    cached = _read_cache(cache_path(ref_path), key, logger) if use_cache else None
    if cached is None:
        logger.info(f"computing reference activations ({ref_info['count']} images)...")
        feats = extract_features(model, read_image_batches(ref_path, batch_size), batch_size, None, progress,
                                 total=ref_info["count"])
        cached = {"pool": feats["pool"]}
        if stored is None or "mu_s" not in stored:
            cached["mu_s"], cached["sigma_s"] = feature_statistics(feats["spatial"])
        if stored is None:
            cached["mu"], cached["sigma"] = feature_statistics(feats["pool"])
        if len(feats["pool"]) <= GRAM_MAX_IMAGES:
            cached["spatial"] = feats["spatial"]  # small: kept for the exact small-set FID
        if use_cache:
            _write_cache(cache_path(ref_path), key, cached, logger)
    ref: dict[str, Any] = dict(cached, warnings=[])
    if stored is None:
        ref["stats_source"] = "computed"
        if "spatial" in cached:
            ref["pool_for_stats"] = cached["pool"]
    else:
        ref.pop("spatial", None)  # FID/sFID are against the stored statistics, not these images
        ref.update({k: v for k, v in stored.items()})
        ref["stats_source"] = "stored" if "mu_s" in stored else "stored+computed-spatial"
        if "mu_s" not in stored:
            ref["warnings"].append(f"the reference '{ref_path.name}' stores mu/sigma but no mu_s/sigma_s: sFID is "
                                   "computed against its images instead, while FID uses the stored statistics.")
    return ref


def _read_cache(path: Path, key: str, logger: logging.Logger) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                logger.info(f"reference cache {path} is for other weights or an older reference; recomputing")
                return None
            cached = {k: data[k] for k in data.files if k != "key"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # truncated, garbage, half-written
        logger.warning(f"ignoring unreadable reference cache {path} ({type(err).__name__}: {err}); recomputing")
        return None
    logger.info(f"reference activations/statistics read from the cache {path}")
    return cached


def _write_cache(path: Path, key: str, arrays: dict[str, np.ndarray], logger: logging.Logger) -> None:
    if not os.access(path.parent, os.W_OK):
        logger.info(f"not caching the reference features ({path.parent} is not writable)")
        return
    try:
        save_npz_atomic(path, key=np.array(key), **arrays)
        logger.info(f"reference activations/statistics cached in {path}")
    except OSError as err:  # a full disk included: the cache is an optimisation, the evaluation goes on
        logger.warning(f"could not write the reference cache {path}: {err}")


def check_evaluator(eval_python: str | None, inception_weights: str | None = None
                    ) -> tuple[str | None, tuple[Path, str] | Path]:
    """Preflight of the evaluator a stage will call at its end, so that a missing file fails before hours of work.

    Returns:
        (None, (Inception weights file, kind)) for our PyTorch path, or (external interpreter, TF graph file).

    Raises:
        EvaluatorError: `eval_python` is not an executable, or the TF graph is missing / not a .pb file.
        InceptionWeightsError: our path and no Inception weights anywhere (the message says how to get them).
    """
    interpreter = external_interpreter(eval_python)
    if interpreter is None:
        return None, find_inception_weights(inception_weights)
    return interpreter, find_tf_graph(inception_weights)


def find_tf_graph(inception_weights: str | None) -> Path:
    """The TF Inception graph for the TF evaluator: the explicit file, else ./classify_image_graph_def.pb."""
    graph = Path(inception_weights).expanduser() if inception_weights else Path.cwd() / TF_GRAPH_NAME
    if inception_weights and graph.suffix != ".pb":
        raise EvaluatorError(f"the TF evaluator (--eval-python-path) needs the TF graph {TF_GRAPH_NAME} as "
                             f"--inception-weights, got '{graph}' (PyTorch weights only work with the PyTorch "
                             "evaluator: --eval-python-path python)")
    if not graph.is_file():
        raise EvaluatorError(f"the TF Inception graph '{graph}' does not exist. Download it (roughly 100 MB) from "
                             f"{TF_GRAPH_URL} and pass it with --inception-weights, or put it in the current folder.")
    return graph


def _run_tf_evaluator(interpreter: str, ref_path: Path, sample_path: Path, graph: Path, batch_size: int,
                      purpose: str, logger: logging.Logger) -> dict[str, Any]:
    """Run adm_tf_evaluator.py in `interpreter` and read back its JSON results."""
    with tempfile.TemporaryDirectory(prefix="gigatok_adm_tf_") as tmp:
        out = Path(tmp) / "results.json"
        cmd = [interpreter, str(TF_SCRIPT), str(ref_path), str(sample_path), "--graph", str(graph),
               "--batch-size", str(batch_size), "--purpose", purpose, "--json-out", str(out), "--no-write"]
        logger.info(f"running the ADM TensorFlow evaluator: {' '.join(cmd)}")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info logs drown the evaluator's own output
        proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True, env=env, check=False)
        if proc.stderr:
            sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise EvaluatorError(f"the ADM TensorFlow evaluator ({interpreter} {TF_SCRIPT.name}) failed with exit "
                                 f"code {proc.returncode}:\n{tail}")
        try:
            results = json.loads(out.read_text())
        except (OSError, ValueError) as err:
            raise EvaluatorError(f"the ADM TensorFlow evaluator ({interpreter}) exited without a readable result "
                                 f"file ({err}); is {TF_SCRIPT.name} the evaluator this interpreter ran?") from None
    missing = [k for k in RESULT_KEYS if k not in results]
    if missing:
        raise EvaluatorError(f"the ADM TensorFlow evaluator's results lack {missing}")
    return results






def write_results(sample_path: str | os.PathLike, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write `<sample>.json` (all results) and `<sample>.txt` (the ADM lines) next to the sample batch, atomically.

    Returns:
        (json path, txt path).
    """
    sample_path = Path(sample_path)
    json_path, txt_path = sample_path.with_suffix(".json"), sample_path.with_suffix(".txt")
    write_text_atomic(json_path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_text_atomic(txt_path, format_results(results, parseable=True))
    return json_path, txt_path


def read_results_txt(path: str | os.PathLike) -> dict[str, float]:
    """Parse a results `.txt` (ours or the ADM/LlamaGen evaluator's) the way GigaTok's cfg search does.

    Returns:
        {"Inception Score", "FID", "sFID", "Precision", "Recall": float} for the lines present (IS may be nan).
    """
    values = {}
    for line in Path(path).read_text().splitlines():
        for metric in ("Inception Score", "FID", "sFID", "Precision", "Recall"):
            if line.startswith(f"{metric}:"):
                values[metric] = float(line.split(":")[-1].strip())
    return values
