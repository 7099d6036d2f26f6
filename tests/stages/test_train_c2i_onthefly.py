"""`train_c2i --dataset imagenet`: GPT training on images tokenized on the fly by the frozen tokenizer, on CPU.

Images: 64 sklearn digits (36 px, one class folder per digit); tokenizer: VQ_debug (32 px, 64 codes, codebook 1024,
random weights saved as an official checkpoint); GPT: debug.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import CONFIG, make_digit_folder, save_official_tokenizer
from PIL import Image

from gigatok.infra.checkpoint import read_checkpoint
from gigatok.stages.extract_codes import main as extract_main
from gigatok.stages.train_c2i import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread_module")

REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES = 64


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """(ImageFolder tree of the digits, tokenizer checkpoint)."""
    tmp = tmp_path_factory.mktemp("onthefly")
    return make_digit_folder(tmp / "digits", NUM_IMAGES), save_official_tokenizer(tmp / "tok.pt")


def _common(save_path: Path, name: str, *extra: str) -> list[str]:
    return ["--save-path", str(save_path), "--sub-exp-dir", name, "--gpt-model", "debug", "--num-workers", "0",
            "--device", "cpu", "--mixed-precision", "none", "--lr", "1e-3", "--log-every", "1",
            "--global-batch-size", "8", *extra]


def _images(digits: tuple[Path, Path], save_path: Path, name: str, *extra: str) -> list[str]:
    folder, ckpt = digits
    return ["--dataset", "imagenet", "--data-path", str(folder), "--tok-config", str(CONFIG), "--vq-ckpt", str(ckpt),
            *_common(save_path, name, *extra)]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["train/loss"] for line in lines}


def _weights(run_dir: Path, step: int, entry: str = "model") -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / f"{step:07d}.pt")[entry]


def test_the_frozen_encoder_is_the_tokenizer_s_ema_encoder_without_its_decoders(tmp_path):
    """What encodes the images in the loop: the checkpoint's "ema" weights (not "model"), no decoder parameters, no
    gradients, eval mode, and the codes of the full tokenizer."""
    from gigatok.builders import build_tokenizer, load_frozen_encoder, load_tokenizer

    torch.manual_seed(0)
    ema, model = build_tokenizer(CONFIG).state_dict(), build_tokenizer(CONFIG).state_dict()
    torch.save({"ema": ema, "model": model}, tmp_path / "tok.pt")
    encoder = load_frozen_encoder(tmp_path / "tok.pt", CONFIG)
    full = load_tokenizer(tmp_path / "tok.pt", CONFIG)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert {"encoder", "s2to1encoder", "quantize", "quant_conv"} <= {n for n, _ in encoder.named_children()}
    assert not [k for k in encoder.state_dict() if k.startswith(("decoder.", "s1to2decoder.", "post_quant_conv."))]
    assert encoder.state_dict().keys() <= ema.keys()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = encoder.encode_to_codes(images)
        assert torch.equal(codes, full.encode_to_codes(images)) and codes.shape == (4, 64)


@pytest.mark.parametrize("augmentation, extract_flags", [("center_flip", ()), ("ten_crop", ("--ten-crop",))])
def test_images_on_the_fly_train_exactly_as_their_extracted_codes(digits, tmp_path, augmentation, extract_flags):
    """With the views `extract_codes` stores (center + flip, or the ten crops), drawn per (seed, epoch, index) as the
    code dataset draws them, training on the images gives the losses and weights of training on the extracted codes
    (default dropouts, 12 steps = 1.5 epochs)."""
    folder, ckpt = digits
    code_path = tmp_path / "codes"
    extract_main(["--data-path", str(folder), "--code-path", str(code_path), "--model-config", str(CONFIG),
                  "--vq-ckpt", str(ckpt), "--num-workers", "0", "--device", "cpu", *extract_flags])
    steps = ["--iterations", "12", "--ckpt-every", "12"]
    train_main(["--code-path", str(code_path), *_common(tmp_path, "codes", *steps)])
    train_main(_images(digits, tmp_path, "images", *steps, f"--data.image_aug={augmentation}"))
    codes_losses, image_losses = _losses(tmp_path / "codes"), _losses(tmp_path / "images")
    assert sorted(image_losses) == list(range(1, 13))
    assert image_losses == codes_losses
    for key, value in _weights(tmp_path / "codes", 12).items():
        torch.testing.assert_close(_weights(tmp_path / "images", 12)[key], value, rtol=0, atol=0)


def test_official_random_crop_learns_and_records_the_tokenizer(digits, tmp_path):
    """The official augmentation (random crop + flip): the loss falls, an unreadable file is replaced and counted, the
    resolved config records the tokenizer and the GPT is sized by it (K 1024, L 64, 10 classes from the folders)."""
    folder = shutil.copytree(digits[0], tmp_path / "digits")
    (folder / "3" / "broken.png").write_bytes(b"not a png")
    train_main(_images((folder, digits[1]), tmp_path, "run", "--iterations", "40", "--ckpt-every", "40",
                       "--log-every", "8"))
    losses = _losses(tmp_path / "run")
    assert losses[40] < losses[8] - 0.5, losses
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 40 and 1 <= last["train/corrupt_images"] <= 5  # met at most once per epoch
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "0000040.pt")
    gpt_config = ckpt["extra"]["gpt_config"]
    assert (gpt_config["vocab_size"], gpt_config["block_size"], gpt_config["num_classes"]) == (1024, 64, 10)
    data, tok = ckpt["config"]["data"], ckpt["config"]["tokenizer"]
    assert data["dataset"] == "imagenet" and data["image_aug"] == "random_crop"
    assert tok["vq_ckpt"] == str(digits[1]) and tok["tok_config"] == str(CONFIG)


def test_resume_after_sigkill_continues_exactly_on_images(digits, tmp_path):
    """SIGKILL a run on images (random crops and flips, dropouts, EMA) after its checkpoint at step 6, mid-epoch; the
    rerun logs exactly the losses of an uninterrupted run (3 epochs) and ends with the same weights: the data position,
    the per-sample augmentation draws and the RNG states all continue."""
    args = ["--iterations", "24", "--ckpt-every", "6", "--ema"]
    train_main(_images(digits, tmp_path, "reference", *args))
    reference = _losses(tmp_path / "reference")

    env = {k: v for k, v in os.environ.items() if k not in ("GPUS", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "gigatok.stages.train_c2i", *_images(digits, tmp_path, "killed", *args)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "0000006.pt"
    deadline = time.time() + 120
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "0000024.pt").exists()

    train_main(_images(digits, tmp_path, "killed", *args))
    assert _losses(tmp_path / "killed") == reference
    for entry in ("model", "ema"):
        for key, value in _weights(tmp_path / "reference", 24, entry).items():
            torch.testing.assert_close(_weights(tmp_path / "killed", 24, entry)[key], value, rtol=0, atol=0)


def test_on_the_fly_mistakes_are_one_line_user_errors(digits, tmp_path, capsys):
    folder, ckpt = digits
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (36, 36)).save(flat / "a.png")
    base = _common(tmp_path, "bad", "--iterations", "2")

    def error(*argv: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            train_main([*argv, *base])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "Traceback" not in err, err
        return err

    err = error("--dataset", "imagenet", "--data-path", str(folder), "--tok-config", str(CONFIG))
    assert "needs --vq-ckpt" in err
    err = error("--dataset", "imagenet", "--vq-ckpt", str(ckpt))
    assert "needs --data-path, --tok-config" in err
    assert "pass --code-path" in error()  # codes stay the default
    images = ["--dataset", "imagenet", "--tok-config", str(CONFIG), "--vq-ckpt", str(ckpt)]
    err = error(*images, "--data-path", str(folder), "--image-size", "256")
    assert "--image-size 256 differs from the tokenizer's image_size 32" in err
    assert "no class sub-folders" in error(*images, "--data-path", str(flat))
    assert "not found or not a folder" in error(*images, "--data-path", str(tmp_path / "missing"))
    missing_config = ["--tok-config", str(tmp_path / "no.yaml"), "--vq-ckpt", str(ckpt)]
    assert "config file not found" in error("--dataset", "imagenet", *missing_config, "--data-path", str(folder))
    missing_ckpt = ["--tok-config", str(CONFIG), "--vq-ckpt", str(tmp_path / "no.pt")]
    assert str(tmp_path / "no.pt") in error("--dataset", "imagenet", *missing_ckpt, "--data-path", str(folder))
    assert not (tmp_path / "bad" / "checkpoints").exists()
