"""GPT model: forward/backward in every position mode, official init, dropouts, probing features, loader."""
from __future__ import annotations

import math

import pytest
import torch

from gigatok.builders import build_gpt, load_gpt
from gigatok.gpt.config import POS_TYPES
from gigatok.infra.checkpoint import CheckpointError
from gigatok.infra.io import torch_save_atomic
from gigatok.infra.parallel import fsdp_wrap_units

torch.set_num_threads(2)
V, N, NUM_CLASSES = 64, 16, 10


def debug_gpt(pos_type: str = "learned_1d", **overrides):
    kwargs = dict(vocab_size=V, block_size=N, num_classes=NUM_CLASSES, pos_type=pos_type)
    return build_gpt("debug", **{**kwargs, **overrides})


@pytest.mark.parametrize("pos_type", POS_TYPES)
def test_forward_backward_every_position_mode(pos_type):
    torch.manual_seed(0)
    gpt = debug_gpt(pos_type, drop_path_rate=0.1, use_qk_norm=pos_type == "rope_1d").train()
    codes = torch.randint(0, V, (3, N))
    labels = torch.tensor([0, 4, 9])
    logits, loss = gpt(codes[:, :-1], labels, targets=codes)
    assert logits.shape == (3, N, V) and logits.dtype == torch.float32
    # zero-initialised head: uniform predictions, loss exactly ln(K)
    assert loss.item() == pytest.approx(math.log(V), abs=1e-6)
    loss.backward()
    grads = {name: p.grad for name, p in gpt.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["output.weight"].abs().sum() > 0
    logits, loss = gpt(codes[:, :0], labels)  # class token alone
    assert logits.shape == (3, 1, V) and loss is None


def test_official_initialisation():
    torch.manual_seed(0)
    gpt = build_gpt("debug", dim=256, n_head=4, vocab_size=4096, num_classes=1000, block_size=256)
    assert torch.count_nonzero(gpt.output.weight) == 0
    for name in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.attention.wqkv.weight",
                 "layers.1.feed_forward.w2.weight"):
        assert gpt.get_parameter(name).std().item() == pytest.approx(0.02, rel=0.05), name
    assert gpt.positional_embedding.std().item() == pytest.approx(256 ** -0.5, rel=0.05)
    assert torch.equal(gpt.norm.weight, torch.ones(256))
    assert gpt.cls_embedding.embedding_table.weight.shape == (1001, 256)  # row 1000 = null class
    no_null = build_gpt("debug", class_dropout_prob=0.0, num_classes=10, vocab_size=V, block_size=N)
    assert no_null.cls_embedding.embedding_table.weight.shape == (10, 64) and not no_null.has_null_class


def test_label_dropout_only_in_training():
    torch.manual_seed(0)
    gpt = debug_gpt(class_dropout_prob=0.5)
    labels = torch.full((4000,), 3)
    dropped = gpt.cls_embedding.token_drop(labels)
    assert set(dropped.unique().tolist()) == {3, NUM_CLASSES}
    assert (dropped == NUM_CLASSES).float().mean().item() == pytest.approx(0.5, abs=0.05)
    forced = gpt.cls_embedding(torch.tensor([1, 2]), train=False, force_drop_ids=torch.tensor([1, 0]))
    table = gpt.cls_embedding.embedding_table.weight
    assert torch.equal(forced[:, 0], table[[NUM_CLASSES, 2]])
    assert torch.equal(gpt.cls_embedding(labels[:8], train=False)[:, 0], table[[3] * 8])


def test_eval_is_deterministic_and_train_applies_dropout():
    torch.manual_seed(0)
    gpt = debug_gpt()
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    codes = torch.randint(0, V, (2, N))
    labels = torch.tensor([1, 2])
    gpt.eval()
    with torch.no_grad():
        a, _ = gpt(codes[:, :-1], labels)
        b, _ = gpt(codes[:, :-1], labels)
        gpt.train()
        c, _ = gpt(codes[:, :-1], labels)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_forward_hidden_returns_layer_states_of_the_teacher_forced_sequence():
    torch.manual_seed(0)
    gpt = debug_gpt("rope_2d").eval()
    codes = torch.randint(0, V, (2, N))
    null = torch.full((2,), NUM_CLASSES)
    captured = []
    hook = gpt.layers[0].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        gpt(codes[:, :-1], null)
        feats = gpt.forward_hidden(codes[:, :-1], null, num_layers=1)  # GigaTok's probe call: class + N-1 codes
    hook.remove()
    assert feats.shape == (2, N, 64)
    torch.testing.assert_close(feats, captured[0])
    assert torch.equal(gpt.forward_hidden(codes, null, num_layers=0)[:, 1:], gpt.tok_embeddings(codes))
    with pytest.raises(ValueError, match="num_layers"):
        gpt.forward_hidden(codes, null, num_layers=3)


