"""The public API (`gigatok.*`): the released-checkpoint registry, shipped config names, save/load round trips
through a folder and a file-based Hugging Face Hub cache, the Hub upload (against a stub of `HfApi`), images in and
out, sampling, and a non-editable install of the checkout into a fresh virtualenv."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gigatok
from gigatok.builders import build_gpt, build_tokenizer
from gigatok.config import to_dict
from gigatok.errors import UserError
from gigatok.gpt.model import GPT

ROOT = Path(__file__).resolve().parents[1]
PHOTO = next((ROOT / "tests" / "gt_qualitative").glob("*"))


def tiny_tokenizer() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_tokenizer(gigatok.load_config("VQ_debug")).eval()


def tiny_gpt(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_gpt("debug", vocab_size=1024, block_size=64, num_classes=num_classes).eval()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    """A deterministic forward of a tokenizer (codes and reconstruction) or a GPT (logits)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if isinstance(model, GPT):
            codes = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), generator=gen)
            logits, _ = model(codes[:, :-1], torch.tensor([1, 3]))
            return logits
        images = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
        codes = model.encode_to_codes(images)
        return torch.cat([codes.float().flatten(), model.decode_code(codes).flatten()])


# ---- registry and configs ----

def test_list_pretrained_has_the_13_released_files_with_links() -> None:
    entries = gigatok.list_pretrained(repository="GigaTok")
    assert len(entries) == 13
    assert [e.name for e in gigatok.list_pretrained("tokenizer", "GigaTok")] == [
        "VQ_SS256", "VQ_SB256", "VQ_BL256", "VQ_BL256_dino_disc", "VQ_XLXXL256"]
    assert sorted({e.gpt_model for e in gigatok.list_pretrained("gpt", "GigaTok")}) == ["GPT-B", "GPT-XL", "GPT-XXL"]
    assert len({e.url for e in entries}) == 13 and len({e.filename for e in entries}) == 13
    for e in entries:
        assert e.url.startswith("https://drive.google.com/file/d/") and e.drive_id in e.download_url
        assert e.tokenizer in gigatok.zoo.PRETRAINED and gigatok.zoo.PRETRAINED[e.tokenizer].kind == "tokenizer"
        assert gigatok.zoo.config_path(e.config).is_file()  # every release's config ships with the package
        assert (e.rfid is not None) == (e.kind == "tokenizer") and (e.gfid is not None) == (e.kind == "gpt")
        assert (e.image_size, e.gpt_2d) == (256, False)
    best = min(gigatok.list_pretrained("gpt"), key=lambda e: e.gfid)
    assert (best.name, best.gpt_model, best.tokenizer, best.gfid) == (
        "GPT_XXL256_e300_VQ_XLXXL", "GPT-XXL", "VQ_XLXXL256", 1.98)
    assert gigatok.zoo.find_pretrained("VQ_SS256_e100.pt") is gigatok.zoo.PRETRAINED["VQ_SS256"]
    assert not any("2d" in e.config for e in entries)  # no 2D tokenizer was released


def test_list_pretrained_has_llamagen_s_9_class_conditional_files() -> None:
    """LlamaGen's README: VQ-16 / VQ-8 and seven c2i GPTs (2D RoPE) on VQ-16 codes, on the Hub; the 384 px GPTs'
    tokenizer config is VQ-16 at 384 px (24x24 codes)."""
    entries = gigatok.list_pretrained(repository="LlamaGen")
    assert len(gigatok.list_pretrained()) == 22 and len(entries) == 9
    assert [e.name for e in gigatok.list_pretrained("tokenizer", "LlamaGen")] == ["vq_ds16_c2i", "vq_ds8_c2i"]
    for e in entries:
        assert e.url == f"https://huggingface.co/FoundationVision/LlamaGen/resolve/main/{e.filename}"
        assert e.drive_id is None and e.download_url == e.url  # the Hub file itself
        assert gigatok.zoo.config_path(e.config).is_file() and gigatok.zoo.PRETRAINED[e.tokenizer].kind == "tokenizer"
        assert e.gpt_2d == (e.kind == "gpt")
        assert e.image_size == (int(e.name[-3:]) if e.kind == "gpt" else 256)
    assert {e.gpt_model for e in gigatok.list_pretrained("gpt", "LlamaGen")} == {
        "GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B"}
    with pytest.raises(UserError, match="repository must be"):
        gigatok.list_pretrained(repository="SEED-Voken")
    args = gigatok.zoo.tokenizer_config_of("c2i_L_384").model.init_args
    assert (args.image_size, args.num_latent_tokens, args.codebook_size) == (384, 576, 16384)
    assert gigatok.zoo.tokenizer_config_of("c2i_B_256").model.init_args.num_latent_tokens == 256


