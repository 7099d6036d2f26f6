"""Tokenizer API on the tiny configs: forward/backward at 32 and 64 px, code round trips, checkpoint formats
(official, ours, safetensors export, hf://), and the error messages users see."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from conftest import ROOT

from gigatok.builders import build_tokenizer, load_tokenizer
from gigatok.config import ConfigError, load_config
from gigatok.infra.checkpoint import CheckpointError
from gigatok.infra.parallel import cnn_channels_last, set_cnn_memory_format
from gigatok.stages import export

DEBUG_1D = ROOT / "configs" / "vq" / "VQ_debug.yaml"
DEBUG_2D = ROOT / "configs" / "vq" / "VQ_debug_2d.yaml"


def tiny(config=DEBUG_1D, image_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    overrides = [f"model.init_args.image_size={image_size}"] if image_size else []
    torch.manual_seed(seed)
    return build_tokenizer(load_config(config, overrides))


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def save_official_format(tokenizer: torch.nn.Module, path, legacy: bool = False, **extra) -> None:
    """The layout of the official trainer's checkpoints, including the pickled argparse Namespace."""
    torch.save({"model": tokenizer.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "steps": 5000,
                "args": argparse.Namespace(image_size=256, model_config="configs/vq/VQ_SS256.yaml"), **extra}, path,
               _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("config", [DEBUG_1D, DEBUG_2D], ids=["1d", "2d"])
@pytest.mark.parametrize("size", [32, 64])
def test_forward_backward(config, size: int) -> None:
    tokenizer = tiny(config, size).train()
    x = images(2, size)
    out = tokenizer(x, rec_loss=True, ret_inner_feat=True)
    assert out.recon.shape == x.shape and out.recon_direct.shape == x.shape
    assert out.codes.shape == (2, tokenizer.num_tokens) and out.codes.dtype == torch.int64
    grid = tokenizer.grid_size
    assert out.inner_feat.shape == (2, grid * grid, tokenizer.args.out_inner_dim)
    q = out.quant_losses
    assert q.entropy != 0 and 0 < q.usage <= 1  # entropy loss = mean sample entropy - entropy of the mean: any sign
    loss = (out.recon - x).pow(2).mean() + q.vq + q.commit + q.entropy + out.fea_rec_loss + out.inner_feat.mean()
    loss.backward()
    no_grad = [n for n, p in tokenizer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("config", [DEBUG_1D, DEBUG_2D], ids=["1d", "2d"])
def test_codes_round_trip(config) -> None:
    tokenizer = tiny(config).eval()
    x = images(3, tokenizer.image_size)
    with torch.no_grad():
        quant, losses, info = tokenizer.encode(x)
        codes = tokenizer.encode_to_codes(x)
        assert codes.shape == (3, tokenizer.num_tokens) and codes.dtype == torch.int64
        assert torch.equal(codes, info["codes"])
        assert 0 <= codes.min() and codes.max() < tokenizer.codebook_size
        torch.testing.assert_close(tokenizer.decode_code(codes), tokenizer.decode(quant), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tokenizer.decode_code(codes.flatten()), tokenizer.decode_code(codes))
    assert float(losses.vq) == 0.0  # no training losses in eval


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_official_checkpoint_round_trip(tmp_path, legacy: bool) -> None:
    tokenizer = tiny(seed=3).eval()
    path = tmp_path / "0005000.pt"
    save_official_format(tokenizer, path, legacy=legacy)
    loaded = load_tokenizer(path, DEBUG_1D)
    x = images(2, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_to_codes(x), tokenizer.encode_to_codes(x))
        torch.testing.assert_close(loaded.decode(tokenizer.encode(x)[0]), tokenizer.decode(tokenizer.encode(x)[0]))


def test_ema_entry_is_preferred(tmp_path) -> None:
    model, ema = tiny(seed=1), tiny(seed=2)
    path = tmp_path / "ckpt.pt"
    save_official_format(model, path, ema=ema.state_dict())
    loaded = load_tokenizer(path, DEBUG_1D)
    torch.testing.assert_close(loaded.state_dict()["quant_conv.weight"], ema.state_dict()["quant_conv.weight"])


def test_prefixes_from_ddp_and_compile_are_stripped(tmp_path) -> None:
    tokenizer = tiny(seed=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in tokenizer.state_dict().items()}}, path)
    loaded = load_tokenizer(path, DEBUG_1D)
    torch.testing.assert_close(loaded.state_dict()["decoder.conv_out.weight"], tokenizer.state_dict()["decoder.conv_out.weight"])


