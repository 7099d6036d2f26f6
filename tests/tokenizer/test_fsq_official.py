"""The official GigaTok FSQ tokenizers (`--quant-way fsq --fsq-model FSQ-16|FSQ-8 --fsq-ckpt ... --levels ...`).

The official `fsq/fsq_model.py` `FSQModel` is LlamaGen's CNN VQ model with an FSQ quantizer, so `--quant-way fsq`
builds our `VQ-16` / `VQ-8` with `quantizer: fsq` (`gigatok.builders.fsq_tokenizer_config`). Assets, made by
tests/assets/fsq_make_vectors.py from the official code: keys/fsq_FSQ-{16,8}.txt (the official state_dict layout with
levels [8, 8, 8, 6, 5]) and fsq16_64px.npz (the official FSQ-16 with procedural weights at 64 px: codes and
decode_code output).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASSETS, ROOT, load_procedural, read_key_list

from gigatok.builders import (
    build_gpt,
    build_tokenizer,
    fsq_tokenizer_config,
    load_tokenizer,
    parse_fsq_levels,
)
from gigatok.config import ConfigError
from gigatok.infra.checkpoint import load_state_dict_strict

pytestmark = pytest.mark.usefixtures("one_thread")

LEVELS = [8, 8, 8, 6, 5]


@pytest.mark.parametrize("name, grid", [("FSQ-16", 16), ("FSQ-8", 32)])
def test_official_layout_loads_strictly(name: str, grid: int) -> None:
    total, ref_shapes = read_key_list(f"fsq_{name}")
    tokenizer = build_tokenizer(fsq_tokenizer_config(name, LEVELS, 256), device="meta")
    assert {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()} == ref_shapes
    assert sum(p.numel() for p in tokenizer.parameters()) == total
    load_state_dict_strict(tokenizer, {k: torch.empty(s, device="meta") for k, s in ref_shapes.items()}, assign=True)
    assert (tokenizer.num_tokens, tokenizer.codebook_size, tokenizer.quantize.levels) == (grid * grid, 15360, LEVELS)


def test_parity_with_the_official_fsq16() -> None:
    """Codes equal and decode_code within 1e-4 (relative to the largest value) of the official FSQ-16, procedural
    weights, 64 px."""
    with np.load(ASSETS / "fsq16_64px.npz") as data:
        ref = {k: data[k] for k in data.files}
    tokenizer = load_procedural(build_tokenizer(fsq_tokenizer_config("FSQ-16", LEVELS, 64))).eval()
    image = torch.from_numpy(ref["image"])
    with torch.no_grad():
        quant, _, info = tokenizer.encode(image)
        codes = tokenizer.encode_to_codes(image)
        recon = tokenizer.decode_code(codes)
    assert torch.equal(codes, torch.from_numpy(ref["codes"])) and torch.equal(info["codes"], codes)
    assert np.abs(quant.numpy() - ref["quant"]).max() < 1e-6
    assert np.abs(recon.numpy() - ref["recon_from_codes"]).max() / np.abs(ref["recon_from_codes"]).max() < 1e-4


def test_levels_flags() -> None:
    assert parse_fsq_levels("8, 8, 8, 6, 5") == LEVELS == parse_fsq_levels(None)  # official --levels and default
    assert parse_fsq_levels(None, "8^6") == [8] * 6 == parse_fsq_levels("8,8,8,8,8,8", "8^6")
    with pytest.raises(ConfigError, match="disagree"):
        parse_fsq_levels("8,5", "8^6")
    with pytest.raises(ConfigError, match="expected 'a\\^b'"):
        parse_fsq_levels(None, "4096")
    with pytest.raises(ConfigError, match="--fsq-model 'FSQ-32'"):
        fsq_tokenizer_config("FSQ-32", LEVELS, 256)


@pytest.mark.slow  # the real FSQ-16 (72M parameters) in two launcher processes
def test_quant_way_fsq_through_the_official_scripts(tmp_path: Path) -> None:
    """scripts/reconstruction.sh (--levels) and scripts/sample_c2i_visualization.sh (--codebook-size-fsq) with
    --quant-way fsq and an official-format procedural FSQ-16 checkpoint {"model", "args", "steps"}; the GPT is a
    debug GPT on its 4x4 codes from 8^3 = 512."""
    levels = [8, 8, 8]
    tokenizer = load_procedural(build_tokenizer(fsq_tokenizer_config("FSQ-16", levels, 64)))
    torch.save({"model": tokenizer.state_dict(), "steps": 50}, tmp_path / "fsq.pt")
    loaded = load_tokenizer(tmp_path / "fsq.pt", fsq_tokenizer_config("FSQ-16", levels, 64))
    assert torch.equal(loaded.decoder.conv_out.weight, tokenizer.decoder.conv_out.weight)
    torch.manual_seed(0)
    gpt = build_gpt("debug", pos_type="rope_2d", vocab_size=512, block_size=16, num_classes=10).state_dict()
    gpt["output.weight"] = torch.randn_like(gpt["output.weight"])  # a zero head samples uniformly
    torch.save({"model": gpt, "steps": 10}, tmp_path / "gpt.pt")

    shim = tmp_path / "one_process_torchrun.sh"  # torchrun's arguments dropped up to `-m`: one plain process
    shim.write_text(f'#!/usr/bin/env bash\nwhile [ $# -gt 0 ] && [ "$1" != "-m" ]; do shift; done\n'
                    f'exec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "TORCH_RUN_PATH": str(shim), "GPUS": "1", "OMP_NUM_THREADS": "1"}
    unused = ROOT / "configs" / "vq" / "VQ_SS256.yaml"  # the official scripts pass a tokenizer config along
    script = "; ".join([
        f"bash {ROOT}/scripts/reconstruction.sh --quant-way fsq --fsq-model FSQ-16 --fsq-ckpt {tmp_path}/fsq.pt "
        f"--levels '8, 8, 8' --model-config {unused} --data-path {ROOT}/tests/gt_qualitative --image-size 64 "
        f"--sample-dir {tmp_path}/rec --qualitative --per-proc-batch-size 4 --num-workers 0 --device cpu || exit 1",
        f"bash {ROOT}/scripts/sample_c2i_visualization.sh --quant-way=fsq --fsq-model FSQ-16 --fsq-ckpt "
        f"{tmp_path}/fsq.pt --codebook-size-fsq 8^3 --tok-config {unused} --image-size=64 "
        f"--sample-dir={tmp_path}/gen --gpt-model debug --gpt-2d --gpt-ckpt {tmp_path}/gpt.pt --num-classes 10 "
        "--cfg-scale 2.0 --precision none --class-idx 1,3 --per-proc-batch-size 4 --qual-num 4 --device cpu",
    ])
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    folder = next((tmp_path / "rec").iterdir())
    assert folder.name == "FSQ-16-imagenet-size-64-size-64"  # the official folder name of an FSQ run
    assert sorted(p.name for p in folder.glob("*_gt.png")) == [f"{i:06d}_gt.png" for i in range(4)]
    with np.load(tmp_path / "gen" / "samples.npz") as data:
        images, labels = data["arr_0"], data["labels"]
    assert images.shape == (4, 64, 64, 3) and labels.tolist() == [1, 1, 3, 3]
    assert images.std() > 1.0 and len({im.tobytes() for im in images}) == 4


def test_quant_way_fsq_codes_train_and_val_loss(tmp_path: Path, capsys) -> None:
    """--quant-way fsq through the GPT's data path: extract_codes (--fsq-model/--fsq-ckpt/--levels) stores the
    official FSQ-16's codes with K = prod(levels) in meta.json; train_c2i trains on those codes and on the images
    tokenized on the fly by the same tokenizer; val_loss_c2i gives the same loss from the codes and from the images
    (center view both ways). --vq-ckpt with --quant-way fsq is refused in one line."""
    from helpers import make_digit_folder

    from gigatok.stages.extract_codes import main as extract_main
    from gigatok.stages.train_c2i import main as train_main
    from gigatok.stages.val_loss_c2i import main as val_main

    levels, size = [4, 4, 4], 32  # K = 64; FSQ-16 at 32 px: 2x2 codes
    torch.save({"model": load_procedural(build_tokenizer(fsq_tokenizer_config("FSQ-16", levels, size))).state_dict(),
                "steps": 5}, tmp_path / "fsq.pt")
    digits = make_digit_folder(tmp_path / "digits", 24)
    fsq = ["--quant-way", "fsq", "--fsq-model", "FSQ-16", "--fsq-ckpt", str(tmp_path / "fsq.pt")]
    unused = str(ROOT / "configs" / "vq" / "VQ_SS256.yaml")  # official scripts pass it along; not read with fsq
    extract_main(["--data-path", str(digits), "--code-path", str(tmp_path / "codes"), "--model-config", unused,
                  *fsq, "--levels", "4, 4, 4", "--image-size", str(size), "--num-workers", "0", "--device", "cpu"])
    meta = json.loads((tmp_path / "codes" / "meta.json").read_text())
    assert (meta["codebook_size"], meta["num_tokens"]) == (64, 4)
    assert meta["tokenizer"]["config"] == "FSQ-16 levels [4, 4, 4]"
    stored = np.load(tmp_path / "codes" / meta["shards"][0]["codes"])  # (N, A, L)
    assert stored.shape == (24, 2, 4) and stored.max() < 64 and len(np.unique(stored)) > 4

    common = ["--gpt-model", "debug", "--num-workers", "0", "--device", "cpu", "--mixed-precision", "none",
              "--global-batch-size", "8", "--iterations", "3", "--ckpt-every", "3", "--no-wandb",
              "--save-path", str(tmp_path / "gpt")]
    train_main(["--code-path", str(tmp_path / "codes"), *fsq, "--codebook-size-fsq", "4^3", "--sub-exp-dir",
                "codes", *common])
    train_main(["--dataset", "imagenet", "--data-path", str(digits), *fsq, "--levels", "4,4,4", "--image-size",
                str(size), "--sub-exp-dir", "images", *common])
    ckpt = tmp_path / "gpt" / "codes" / "checkpoints" / "0000003.pt"
    assert ckpt.is_file() and (tmp_path / "gpt" / "images" / "checkpoints" / "0000003.pt").is_file()

    val = ["--gpt-ckpt", str(ckpt), "--gpt-model", "debug", "--num-workers", "0", "--device", "cpu",
           "--precision", "none"]
    val_main(["--code-path", str(tmp_path / "codes"), *val, "--out", str(tmp_path / "codes.json")])
    val_main(["--data-path", str(digits), *fsq, "--levels", "4,4,4", "--image-size", str(size), *val, "--out",
              str(tmp_path / "images.json")])
    from_codes, from_images = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("codes", "images"))
    assert from_codes["num_codes"] == from_images["num_codes"] == 24 * 4
    assert from_images["val_loss"] == pytest.approx(from_codes["val_loss"], rel=1e-5)

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        extract_main(["--data-path", str(digits), "--code-path", str(tmp_path / "bad"), "--model-config", unused,
                      *fsq, "--vq-ckpt", str(tmp_path / "fsq.pt"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "drop --vq-ckpt" in err and "Traceback" not in err