def test_load_config_by_name_path_and_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = gigatok.load_config("VQ_SS256")
    assert (config.model.init_args.codebook_size, config.model.init_args.num_latent_tokens) == (16384, 256)
    monkeypatch.chdir(tmp_path)
    assert gigatok.load_config("configs/vq/VQ_SS256.yaml") == config  # the official path, from any folder
    assert gigatok.load_config("VQ_SS256.yaml") == config
    (tmp_path / "mine.yaml").write_text("model:\n  init_args:\n    codebook_size: 4096\n")
    assert gigatok.load_config("mine.yaml").model.init_args.codebook_size == 4096  # a file wins over names
    with pytest.raises(UserError, match="neither a file nor a shipped config"):
        gigatok.load_config("elsewhere/VQ_SS256.yaml")
    assert gigatok.load_config(ROOT / "configs" / "vq" / "VQ_SS256.yaml") == config  # the repo's link
    assert gigatok.load_config("VQ_SS256", ["--model.init_args.image_size=512"]).model.init_args.image_size == 512
    assert (ROOT / "configs" / "vq" / "VQ_SS256.yaml").resolve() == gigatok.zoo.config_path("VQ_SS256").resolve()
    with pytest.raises(UserError, match="VQ_SS256_2d"):  # names the shipped configs
        gigatok.load_config("VQ_SS512")


def test_import_is_cheap() -> None:
    code = "import sys, gigatok; gigatok.list_pretrained(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ---- save_pretrained / from_pretrained ----

@pytest.mark.parametrize("kind", ["tokenizer", "gpt"])
def test_save_and_load_round_trip(kind: str, tmp_path: Path) -> None:
    model = tiny_tokenizer() if kind == "tokenizer" else tiny_gpt()
    folder = gigatok.save_pretrained(model, tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: gigatok") and "arXiv:2504.08736" in card
    loaded = gigatok.from_pretrained(folder)
    assert type(loaded) is type(model) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())  # inference-ready: no autograd graph
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert torch.equal(outputs(loaded), outputs(model))
    load = gigatok.load_tokenizer if kind == "tokenizer" else gigatok.load_gpt
    assert torch.equal(outputs(load(folder)), outputs(model))
    other = gigatok.load_gpt if kind == "tokenizer" else gigatok.load_tokenizer
    with pytest.raises(UserError, match="holds a"):
        other(folder)


