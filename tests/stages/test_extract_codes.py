"""Code extraction (`gigatok.stages.extract_codes`) and the code datasets (`gigatok.data.codes`) on CPU.

Images: sklearn's 8x8 digits, colourised and upsampled to 36 px, in ImageFolder class folders (labels = digits).
Tokenizer: the tiny VQ_debug config (32 px, 64 codes, codebook 1024) with random weights saved in the official
checkpoint format.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2
from helpers import make_digit_folder, save_official_tokenizer
from PIL import Image

from gigatok.builders import load_tokenizer
from gigatok.data.codes import (
    CENTER_FLIP_VIEWS,
    TEN_CROP_VIEWS,
    CodeDataset,
    CodesError,
    check_meta,
    fast_file_hash,
    read_meta,
)
from gigatok.data.transforms import center_crop_arr, to_tensor_normalized
from gigatok.stages.extract_codes import main

pytestmark = pytest.mark.usefixtures("one_thread_module")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
NUM_IMAGES = 40
SHARD = 16  # 40 images -> shards of 16, 16, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("extract")
    train = make_digit_folder(tmp / "imagenet" / "ILSVRC2012_img_train", NUM_IMAGES)
    (train / "notes.txt").write_text("not an image, not a class")  # skipped like ImageFolder does
    return {"tmp": tmp, "images": train, "ckpt": save_official_tokenizer(tmp / "0000010.pt")}


def _argv(data: dict[str, Path], code_path: Path, *extra: str) -> list[str]:
    return ["--data-path", str(data["images"]), "--code-path", str(code_path), "--model-config", str(CONFIG),
            "--vq-ckpt", str(data["ckpt"]), "--num-workers", "0", "--batch-size", "7", "--shard-size", str(SHARD),
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def ten_crop_codes(data) -> Path:
    code_path = data["tmp"] / "codes_ten_crop"
    main(_argv(data, code_path, "--ten-crop", "--crop-range", "1.1", "--debug"))
    return code_path


def _image_files(data) -> list[tuple[Path, int]]:
    """(file, label) in ImageFolder order."""
    classes = sorted(p.name for p in data["images"].iterdir() if p.is_dir())
    return [(f, c) for c, name in enumerate(classes) for f in sorted((data["images"] / name).glob("*.png"))]


def _all_codes(code_path: Path) -> tuple[np.ndarray, np.ndarray]:
    meta = read_meta(code_path)
    codes = np.concatenate([np.load(code_path / s["codes"]) for s in meta["shards"]])
    labels = np.concatenate([np.load(code_path / s["labels"]) for s in meta["shards"]])
    return codes, labels


def test_ten_crop_writes_shards_and_meta_with_the_tokenizers_codes(data, ten_crop_codes):
    meta = read_meta(ten_crop_codes)
    assert meta["format_version"] == 1 and meta["count"] == NUM_IMAGES and meta["num_classes"] == 10
    assert (meta["codebook_size"], meta["num_tokens"], meta["image_size"], meta["dtype"]) == (1024, 64, 32, "int16")
    assert meta["augmentation"] == {"ten_crop": True, "crop_range": 1.1, "num_aug": 10, "views": list(TEN_CROP_VIEWS)}
    assert meta["tokenizer"]["checkpoint_hash"] == fast_file_hash(data["ckpt"])
    assert meta["tokenizer"]["config"] == "VQ_debug.yaml"
    assert [(s["codes"], s["start"], s["count"]) for s in meta["shards"]] == [
        ("codes_00000.npy", 0, 16), ("codes_00001.npy", 16, 16), ("codes_00002.npy", 32, 8)]
    codes, labels = _all_codes(ten_crop_codes)
    assert codes.shape == (NUM_IMAGES, 10, 64) and codes.dtype == np.int16
    files = _image_files(data)
    np.testing.assert_array_equal(labels, [c for _, c in files])

    # Independent reference: torchvision's TenCrop of the 1.1x ADM center crop, encoded view by view.
    from torchvision.transforms import TenCrop

    tokenizer = load_tokenizer(str(data["ckpt"]), str(CONFIG))
    for i in (0, 17, 39):
        crops = TenCrop(32)(center_crop_arr(Image.open(files[i][0]).convert("RGB"), int(32 * 1.1)))
        with torch.no_grad():
            expected = tokenizer.encode_to_codes(torch.stack([to_tensor_normalized(c) for c in crops]))  # (10, L)
        np.testing.assert_array_equal(codes[i], expected.numpy())
    # --debug: the first 8 images, input views above their decoded codes
    pngs = sorted((ten_crop_codes / "debug").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:07d}.png" for i in range(8)]
    assert Image.open(pngs[0]).size == (10 * 32, 2 * 32)


def test_center_and_flip_give_two_views_and_resume_skips_finished_shards(data, tmp_path, capsys):
    code_path = tmp_path / "codes"
    main(_argv(data, code_path))
    meta = read_meta(code_path)
    assert meta["augmentation"]["views"] == list(CENTER_FLIP_VIEWS) and meta["augmentation"]["crop_range"] is None
    codes, _ = _all_codes(code_path)
    tokenizer = load_tokenizer(str(data["ckpt"]), str(CONFIG))
    center = center_crop_arr(Image.open(_image_files(data)[5][0]).convert("RGB"), 32)
    views = torch.stack([to_tensor_normalized(center), to_tensor_normalized(center.transpose(Image.FLIP_LEFT_RIGHT))])
    with torch.no_grad():
        np.testing.assert_array_equal(codes[5], tokenizer.encode_to_codes(views).numpy())

    # Simulate a crash during shard 1: its marker and meta.json are gone, a half-written tmp file lies around.
    before = {p.name: p.stat().st_mtime_ns for p in code_path.glob("*.npy")}
    (code_path / "progress" / "00001.json").unlink()
    (code_path / "meta.json").unlink()
    (code_path / "codes_00001.npy.tmp").write_bytes(b"partial")
    capsys.readouterr()
    main(_argv(data, code_path, "--resume"))
    assert "3 shards of <= 16 images, 2 already done, 1 to extract" in capsys.readouterr().err
    after = {p.name: p.stat().st_mtime_ns for p in code_path.glob("*.npy")}
    redone = {name for name in before if after[name] != before[name]}
    assert redone == {"codes_00001.npy", "labels_00001.npy"}
    np.testing.assert_array_equal(_all_codes(code_path)[0], codes)
    assert read_meta(code_path)["count"] == NUM_IMAGES

    # Without --resume, or with other settings, an existing extraction is refused with a clear message.
    err = _exit_2(_argv(data, code_path), capsys)
    assert "Pass --resume to continue it" in err
    err = _exit_2(_argv(data, code_path, "--resume", "--ten-crop"), capsys)
    assert "the settings differ" in err and "ten_crop: was False, now True" in err


def _exit_2(argv: list[str], capsys) -> str:
    return expect_exit_2(main, argv, capsys)


def test_user_errors_exit_2(data, tmp_path, capsys):
    assert "not found or not a folder" in _exit_2(_argv(data, tmp_path / "c", "--data-path", str(tmp_path / "no")),
                                                  capsys)
    assert "checkpoint not found" in _exit_2(_argv(data, tmp_path / "c", "--vq-ckpt", str(tmp_path / "no.pt")), capsys)
    assert "--image-size 32" in _exit_2(_argv(data, tmp_path / "c", "--image-size", "64"), capsys)
    assert "--crop-range 0.9 < 1" in _exit_2(_argv(data, tmp_path / "c", "--ten-crop", "--crop-range", "0.9"), capsys)


def test_skip_bad_images_leaves_them_out_before_anything_is_written(data, tmp_path, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    broken = sorted(images.rglob("*.png"))[3]
    broken.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    err = expect_exit_2(main, _argv({**data, "images": images}, tmp_path / "first"), capsys)
    assert broken.name in err and "decode" in err and "--skip-bad-images" in err
    main([*_argv({**data, "images": images}, tmp_path / "codes"), "--skip-bad-images"])
    meta = json.loads((tmp_path / "codes" / "meta.json").read_text())
    assert meta["count"] == NUM_IMAGES - 1 and meta["unreadable_images"] == [str(broken.relative_to(images))]
    assert "leaving out 1 unreadable image(s)" in capsys.readouterr().err


def test_code_dataset_draws_deterministic_views(ten_crop_codes):
    codes, labels = _all_codes(ten_crop_codes)
    dataset = CodeDataset(ten_crop_codes, seed=3)
    assert len(dataset) == NUM_IMAGES and dataset.num_tokens == 64

    def views(epoch: int) -> list[int]:
        dataset.set_epoch(epoch)
        out = []
        for i in range(NUM_IMAGES):
            item, label = dataset[i]
            assert item.dtype == torch.int64 and item.shape == (64,) and int(label) == labels[i]
            out.append(next(v for v in range(10) if np.array_equal(codes[i, v], item.numpy())))
        return out

    first = views(0)
    assert views(0) == first  # a function of (seed, epoch, index): resumable, worker- and rank-independent
    assert views(1) != first and len(set(first)) > 5  # new draws each epoch, spread over the views
    center = CodeDataset(ten_crop_codes, view="center")
    np.testing.assert_array_equal(center[7][0].numpy(), codes[7, TEN_CROP_VIEWS.index("center")])


def test_official_per_image_layout_with_the_ten_crop_105_sibling(tmp_path):
    """`{code_path}/imagenet32_codes/{i}.npy` (1, 10, L) int64 + labels (1,), and the ten_crop_105 sibling."""
    rng = np.random.default_rng(0)
    roots = {name: tmp_path / name for name in ("ten_crop", "ten_crop_105")}
    stored = {}
    for name, root in roots.items():
        (root / "imagenet32_codes").mkdir(parents=True)
        (root / "imagenet32_labels").mkdir()
        stored[name] = rng.integers(0, 1024, size=(12, 1, 10, 64))
        for i in range(12):
            np.save(root / "imagenet32_codes" / f"{i}.npy", stored[name][i])
            np.save(root / "imagenet32_labels" / f"{i}.npy", np.array([i % 3]))
    dataset = CodeDataset(str(roots["ten_crop"]) + "/")
    assert len(dataset) == 12 and dataset.num_tokens == 64 and len(dataset.sources) == 2
    assert dataset.meta["format"] == "official" and dataset.meta["codebook_size"] is None
    seen = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for i in range(12):
            item, label = dataset[i]
            assert int(label) == i % 3
            hits = [(name, v) for name in stored for v in range(10) if np.array_equal(stored[name][i, 0, v], item)]
            assert len(hits) == 1
            seen.add(hits[0][0])
    assert seen == {"ten_crop", "ten_crop_105"}  # both crop ranges are used (p = 0.5 each)
    alone = CodeDataset(roots["ten_crop"], use_sibling=False)
    assert len(alone.sources) == 1
    np.testing.assert_array_equal(CodeDataset(roots["ten_crop"], view="center")[3][0].numpy(),
                                  stored["ten_crop"][3, 0, 4])


def test_check_meta_refuses_a_mismatch(ten_crop_codes):
    meta = {**read_meta(ten_crop_codes), "code_path": str(ten_crop_codes)}
    check_meta(meta, 1024, 64)
    with pytest.raises(CodesError, match="codebook_size 1024 .* vocab_size 16384"):
        check_meta(meta, 16384, 64)
    with pytest.raises(CodesError, match="64 tokens per image .* block_size 256"):
        check_meta(meta, 1024, 256)
    with pytest.raises(CodesError, match="neither a meta.json"):
        CodeDataset(ten_crop_codes / "progress")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    for name in ("GPUS", "gpus", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "VQ_CKPT", "VQ_CKPT_PATH",
                 "IMGNET_ROOT", "CODE_PATH", "TOK_CONFIG", "BSZ", "DEBUG", "TEN_CROP", "RESUME"):
        if name not in extra:
            env.pop(name, None)
    return env


def test_script_passes_vq_ckpt_from_either_variable(tmp_path):
    """The official script set VQ_CKPT but passed the unset $VQ_CKPT_PATH; ours passes VQ_CKPT (or VQ_CKPT_PATH)."""
    def command(**env: str) -> str:
        result = subprocess.run(["bash", str(REPO / "scripts" / "extract_code_c2i.sh"), "--num-workers", "0"],
                                env=_script_env(TORCH_RUN_PATH="echo", **env), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout
    out = command(VQ_CKPT="a.pt", IMGNET_ROOT="/data", CODE_PATH="/codes", TOK_CONFIG="t.yaml", BSZ="4")
    assert ("--data-path /data/ILSVRC2012_img_train/ --code-path /codes --vq-ckpt a.pt --model-config t.yaml "
            "--batch-size 4 --ten-crop --crop-range 1.1 --resume --num-workers 0") in out
    assert "--vq-ckpt b.pt" in command(VQ_CKPT_PATH="b.pt")
    assert "--vq-ckpt a.pt" in command(VQ_CKPT="a.pt", VQ_CKPT_PATH="b.pt")
    out = command(TEN_CROP="False", RESUME="False", DEBUG="True")
    assert "--ten-crop" not in out and "--resume" not in out and "--debug" in out


@pytest.mark.slow
def test_two_ranks_through_the_script_write_the_same_codes(data, ten_crop_codes, tmp_path):
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("torchrun cannot start here")
    code_path = tmp_path / "codes2"
    env = _script_env(gpus="2", PORT=str(_free_port()), IMGNET_ROOT=str(data["images"].parent),
                      CODE_PATH=str(code_path), VQ_CKPT=str(data["ckpt"]), TOK_CONFIG=str(CONFIG), BSZ="7")
    result = subprocess.run(["bash", str(REPO / "scripts" / "extract_code_c2i.sh"), "--num-workers", "0",
                             "--shard-size", str(SHARD), "--device", "cpu"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr
    for name in ("codes_00000.npy", "codes_00001.npy", "codes_00002.npy", "labels_00002.npy"):
        np.testing.assert_array_equal(np.load(code_path / name), np.load(ten_crop_codes / name))
    meta, reference = read_meta(code_path), read_meta(ten_crop_codes)
    for key in ("count", "codebook_size", "num_tokens", "augmentation", "tokenizer", "shards", "classes"):
        assert meta[key] == reference[key], key


def test_our_layout_mixes_in_the_ten_crop_105_sibling(ten_crop_codes, tmp_path):
    """A `..._ten_crop` folder with a `..._ten_crop_105` sibling (crop range 1.05) draws from each with p = 0.5."""
    main_dir, sibling = tmp_path / "imagenet_code_c2i_flip_ten_crop", tmp_path / "imagenet_code_c2i_flip_ten_crop_105"
    shutil.copytree(ten_crop_codes, main_dir)
    shutil.copytree(ten_crop_codes, sibling)
    for shard in read_meta(sibling)["shards"]:  # make the sibling's codes recognisable: 1024 + code
        codes = np.load(sibling / shard["codes"])
        np.save(sibling / shard["codes"], (codes + 1024).astype(np.int32))
    dataset = CodeDataset(main_dir)
    assert len(dataset.sources) == 2 and dataset.meta["num_sources"] == 2
    from_sibling = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        from_sibling += [bool(dataset[i][0].min() >= 1024) for i in range(NUM_IMAGES)]
    assert 0.35 < np.mean(from_sibling) < 0.65
    assert len(CodeDataset(main_dir, use_sibling=False).sources) == 1
