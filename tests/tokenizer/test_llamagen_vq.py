"""LlamaGen's VQ-16 / VQ-8 (gigatok.tokenizer.llamagen_vq) against LlamaGen's own code.

Assets (tests/assets/llamagen_make_vectors.py, run on LlamaGen's tokenizer/tokenizer_image/vq_model.py): the key lists
of `VQ_models['VQ-16']()` / `['VQ-8']()` (keys/llamagen_VQ-*.txt), and LlamaGen's outputs with procedural weights for
the debug size (llamagen_vq_debug.npz) and the real VQ-16 at 64 px (llamagen_vq16_64px.npz).

Tolerances: 1e-4 of max |ref| for every feature map, latent and image (LlamaGen's taming attention vs our SDPA, and
oneDNN's per-shape rounding, differ by ~1e-6); codes must agree wherever the reference distance gap is not a near-tie
(<= 1e-4); the train-mode vq/commit losses to 1e-4 relative.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, load_procedural, read_key_list

from gigatok.builders import (
    build_gpt,
    build_gpt_config,
    build_tokenizer,
    load_frozen_encoder,
    load_tokenizer,
)
from gigatok.config import ConfigError, load_config
from gigatok.engine.sampling import check_gpt_fits_tokenizer
from gigatok.errors import UserError
from gigatok.hub import from_pretrained, save_pretrained
from gigatok.infra.checkpoint import CheckpointError, load_state_dict_strict
from gigatok.tokenizer.llamagen_vq import LlamaGenVQModel

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = ROOT / "configs" / "vq"
DEBUG = CONFIGS / "LlamaGen_VQ16_debug.yaml"


def assert_close(actual: torch.Tensor, ref: np.ndarray, rel: float = 1e-4, name: str = "") -> None:
    actual = actual.detach().float().numpy()
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} vs reference {ref.shape}"
    err = np.abs(actual - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err < rel, f"{name}: max |diff| / max |ref| = {err:.2e} >= {rel:.0e}"


def meta_tokenizer(config: str, overrides: list[str] | None = None) -> LlamaGenVQModel:
    return build_tokenizer(load_config(CONFIGS / config, overrides), device="meta")


@pytest.mark.parametrize("name, config, grid", [("VQ-16", "LlamaGen_VQ16.yaml", 16), ("VQ-8", "LlamaGen_VQ8.yaml", 32)])
def test_released_layout_loads_strictly(name: str, config: str, grid: int) -> None:
    """Exactly LlamaGen's keys and shapes (vq_ds16_c2i.pt / vq_ds8_c2i.pt, key "model"), so a strict load adopts
    them; 256 px gives a grid x grid raster of codes from 16384."""
    total, ref_shapes = read_key_list(f"llamagen_{name}")
    tokenizer = meta_tokenizer(config)
    shapes = {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()}
    assert shapes == ref_shapes
    assert sum(p.numel() for p in tokenizer.parameters()) == total
    load_state_dict_strict(tokenizer, {k: torch.empty(s, device="meta") for k, s in ref_shapes.items()},
                           assign=True)
    assert (tokenizer.num_tokens, tokenizer.latent_shape, tokenizer.codebook_size) == (grid * grid, (grid, grid), 16384)
    missing = {k: torch.empty(s, device="meta") for k, s in ref_shapes.items() if not k.startswith("decoder.mid.1.")}
    with pytest.raises(CheckpointError, match="decoder.mid.1.q.weight"):
        load_state_dict_strict(tokenizer, missing, assign=True)


@pytest.mark.parametrize("case, config, overrides", [
    ("llamagen_vq_debug", "LlamaGen_VQ16_debug.yaml", []),
    ("llamagen_vq16_64px", "LlamaGen_VQ16.yaml", ["model.init_args.image_size=64"]),
])
def test_parity_with_llamagen(case: str, config: str, overrides: list[str], vectors) -> None:
    ref = vectors(case)
    tokenizer = load_procedural(build_tokenizer(load_config(CONFIGS / config, overrides))).eval()
    images = torch.from_numpy(ref["image"])
    with torch.no_grad():
        quant, _, info = tokenizer.encode(images)
        assert_close(info["enc_cnn"], ref["enc"], name="enc")
        assert_close(info["pre_quant"], ref["pre_quant"], name="pre_quant")
        assert_close(quant, ref["quant"], name="quant")
        mismatch = info["codes"].numpy() != ref["codes"]
        assert not (mismatch & (ref["dist_gap"] > 1e-4)).any(), f"{mismatch.sum()} codes differ away from near-ties"
        assert torch.equal(tokenizer.encode_to_codes(images), info["codes"])
        assert_close(tokenizer.decode(torch.from_numpy(ref["quant"])), ref["recon"], name="recon")
        assert_close(tokenizer.decode_code(torch.from_numpy(ref["codes"])), ref["recon_from_codes"],
                     name="recon_from_codes")
        tokenizer.train()
        _, losses, _ = tokenizer.encode(images)
    assert float(losses.vq) == pytest.approx(float(ref["vq_loss"]), rel=1e-4)
    assert float(losses.commit) == pytest.approx(float(ref["commit_loss"]), rel=1e-4)


def test_codes_are_raster_order_and_training_forward_has_gradients() -> None:
    """codes[b, i * G + j] is the code of grid cell (i, j); the training forward returns recon and quantizer losses
    whose gradients reach the encoder (straight-through) and the codebook."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(DEBUG)).train()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    out = tokenizer(images)
    assert out.recon.shape == (2, 3, 64, 64) and out.codes.shape == (2, 16) and out.recon_direct is None
    quant = tokenizer.encode(images)[0].detach()  # (B, Dc, 4, 4)
    codebook = tokenizer.quantize.codebook().detach()
    for i, j in ((0, 0), (1, 3), (3, 2)):
        np.testing.assert_allclose(quant[:, :, i, j], codebook[out.codes[:, i * 4 + j]], atol=1e-6)
    (out.recon.square().mean() + out.quant_losses.vq + out.quant_losses.commit).backward()
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tokenizer.quantize.embedding.weight.grad.abs().sum() > 0