def test_saved_tokenizer_config_is_a_loadable_config(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    gigatok.save_pretrained(tokenizer, tmp_path / "a", config="VQ_debug")
    config = gigatok.load_config(tmp_path / "a" / "config.yaml")
    assert config.model.init_args == tokenizer.args
    gigatok.save_pretrained(tokenizer, tmp_path / "b")  # config rebuilt from the tokenizer's arguments
    assert gigatok.load_config(tmp_path / "b" / "config.yaml").model == config.model
    with pytest.raises(UserError, match="does not describe this tokenizer"):
        gigatok.save_pretrained(tokenizer, tmp_path / "c", config="VQ_SS256")


def test_from_pretrained_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.yaml' is missing|'config.yaml' is missing"):
        gigatok.from_pretrained(tmp_path / "empty")
    with pytest.raises(UserError, match="neither a saved model folder nor a Hub id"):
        gigatok.from_pretrained(str(tmp_path / "nothing" / "here"))
    with pytest.raises(UserError, match="not a GigaTok tokenizer or GPT|GigaTok tokenizer or GPT"):
        gigatok.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_exported_folders_load_with_from_pretrained(tmp_path: Path) -> None:
    """`gigatok export` and `save_pretrained` write one format."""
    from gigatok.stages import export

    tokenizer, gpt = tiny_tokenizer(), tiny_gpt()
    torch.save({"model": tokenizer.state_dict()}, tmp_path / "tok.pt")
    torch.save({"model": gpt.state_dict()}, tmp_path / "gpt.pt")
    assert export.main(["--vq-ckpt", str(tmp_path / "tok.pt"), "--model-config", str(ROOT / "configs/vq/VQ_debug.yaml"),
                        "--out-dir", str(tmp_path / "tok")]) == 0
    assert export.main(["--gpt-ckpt", str(tmp_path / "gpt.pt"), "--gpt-model", "debug", "--vocab-size", "1024",
                        "--block-size", "64", "--num-classes", "10", "--out-dir", str(tmp_path / "gpt")]) == 0
    assert torch.equal(outputs(gigatok.from_pretrained(tmp_path / "tok")), outputs(tokenizer))
    assert torch.equal(outputs(gigatok.load_gpt(tmp_path / "gpt")), outputs(gpt))
    from gigatok.builders import load_gpt_export

    gigatok.save_pretrained(gpt, tmp_path / "saved")
    assert torch.equal(outputs(load_gpt_export(tmp_path / "saved")), outputs(gpt))


def fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> None:
    """The layout huggingface_hub reads offline: models--owner--repo/{refs/main, snapshots/<commit>/<files>}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the constants are read when huggingface_hub loads
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("kind", ["tokenizer", "gpt"])
def test_round_trip_through_an_offline_hub_cache(kind: str, tmp_path: Path, offline_hub: Path) -> None:
    model = tiny_tokenizer() if kind == "tokenizer" else tiny_gpt()
    fake_hub_cache(offline_hub, f"someone/tiny-{kind}", gigatok.save_pretrained(model, tmp_path / "saved"))
    for source in (f"someone/tiny-{kind}", f"hf://someone/tiny-{kind}"):
        loaded = gigatok.from_pretrained(source)
        assert torch.equal(outputs(loaded), outputs(model))
    load = gigatok.load_tokenizer if kind == "tokenizer" else gigatok.load_gpt
    assert torch.equal(outputs(load(f"hf://someone/tiny-{kind}")), outputs(model))
    assert torch.equal(outputs(load(f"hf://someone/tiny-{kind}/model.safetensors",
                                    config=(tmp_path / "saved" / "config.yaml") if kind == "tokenizer"
                                    else model.config)), outputs(model))
    with pytest.raises(UserError, match="models--someone--missing"):  # names the cache folder to fill
        gigatok.from_pretrained("someone/missing")


def test_push_to_hub_uploads_the_saved_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    calls: list[tuple[str, dict]] = []
    uploaded = tmp_path / "uploaded"

    def create_repo(self: HfApi, **kwargs: object) -> str:
        calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self: HfApi, **kwargs: object) -> str:
        calls.append(("upload_folder", kwargs))
        if Path(str(kwargs["folder_path"])) != uploaded:  # keep a copy: the temporary folder is gone after the call
            shutil.copytree(str(kwargs["folder_path"]), uploaded)
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    tokenizer = tiny_tokenizer()
    assert gigatok.push_to_hub(tokenizer, "me/tiny-tok", private=True) == "commit-url"
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["repo_id"] == "me/tiny-tok" and calls[0][1]["private"] is True
    assert calls[1][1]["repo_id"] == "me/tiny-tok"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    assert "# me/tiny-tok" in (uploaded / "README.md").read_text()
    from safetensors.torch import load_file

    state = load_file(str(uploaded / "model.safetensors"))
    assert state.keys() == tokenizer.state_dict().keys()  # our (official) keys, no prefix
    assert torch.equal(outputs(gigatok.from_pretrained(uploaded)), outputs(tokenizer))
    calls.clear()
    gigatok.push_to_hub(uploaded, "me/again")  # a saved folder is uploaded as is
    assert Path(str(calls[1][1]["folder_path"])) == uploaded
    with pytest.raises(UserError, match="is missing"):
        gigatok.push_to_hub(tmp_path, "me/bad")


# ---- released names and checkpoint files ----

def test_released_name_offline_says_which_file_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("GIGATOK_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        gigatok.load_tokenizer("VQ_SS256")
    message = str(err.value)
    assert "VQ_SS256_e100.pt" in message and "drive.google.com" in message and str(tmp_path / "torch") in message
    with pytest.raises(UserError, match="released tokenizer, not a gpt"):
        gigatok.load_gpt("VQ_SS256")
    with pytest.raises(UserError, match="not a released checkpoint|checkpoint not found"):
        gigatok.load_tokenizer("VQ_SS999_e1.pt")


def test_released_name_uses_the_cached_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A released GPT name: the file in the torch-hub cache, sized from the registry (vocabulary and codes from its
    tokenizer's config, GPT-B) and checked against the weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    gpt = build_gpt("debug", vocab_size=16384, block_size=256, num_classes=10).eval()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "GPT_B256_e300_VQ_SS.pt"
    cached.parent.mkdir(parents=True)
    torch.save({"model": gpt.state_dict()}, cached)  # an official-format file, of the wrong size for its name
    with pytest.raises(UserError, match="2-layer GPT of width 64.*--gpt-model debug"):
        gigatok.load_gpt("GPT_B256_e300_VQ_SS")
    loaded = gigatok.load_gpt("GPT_B256_e300_VQ_SS", config="debug")
    assert (loaded.config.vocab_size, loaded.config.block_size, loaded.config.num_classes) == (16384, 256, 10)
    assert torch.equal(outputs(loaded), outputs(gpt))


@pytest.fixture()
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server of `tmp_path / "mirror"` named by GIGATOK_WEIGHTS_BASE_URL, downloads allowed."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("GIGATOK_WEIGHTS_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.delenv("GIGATOK_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield folder
    httpd.shutdown()
    thread.join()


def test_released_names_download_once_from_a_mirror(mirror: Path, tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    torch.save({"ema": tokenizer.state_dict()}, mirror / "VQ_SS256_e100.pt")
    loaded = gigatok.load_tokenizer("VQ_SS256", config="VQ_debug")  # config= replaces the registry's
    assert torch.equal(outputs(loaded), outputs(tokenizer))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "VQ_SS256_e100.pt"
    assert cached.is_file()
    (mirror / "VQ_SS256_e100.pt").unlink()  # the second load reads the cache only
    assert torch.equal(outputs(gigatok.load_tokenizer("VQ_SS256_e100.pt", config="VQ_debug")), outputs(tokenizer))
    (mirror / "VQ_SB256_e200.pt").write_text("<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(UserError, match="web page instead of VQ_SB256_e200.pt"):
        gigatok.load_tokenizer("VQ_SB256", config="VQ_debug")
    assert not (cached.parent / "VQ_SB256_e200.pt").exists()  # nothing a later load would take for the file
    with pytest.raises(UserError, match="GPT_B256_e300_VQ_BL.pt.*HTTP 404"):
        gigatok.load_gpt("GPT_B256_e300_VQ_BL")


def test_llamagen_gpt_name_loads_with_2d_rope_at_its_image_size(mirror: Path) -> None:
    """`c2i_B_384` from the mirror (a bare state dict, as LlamaGen's FSDP files are): 2D RoPE over 24x24 codes from
    16384, sized from the registry, the same outputs as the saved GPT."""
    torch.manual_seed(0)
    gpt = build_gpt("debug", pos_type="rope_2d", vocab_size=16384, block_size=576, num_classes=1000).eval()
    torch.save(gpt.state_dict(), mirror / "c2i_B_384.pt")
    loaded = gigatok.load_gpt("c2i_B_384", config="debug")
    assert (loaded.config.pos_type, loaded.config.block_size, loaded.config.vocab_size) == ("rope_2d", 576, 16384)
    assert torch.equal(outputs(loaded), outputs(gpt))


def test_checkpoint_files(tmp_path: Path) -> None:
    tokenizer, gpt = tiny_tokenizer(), tiny_gpt()
    torch.save({"model": tokenizer.state_dict()}, tmp_path / "tok.pt")
    with pytest.raises(UserError, match="records no config"):
        gigatok.load_tokenizer(tmp_path / "tok.pt")
    assert torch.equal(outputs(gigatok.load_tokenizer(tmp_path / "tok.pt", config="VQ_debug")), outputs(tokenizer))
    torch.save({"model": tokenizer.state_dict(), "config": to_dict(gigatok.load_config("VQ_debug"))},
               tmp_path / "own.pt")  # our training runs record their config
    assert torch.equal(outputs(gigatok.load_tokenizer(tmp_path / "own.pt")), outputs(tokenizer))
    torch.save({"model": gpt.state_dict()}, tmp_path / "gpt.pt")
    assert torch.equal(outputs(gigatok.load_gpt(tmp_path / "gpt.pt", config="debug")), outputs(gpt))
    with pytest.raises(UserError, match="checkpoint not found"):
        gigatok.load_gpt(tmp_path / "missing.pt", config="debug")


# ---- images ----

def test_preprocess_postprocess_round_trip() -> None:
    rng = np.random.default_rng(0)
    images_uint8 = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    images = gigatok.preprocess(images_uint8, 32)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert np.array_equal(gigatok.postprocess(images, output="numpy"), images_uint8)  # exact at the native size
    pils = gigatok.postprocess(images)
    assert len(pils) == 2 and np.array_equal(np.asarray(pils[1]), images_uint8[1])
    assert torch.equal(gigatok.preprocess(pils, 32), images)  # PIL list in, the same tensor
    assert torch.equal(gigatok.preprocess(images_uint8[0], 32), images[:1])  # one (H, W, 3) array
    photo = Image.open(PHOTO)
    crop = gigatok.preprocess(photo, 64)  # the official center crop of any size
    assert crop.shape == (1, 3, 64, 64)
    from gigatok.data.transforms import CenterCropTransform

    assert torch.equal(crop[0], CenterCropTransform(64)(photo.convert("RGB")))
    with pytest.raises(UserError, match="uint8"):
        gigatok.preprocess(np.zeros((4, 4, 3), dtype=np.float32), 32)


def test_sample_four_classes_is_seeded() -> None:
    tokenizer, gpt = tiny_tokenizer(), tiny_gpt()
    images = gigatok.sample(gpt, tokenizer, [0, 3, 5, 9], cfg_scale=2.0, seed=3)
    assert images.shape == (4, 3, 32, 32)
    assert torch.equal(images, gigatok.sample(gpt, tokenizer, [0, 3, 5, 9], cfg_scale=2.0, seed=3))
    assert not torch.equal(images, gigatok.sample(gpt, tokenizer, [0, 3, 5, 9], cfg_scale=2.0, seed=4))
    with pytest.raises(UserError, match="classes must be in"):
        gigatok.sample(gpt, tokenizer, [10])
    with pytest.raises(UserError, match="pair the GPT"):
        gigatok.sample(build_gpt("debug", vocab_size=512, block_size=64), tokenizer, [0])


# ---- installed package ----

@pytest.mark.slow
def test_non_editable_install_in_a_fresh_venv(tmp_path: Path) -> None:
    """The checkout built into a wheel (not editable) and installed with pip into a new virtualenv; from another
    folder, the registry lists 22 files (13 GigaTok, 9 LlamaGen) and a config name loads from the package data.

    The wheel is built with this environment's setuptools (no network). It is installed into a venv that sees
    nothing of this one, so pip can neither find nor touch the editable install here; the runtime dependencies
    (omegaconf) are then made visible with a .pth line (its .pth files, the editable finder included, stay
    unprocessed)."""
    import site
    import sysconfig

    checkout = tmp_path / "checkout"  # a copy, so the build writes no build/ or egg-info into the real checkout
    shutil.copytree(ROOT / "gigatok", checkout / "gigatok", ignore=shutil.ignore_patterns("__pycache__"))
    for path in ROOT.iterdir():  # pyproject.toml, README.md, LICENSE, ...: whatever the build may read
        if path.is_file() and not path.name.startswith("."):
            shutil.copy(path, checkout / path.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}

    def run(*cmd: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd)

    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                "-w", tmp_path / "wheels", checkout)
    assert built.returncode == 0, built.stderr
    shutil.rmtree(checkout)  # the installed copy must stand on its own
    wheel = next((tmp_path / "wheels").glob("gigatok-*.whl"))
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel)
    assert installed.returncode == 0, installed.stderr
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    ours = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(purelib) / "parent_env.pth").write_text("\n".join(ours) + "\n")
    code = ("import gigatok; print(len(gigatok.list_pretrained())); c = gigatok.load_config('VQ_SS256'); "
            "print(c.model.init_args.codebook_size, gigatok.__file__)")
    out = run(python, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    count, size, location = out.stdout.split()
    assert (count, size) == ("22", "16384") and location.startswith(str(venv))


def test_quickstart_with_tiny_saved_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README quickstart's calls, on tiny models saved where released names would be folders."""
    gigatok.save_pretrained(tiny_tokenizer(), tmp_path / "tok")
    gigatok.save_pretrained(tiny_gpt(num_classes=1000), tmp_path / "gpt")
    monkeypatch.chdir(tmp_path)
    tokenizer = gigatok.load_tokenizer("tok")
    images = gigatok.preprocess(Image.open(PHOTO), tokenizer.image_size)
    codes = tokenizer.encode_to_codes(images)
    gigatok.postprocess(tokenizer.decode_code(codes))[0].save("reconstruction.png")
    gpt = gigatok.load_gpt("gpt")
    samples = gigatok.sample(gpt, tokenizer, [22, 388, 90, 978], cfg_scale=4.0)
    for i, image in enumerate(gigatok.postprocess(samples)):
        image.save(f"sample_{i}.png")
    assert codes.shape == (1, 64) and Image.open("reconstruction.png").size == (32, 32)
    assert [Image.open(f"sample_{i}.png").size for i in range(4)] == [(32, 32)] * 4
