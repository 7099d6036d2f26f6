"""`gigatok.stages.val_reference` / scripts/val.sh: the shuffled rFID reference npz built from center-cropped images."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import expect_exit_2
from helpers import make_val_folder
from PIL import Image

from gigatok.data.transforms import center_crop_arr
from gigatok.stages.val_reference import main

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "tests" / "gt_qualitative"


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-path", str(data), "--image-size", "32", "--sample-dir", str(out), "--per-proc-batch-size", "3",
            "--num-workers", "0", *extra]


def read_npz(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["arr_0"]


def test_builds_a_shuffled_complete_reference_once(tmp_path, capsys):
    files = make_val_folder(tmp_path / "val")
    main(argv(tmp_path / "val", tmp_path / "out"))
    folder, npz_path = tmp_path / "out" / "val_imagenet", tmp_path / "out" / "val_imagenet.npz"
    crops = np.stack([np.asarray(center_crop_arr(Image.open(f).convert("RGB"), 32)) for f in files])  # (8, 32, 32, 3)
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    for i in range(8):
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{i:06d}.png")), crops[i])
    # every image exactly once, in the order drawn from --global-seed, which is not the folder order
    order = np.random.default_rng(0).permutation(8)
    assert list(order) != list(range(8))
    arr = read_npz(npz_path)
    assert arr.dtype == np.uint8 and arr.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(arr, crops[order])
    assert "not the official 50000" in capsys.readouterr().err

    # a re-run with a complete npz does nothing
    stamp = npz_path.stat().st_mtime_ns
    main(argv(tmp_path / "val", tmp_path / "out"))
    assert npz_path.stat().st_mtime_ns == stamp and "nothing to do" in capsys.readouterr().err

    # an interrupted build (npz missing, two PNGs missing) writes only what is missing
    npz_path.unlink()
    (folder / "000002.png").unlink()
    (folder / "000005.png").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    main(argv(tmp_path / "val", tmp_path / "out"))
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in folder.iterdir() if p.name in stamps)
    np.testing.assert_array_equal(read_npz(npz_path), crops[order])

    # another seed, another order of the same images
    main(argv(tmp_path / "val", tmp_path / "seed1", "--global-seed", "1", "--dataset", "coco"))
    np.testing.assert_array_equal(read_npz(tmp_path / "seed1" / "val_coco.npz"),
                                  crops[np.random.default_rng(1).permutation(8)])


def test_an_npz_from_other_data_is_an_error(tmp_path, capsys):
    make_val_folder(tmp_path / "val")
    main(argv(tmp_path / "val", tmp_path / "out"))
    err = expect_exit_2(main, argv(tmp_path / "val", tmp_path / "out", "--image-size", "16"), capsys)
    assert "val_imagenet.npz" in err and "Delete it" in err
    err = expect_exit_2(main, argv(tmp_path / "missing", tmp_path / "out"), capsys)
    assert "data path not found" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_val_sh_with_two_ranks_builds_the_same_npz(tmp_path):
    make_val_folder(tmp_path / "val")
    main(argv(tmp_path / "val", tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "gpus": "2", "PORT": str(_free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    result = subprocess.run(["bash", str(REPO / "scripts" / "val.sh"), *argv(tmp_path / "val", tmp_path / "ddp")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr
    np.testing.assert_array_equal(read_npz(tmp_path / "ddp" / "val_imagenet.npz"),
                                  read_npz(tmp_path / "single" / "val_imagenet.npz"))