def test_sequence_length_and_dtype_handling():
    gpt = debug_gpt("rope_2d").eval()
    with pytest.raises(ValueError, match="exceeds"):
        gpt(torch.zeros(1, N + 1, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="cannot decode"):
        gpt.setup_caches(2, N + 2)
    gpt_bf16 = debug_gpt("rope_2d").to(torch.bfloat16).eval()
    logits, _ = gpt_bf16(torch.zeros(1, 4, dtype=torch.long), torch.tensor([0]))
    assert logits.dtype == torch.float32 and gpt_bf16.freqs_cis.dtype == torch.float32
    assert fsdp_wrap_units(gpt) == list(gpt.layers)


# ---------------------------------------------------------------------------------------------------------------
# loader
def test_load_gpt_roundtrip_and_entries(tmp_path):
    torch.manual_seed(0)
    src = debug_gpt("rope_2d")
    torch.nn.init.normal_(src.output.weight)
    state = src.state_dict()
    kwargs = dict(pos_type="rope_2d", vocab_size=V, block_size=N, num_classes=NUM_CLASSES)
    path = tmp_path / "ckpt.pt"
    # DDP/compile prefixes and a stray freqs_cis (LlamaGen-derived files) are tolerated
    stray = {f"module.{k}": v for k, v in state.items()} | {"freqs_cis": torch.zeros(N + 1, 8, 2)}
    torch_save_atomic({"model": stray, "steps": 5}, path)
    gpt = load_gpt(path, "debug", **kwargs)
    assert not gpt.training and all(torch.equal(gpt.state_dict()[k], v) for k, v in state.items())
    assert gpt.freqs_cis.abs().sum() > 0  # the RoPE table is rebuilt, not taken from the meta build
    ema = {k: v + 1 for k, v in state.items()}
    ckpt = {"model": state, "ema": ema}
    assert torch.equal(load_gpt(ckpt, "debug", **kwargs).norm.weight, state["norm.weight"])  # official: "model"
    assert torch.equal(load_gpt(ckpt, "debug", use_ema=True, **kwargs).norm.weight, ema["norm.weight"])
    assert torch.equal(load_gpt(state, "debug", **kwargs).output.weight, state["output.weight"])  # bare (FSDP)


def test_load_gpt_is_strict_and_names_keys():
    state = debug_gpt("learned_1d").state_dict()
    kwargs = dict(vocab_size=V, block_size=N, num_classes=NUM_CLASSES)
    with pytest.raises(CheckpointError, match="positional_embedding") as err:
        load_gpt({"model": state}, "debug", pos_type="rope_2d", **kwargs)
    assert "pos_type='learned_1d'" in str(err.value)
    wrong_size = build_gpt("debug", dim=32, n_head=2, **kwargs).state_dict()
    with pytest.raises(CheckpointError, match=r"tok_embeddings.weight: checkpoint \(64, 32\) vs model \(64, 64\)"):
        load_gpt({"model": wrong_size}, "debug", **kwargs)
    missing = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(CheckpointError, match=r"(?s)missing keys.*norm.weight"):
        load_gpt({"model": missing}, "debug", **kwargs)
    extra = state | {"layers.9.attention.wo.weight": torch.zeros(64, 64)}
    with pytest.raises(CheckpointError, match=r"(?s)unexpected keys.*layers.9"):
        load_gpt({"model": extra}, "debug", **kwargs)
    with pytest.raises(CheckpointError, match="no model weights"):
        load_gpt({"optimizer": {}, "steps": 1}, "debug", **kwargs)


def test_export_gpt_safetensors_round_trip(tmp_path):
    from gigatok.builders import load_gpt_export
    from gigatok.stages import export

    gpt = build_gpt("debug", vocab_size=64, block_size=16, num_classes=10)
    ema = build_gpt("debug", vocab_size=64, block_size=16, num_classes=10)
    torch.save({"model": gpt.state_dict(), "ema": ema.state_dict(), "steps": 10}, tmp_path / "ckpt.pt")
    argv = ["--gpt-ckpt", str(tmp_path / "ckpt.pt"), "--gpt-model", "debug", "--vocab-size", "64", "--block-size",
            "16", "--num-classes", "10", "--out-dir", str(tmp_path / "out")]
    assert export.main(argv) == 0
    loaded = load_gpt_export(tmp_path / "out")
    assert not torch.equal(gpt.tok_embeddings.weight, ema.tok_embeddings.weight)
    assert torch.equal(loaded.tok_embeddings.weight, ema.tok_embeddings.weight)  # the EMA weights are exported
    assert export.main(argv[:-2] + ["--no-ema", "--out-dir", str(tmp_path / "raw")]) == 0
    assert torch.equal(load_gpt_export(tmp_path / "raw").tok_embeddings.weight, gpt.tok_embeddings.weight)
    assert export.main(argv[:3] + ["GPT-B"] + argv[4:]) == 2  # wrong size: a clear error, exit 2