def test_frozen_encoder_and_save_pretrained(tmp_path: Path) -> None:
    """The on-the-fly encoder of train_c2i (decoding half dropped) and save_pretrained / from_pretrained give the
    same codes as the tokenizer they came from."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(DEBUG)).eval()
    torch.save({"model": tokenizer.state_dict()}, tmp_path / "vq.pt")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = tokenizer.encode_to_codes(images)
    frozen = load_frozen_encoder(tmp_path / "vq.pt", DEBUG)
    assert not hasattr(frozen, "decoder") and not hasattr(frozen, "post_quant_conv")
    assert torch.equal(frozen.encode_to_codes(images), codes)
    save_pretrained(tokenizer, tmp_path / "export")
    reloaded = from_pretrained(tmp_path / "export")
    assert type(reloaded) is type(tokenizer) and torch.equal(reloaded.encode_to_codes(images), codes)


def test_config_mistakes_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="VQ-16 downsamples by 16"):
        meta_tokenizer("LlamaGen_VQ16.yaml", ["model.init_args.encoder_ch_mult=[1,2,2,4]",
                                              "model.init_args.decoder_ch_mult=[1,2,2,4]"])
    with pytest.raises(ConfigError, match="adaptive_gn"):
        meta_tokenizer("LlamaGen_VQ8.yaml", ["model.init_args.adaptive_gn=true"])
    with pytest.raises(ConfigError, match="causal_type"):
        meta_tokenizer("LlamaGen_VQ16.yaml", ["model.causal_settings.causal_type=per-token"])


def test_llamagen_gpts_pair_with_vq16_only() -> None:
    """LlamaGen's c2i_B_256.pt (GPT-B, rope_2d, vocabulary 16384, 256 codes) models VQ-16's codes at 256 px; the
    sampler's check refuses it for VQ-8 (1024 codes per image)."""
    gpt = build_gpt_config("GPT-B", pos_type="rope_2d", vocab_size=16384, block_size=256, num_classes=1000)
    vq16, vq8 = meta_tokenizer("LlamaGen_VQ16.yaml"), meta_tokenizer("LlamaGen_VQ8.yaml")
    check_gpt_fits_tokenizer(gpt, vq16.codebook_size, vq16.num_tokens, "c2i_B_256.pt", "LlamaGen_VQ16.yaml")
    with pytest.raises(UserError, match="models 256 codes from a vocabulary of 16384.*gives 1024 codes"):
        check_gpt_fits_tokenizer(gpt, vq8.codebook_size, vq8.num_tokens, "c2i_B_256.pt", "LlamaGen_VQ8.yaml")