def test_export_safetensors_round_trip(tmp_path, capsys) -> None:
    tokenizer = tiny(seed=5).eval()
    save_official_format(tokenizer, tmp_path / "ckpt.pt")
    assert export.main(["--vq-ckpt", str(tmp_path / "ckpt.pt"), "--model-config", str(DEBUG_1D),
                        "--out-dir", str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    loaded = load_tokenizer(tmp_path / "out" / "model.safetensors", tmp_path / "out" / "config.yaml")
    x = images(2, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_to_codes(x), tokenizer.encode_to_codes(x))


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found.*nope.pt"):
        load_tokenizer(tmp_path / "nope.pt", DEBUG_1D)
    assert export.main(["--vq-ckpt", str(tmp_path / "nope.pt"), "--model-config", str(DEBUG_1D),
                        "--out-dir", str(tmp_path / "o")]) == 2


def test_checkpoint_of_the_wrong_size_lists_the_keys(tmp_path) -> None:
    save_official_format(tiny(DEBUG_2D), tmp_path / "2d.pt")
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tmp_path / "2d.pt", DEBUG_1D)
    message = str(err.value)
    assert "missing keys" in message and "s2to1encoder.global_proj.weight" in message
    assert "unexpected keys" in message and "s2dencoder" in message
    config = load_config(DEBUG_1D, ["model.init_args.codebook_size=512"])
    save_official_format(build_tokenizer(config), tmp_path / "k512.pt")
    with pytest.raises(CheckpointError, match=r"quantize.embedding.weight: checkpoint \(512, 8\) vs model \(1024, 8\)"):
        load_tokenizer(tmp_path / "k512.pt", DEBUG_1D)


def test_no_arbitrary_pickle_code_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "args": Exploit()}, f)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_tokenizer(path, DEBUG_1D)
    assert not marker.exists()


def test_hf_reference_offline_names_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="models--owner--repo") as err:
        load_tokenizer("hf://owner/repo/VQ_SS256_e100.pt", DEBUG_1D)
    assert "VQ_SS256_e100.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="hf://owner/repo/path"):
        load_tokenizer("hf://owner", DEBUG_1D)


def test_other_resolution_fails_clearly_or_interpolates(tmp_path) -> None:
    save_official_format(tiny(seed=6), tmp_path / "32px.pt")
    config_64 = load_config(DEBUG_1D, ["model.init_args.image_size=64"])
    with pytest.raises(CheckpointError, match="interpolate-pos-embed"):
        load_tokenizer(tmp_path / "32px.pt", config_64)
    tokenizer = load_tokenizer(tmp_path / "32px.pt", config_64, interpolate_pos_embed=True)
    with torch.no_grad():
        codes = tokenizer.encode_to_codes(images(1, 64))
        assert codes.shape == (1, tokenizer.num_tokens)
        assert tokenizer.decode_code(codes).shape == (1, 3, 64, 64)


def test_bad_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match="codebok_size.*Did you mean 'model.init_args.codebook_size'"):
        load_tokenizer(None, DEBUG_1D, overrides=["--model.init_args.codebok_size=3"])