@pytest.mark.slow  # two launcher processes (~15 s on a busy 2-core machine)
def test_official_scripts_reconstruct_and_sample_with_gpt_2d(tmp_path: Path) -> None:
    """scripts/reconstruction.sh and scripts/sample_c2i_visualization.sh --gpt-2d run end to end (one process) with
    official-format procedural checkpoints: LlamaGen's vq_train.py layout {"model", "args", "steps"} for the
    tokenizer, and a LlamaGen c2i-style GPT {"model"} (rope_2d, no positional table) on its 4x4 codes."""
    tokenizer = load_procedural(build_tokenizer(load_config(DEBUG)))
    torch.save({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=64), "steps": 50},
               tmp_path / "vq.pt")
    assert torch.equal(load_tokenizer(tmp_path / "vq.pt", DEBUG).decoder.mid[1].q.weight,
                       tokenizer.decoder.mid[1].q.weight)
    torch.manual_seed(0)
    gpt = build_gpt("debug", pos_type="rope_2d", vocab_size=1024, block_size=16, num_classes=10).state_dict()
    assert "positional_embedding" not in gpt
    gpt["output.weight"] = torch.randn_like(gpt["output.weight"])  # a zero head samples uniformly
    torch.save({"model": gpt, "steps": 10}, tmp_path / "gpt.pt")

    shim = tmp_path / "one_process_torchrun.sh"  # torchrun's arguments dropped up to `-m`: one plain process
    shim.write_text(f'#!/usr/bin/env bash\nwhile [ $# -gt 0 ] && [ "$1" != "-m" ]; do shift; done\n'
                    f'exec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "TORCH_RUN_PATH": str(shim), "GPUS": "1", "OMP_NUM_THREADS": "1"}
    script = "; ".join([
        f"bash {ROOT}/scripts/reconstruction.sh --quant-way vq --data-path {ROOT}/tests/gt_qualitative "
        f"--image-size 64 --sample-dir {tmp_path}/rec --vq-ckpt {tmp_path}/vq.pt --model-config {DEBUG} "
        "--qualitative --per-proc-batch-size 4 --num-workers 0 --device cpu || exit 1",
        f"bash {ROOT}/scripts/sample_c2i_visualization.sh --quant-way=vq --image-size=64 --sample-dir={tmp_path}/gen "
        f"--vq-ckpt {tmp_path}/vq.pt --tok-config {DEBUG} --gpt-model debug --gpt-2d --gpt-ckpt {tmp_path}/gpt.pt "
        "--num-classes 10 --cfg-scale 2.0 --precision none --class-idx 1,3 --per-proc-batch-size 4 --qual-num 4 "
        "--device cpu",
    ])
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    folder = next((tmp_path / "rec").iterdir())
    assert folder.name.startswith("VQ-16-")
    assert sorted(p.name for p in folder.glob("*_gt.png")) == [f"{i:06d}_gt.png" for i in range(4)]
    assert (folder / "grid.png").is_file()
    with np.load(tmp_path / "gen" / "samples.npz") as data:
        images, labels = data["arr_0"], data["labels"]
    assert images.shape == (4, 64, 64, 3) and labels.tolist() == [1, 1, 3, 3]
    assert images.std() > 1.0 and len({im.tobytes() for im in images}) == 4