def test_num_res_blocks_sets_the_cnn_depth() -> None:
    """`num_res_blocks` (ours; official fixed 2): ResnetBlocks per encoder level, one more per decoder level."""
    for blocks in (1, 2):
        tokenizer = build_tokenizer(load_config(DEBUG_2D, [f"model.init_args.num_res_blocks={blocks}"]))
        assert {len(level.res) for level in tokenizer.encoder.conv_blocks} == {blocks}
        assert {len(level.res) for level in tokenizer.decoder.conv_blocks} == {blocks + 1}
        x = images(2, 32)
        assert tokenizer(x).recon.shape == x.shape


@pytest.mark.parametrize("channels_last", [True, False])
def test_cnn_layout_follows_the_config_and_does_not_change_results(tmp_path, channels_last: bool) -> None:
    """`cnn_channels_last` (ours; the demo turns it off): the layout survives a checkpoint load, and the other layout
    gives the same outputs and gradients up to rounding."""
    config = load_config(DEBUG_2D, [f"model.init_args.cnn_channels_last={channels_last}"])
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    tokenizer = build_tokenizer(config).train()
    assert tokenizer.encoder.memory_format == tokenizer.decoder.memory_format == layout
    save_official_format(tokenizer, tmp_path / "tok.pt")
    loaded = load_tokenizer(tmp_path / "tok.pt", config)
    assert loaded.encoder.conv_in.weight.is_contiguous(memory_format=layout)
    assert loaded.decoder.conv_out.weight.is_contiguous(memory_format=layout)
    other = build_tokenizer(load_config(DEBUG_2D, [f"model.init_args.cnn_channels_last={not channels_last}"])).train()
    other.load_state_dict(tokenizer.state_dict())
    x = images(2, 32)
    outs = []
    for model in (tokenizer, other):
        out = model(x)
        assert out.recon.is_contiguous(memory_format=model.decoder.memory_format)  # no layout switch inside
        out.recon.pow(2).mean().backward()
        outs.append((out.recon.detach(), model.encoder.conv_in.weight.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=5e-5)  # oneDNN: other kernels per layout
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-6)


def test_cnn_layout_auto_is_channels_last_except_for_training_on_avx2_cpus(monkeypatch) -> None:
    """`cnn_channels_last: null` (the default) resolves per device; explicit values always win."""
    from gigatok.infra.parallel import cnn_channels_last_for_training

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for capability, expected in [("AVX2", False), ("AVX512", True), ("DEFAULT", True)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert cnn_channels_last_for_training(None, cpu) is expected, capability
        assert cnn_channels_last_for_training(None, cuda) is True
        assert cnn_channels_last_for_training(True, cpu) is True and cnn_channels_last_for_training(False, cuda) is False
    assert load_config(ROOT / "configs" / "vq" / "VQ_SS256.yaml").model.init_args.cnn_channels_last is None
    assert cnn_channels_last(build_tokenizer(load_config(DEBUG_1D, ["model.init_args.cnn_channels_last=null"])))


def test_switching_the_cnn_layout_keeps_values_and_moves_every_cnn_weight() -> None:
    torch.manual_seed(0)
    tokenizer = tiny(DEBUG_1D).eval()
    x = images(2, 32)
    with torch.no_grad():
        before = tokenizer(x).recon
    state = {k: v.clone() for k, v in tokenizer.state_dict().items()}
    set_cnn_memory_format(tokenizer, False)
    assert not cnn_channels_last(tokenizer)
    convs = [m for part in (tokenizer.encoder, tokenizer.decoder) for m in part.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous() and not m.weight.is_contiguous(memory_format=torch.channels_last)
                         for m in convs)
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        after = tokenizer(x).recon
    assert after.is_contiguous()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=5e-5)  # other oneDNN kernels per layout
    set_cnn_memory_format(tokenizer, True)
    assert cnn_channels_last(tokenizer) and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                                               for m in convs)


def test_a_damaged_safetensors_file_is_a_checkpoint_error(tmp_path):
    from gigatok.infra.checkpoint import CheckpointError

    path = tmp_path / "model.safetensors"
    for content in (b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":", b"garbage" * 10):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
            load_tokenizer(path, DEBUG_1D)
