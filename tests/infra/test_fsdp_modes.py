"""The FSDP2 data-parallel modes of both trainers (official `--data-parallel sdp|fsdp|hsdp`) against DDP.

One torchrun launch (2 gloo ranks on the CPU) runs this file as a worker script: it trains the debug GPT and the
debug tokenizer for a few steps in every mode (ddp, sdp, fsdp, hsdp on a 2x1 and on a 1x2 mesh) through the stages'
own `train` functions, one after the other in the same process group (one start-up instead of a dozen); the
tokenizer's sdp run and a second GPT hsdp run (with --grad-ckpt) stop at a checkpoint and resume. It also records
how `parallelize` shards a small GPT in each mode. The tests then read the
runs' metrics, logs and checkpoints. Same per-rank batches in every mode, so only the gradient reduction differs:
losses and weights must agree with DDP within the tolerances of the trainers' DDP-vs-one-process tests.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
VQ_CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
# name -> (--data-parallel, GIGATOK_HSDP_MESH or None = from torchrun's LOCAL_WORLD_SIZE, i.e. 1x2 on one node)
MODES = {"ddp": ("ddp", None), "sdp": ("sdp", None), "fsdp": ("fsdp", None), "hsdp_2x1": ("hsdp", "2x1"),
         "hsdp_1x2": ("hsdp", None)}
SHARDED = [name for name in MODES if name != "ddp"]
GPT_STEPS, VQ_STEPS = 8, 2
CODES = "imagenet_code_c2i_flip_ten_crop"  # official code folder layout (10 views per image)
# No dropout of any kind (its masks are drawn per rank; they would still agree between modes, but zero is simpler).
GPT_FLAGS = ["--gpt-model", "debug", "--num-workers", "0", "--device", "cpu", "--mixed-precision", "none",
             "--lr", "1e-3", "--log-every", "1", "--ckpt-every", "4", "--iterations", str(GPT_STEPS),
             "--global-batch-size", "16", "--vocab-size", "512", "--num-classes", "4", "--dropout-p", "0",
             "--token-dropout-p", "0", "--class-dropout-p", "0"]
# As the tokenizer's DDP test, no discriminator, entropy or LPIPS terms; no semantic teacher either (a third of the
# time here; tests/stages/test_train_vq.py trains FSDP with one), which leaves the distill MLP without gradients:
# its missing optimizer state must not stop the sdp resume. The FSDP weight-decay policy everywhere, so that DDP
# optimises the same objective.
VQ_FLAGS = ["--model-config", str(VQ_CONFIG), "--iterations", str(VQ_STEPS), "--global-batch-size", "4",
            "--log-every", "1", "--ckpt-every", str(VQ_STEPS), "--disc-start", "100", "--entropy-loss-ratio", "0",
            "--perceptual-weight", "0", "--aux-loss-end", "2", "--mixed-precision", "none", "--no-wandb",
            "--num-workers", "0", "--device", "cpu", "--trainer.lpips_random_backbone=true",
            "--trainer.distill_loss=false", "--trainer.decay_policy=no_norm_bias"]


# ------------------------------------------------------------------------------------------------------------------
# The worker (run by torchrun: `python tests/infra/test_fsdp_modes.py WORK_DIR`)
# ------------------------------------------------------------------------------------------------------------------

def _with_mesh(mesh: str | None) -> None:
    """Set (or clear) GIGATOK_HSDP_MESH for the next run in this process."""
    from gigatok.infra.parallel import HSDP_MESH_ENV

    if mesh is None:
        os.environ.pop(HSDP_MESH_ENV, None)
    else:
        os.environ[HSDP_MESH_ENV] = mesh


def _train_gpt(work: Path, name: str, mode: str, *extra: str) -> None:
    from gigatok.config import GPTTrainConfig
    from gigatok.config.flags import given_flags, resolve_config
    from gigatok.infra.dist import init_distributed
    from gigatok.stages import train_c2i

    argv = ["--code-path", str(work / CODES), "--save-path", str(work / "gpt"), "--sub-exp-dir", name,
            *GPT_FLAGS, "--data-parallel", mode, *extra]
    args, table, overrides = train_c2i.parse_args(argv)
    config, report = resolve_config(GPTTrainConfig, None, given_flags(args, table), overrides)
    train_c2i.check_config(config)
    train_c2i.train(config, work / "gpt" / name, init_distributed("cpu"), report)


def _train_vq(work: Path, name: str, mode: str, *extra: str) -> None:
    from gigatok.config import VQConfig
    from gigatok.config.flags import resolve_config
    from gigatok.infra.dist import init_distributed
    from gigatok.stages import train_vq

    argv = [*VQ_FLAGS, "--data-path", str(work / "images"), "--save-path", str(work / "vq"), "--sub-exp-dir", name,
            "--data-parallel", mode, *extra]
    args, overrides = train_vq.parse_args(argv)
    config, report = resolve_config(VQConfig, args.model_config, train_vq.flag_values(args), overrides)
    train_vq.train(config, work / "vq" / name, init_distributed("cpu"), report=report)


def _sharding_facts(mode: str) -> dict:
    """How `parallelize` lays out a debug GPT in `mode`: the mesh and placements of a block's weight, and whether
    it is still gathered (a plain tensor) between forward and backward."""
    from torch.distributed.tensor import DTensor

    from gigatok.gpt.config import GPTConfig
    from gigatok.gpt.model import GPT
    from gigatok.infra.parallel import parallelize

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=64, block_size=8, num_classes=4))
    model = parallelize(gpt, mode, device=torch.device("cpu"))
    weight = gpt.layers[0].attention.wqkv.weight
    facts = {"mesh": list(weight.device_mesh.shape), "placements": [type(p).__name__ for p in weight.placements]}
    codes, labels = torch.randint(0, 64, (2, 8)), torch.randint(0, 4, (2,))
    _, loss = model(codes[:, :-1], labels, targets=codes)
    facts["gathered_after_forward"] = not isinstance(gpt.layers[0].attention.wqkv.weight, DTensor)
    loss.backward()
    facts["sharded_after_backward"] = isinstance(gpt.layers[0].attention.wqkv.weight, DTensor)
    return facts


def worker(work: Path) -> None:
    import torch.distributed as dist

    from gigatok.infra.dist import cleanup, init_distributed

    init_distributed("cpu")
    facts = {}
    for name, (mode, mesh) in MODES.items():
        _with_mesh(mesh)
        if mode != "ddp":
            facts[name] = _sharding_facts(mode)
        _train_gpt(work, name, mode)
        if mode == "ddp":  # its step-1 checkpoint gives the step-1 gradients
            _train_vq(work, name, mode, "--ckpt-every", "1")
        elif mode == "sdp":  # stopped at its step-1 checkpoint, then resumed by the same command
            _train_vq(work, name, mode, "--early-stop-iter", "1")
            _train_vq(work, name, mode)
        else:
            _train_vq(work, name, mode)
    # The GPT's hsdp 2x1 run again, with activation checkpointing (--grad-ckpt), stopped at its step-4 checkpoint
    # and resumed: it must equal the one above.
    _with_mesh("2x1")
    _train_gpt(work, "hsdp_2x1_split", "hsdp", "--grad-ckpt", "--early-stop-iter", "4")
    _train_gpt(work, "hsdp_2x1_split", "hsdp", "--grad-ckpt")
    if dist.get_rank() == 0:
        (work / "facts.json").write_text(json.dumps(facts))
    cleanup()


# ------------------------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------------------------

def test_hsdp_mesh_is_nodes_by_ranks_per_node_unless_set(monkeypatch):
    from gigatok.errors import UserError
    from gigatok.infra.parallel import HSDP_MESH_ENV, hsdp_mesh_shape

    monkeypatch.delenv(HSDP_MESH_ENV, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert hsdp_mesh_shape(32) == (4, 8)  # 4 nodes of 8 GPUs: replicate across nodes, shard within one
    monkeypatch.setenv(HSDP_MESH_ENV, "8x4")
    assert hsdp_mesh_shape(32) == (8, 4)
    for bad, needle in (("8x5", "does not cover the 32 ranks"), ("2-16", "REPLICASxSHARD_SIZE"),
                        ("0x32", "REPLICASxSHARD_SIZE")):
        monkeypatch.setenv(HSDP_MESH_ENV, bad)
        with pytest.raises(UserError, match=needle):
            hsdp_mesh_shape(32)
    monkeypatch.delenv(HSDP_MESH_ENV)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # uneven nodes
    with pytest.raises(UserError, match=HSDP_MESH_ENV):
        hsdp_mesh_shape(8)


def test_gradients_reduce_in_the_mixed_precision_dtype_unless_grad_precision_is_set():
    """Official: `reduce_dtype = grad_precision or mixed_precision`."""
    from gigatok.infra.parallel import grad_reduce_precision

    assert grad_reduce_precision(None, "bf16") == "bf16"
    assert grad_reduce_precision(None, "fp16") == "fp16"
    assert grad_reduce_precision(None, "none") == "fp32"
    assert grad_reduce_precision("fp32", "bf16") == "fp32"
    assert grad_reduce_precision("none", "bf16") == "fp32"  # the tokenizer's official choice "none"
    assert grad_reduce_precision("bf16", "none") == "bf16"


def test_official_fsdp_flags_reach_both_configs():
    from gigatok.config import GPTTrainConfig, VQConfig
    from gigatok.config.flags import given_flags, resolve_config
    from gigatok.errors import UserError
    from gigatok.stages import train_c2i, train_vq

    args, table, overrides = train_c2i.parse_args(["--sub-exp-dir", "x", "--code-path", "c", "--data-parallel",
                                                   "hsdp", "--grad-precision", "bf16", "--grad-ckpt"])
    config, _ = resolve_config(GPTTrainConfig, None, given_flags(args, table), overrides)
    assert (config.trainer.data_parallel, config.trainer.grad_precision, config.trainer.grad_ckpt) == \
        ("hsdp", "bf16", True)
    train_c2i.check_config(config)
    config.trainer.ema = True
    with pytest.raises(UserError, match="--ema is not supported with --data-parallel hsdp"):
        train_c2i.check_config(config)
    args, overrides = train_vq.parse_args(["--model-config", str(VQ_CONFIG), "--data-parallel", "sdp",
                                           "--grad-precision", "none"])
    config, _ = resolve_config(VQConfig, args.model_config, train_vq.flag_values(args), overrides)
    assert (config.trainer.data_parallel, config.trainer.grad_precision) == ("sdp", "none")


@pytest.mark.parametrize("script, default", [("train_c2i_fsdp.sh", "sdp"), ("train_vq_fsdp.sh", "fsdp")])
def test_fsdp_scripts_default_to_the_official_mode_and_pass_every_flag_through(script, default):
    """The official default mode first, then the user's arguments unchanged (a later --data-parallel wins)."""
    env = {**os.environ, "gpus": "1", "TORCH_RUN_PATH": "echo"}
    user = ["--data-parallel", "hsdp", "--grad-precision", "bf16", "--sub-exp-dir", "a b"]
    result = subprocess.run(["bash", str(REPO / "scripts" / script), *user], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    module = "gigatok.stages." + ("train_c2i" if "c2i" in script else "train_vq")
    assert result.stdout.split(f"-m {module} ")[1].strip() == " ".join(["--data-parallel", default, *user])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_inputs(work: Path) -> None:
    """16 images of codes in the official per-image layout ((1, 10, 16) int64 in [0, 512), labels in [0, 4)) and 8
    noisy 40 px images for the tokenizer."""
    from PIL import Image

    rng = np.random.default_rng(0)
    codes, labels = work / CODES / "imagenet32_codes", work / CODES / "imagenet32_labels"
    codes.mkdir(parents=True)
    labels.mkdir()
    for i in range(16):
        np.save(codes / f"{i}.npy", rng.integers(0, 512, size=(1, 10, 16)))
        np.save(labels / f"{i}.npy", np.array([i % 4]))
    images = work / "images"
    images.mkdir()
    for i in range(8):
        base = rng.uniform(0, 255, 3)
        pixels = np.clip(base + rng.normal(0, 40, (40, 40, 3)) + np.linspace(-60, 60, 40)[:, None, None], 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i}.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The work folder after the worker ran: gpt/<mode>/, vq/<mode>/, facts.json."""
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("torchrun cannot start here")
    work = tmp_path_factory.mktemp("fsdp_modes")
    _write_inputs(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GIGATOK_HSDP_MESH"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(Path(__file__).resolve()), str(work)]
    with open(work / "worker.log", "w") as log:
        code = subprocess.run(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=600).returncode
    assert code == 0, (work / "worker.log").read_text()[-5000:]
    return work


def _metrics(run_dir: Path) -> dict[int, dict]:
    """step -> metrics record; a later line for the same step (a resumed run redoing it) wins."""
    return {(r := json.loads(line))["step"]: r for line in (run_dir / "metrics.jsonl").read_text().splitlines()}


def _checkpoint(run_dir: Path, step: int) -> dict:
    from gigatok.infra.run_state import load_training_checkpoint

    return load_training_checkpoint(run_dir / "checkpoints" / f"{step:07d}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_parallelize_maps_each_mode_onto_fsdp2(runs, name):
    """sdp keeps the gathered weights from forward to backward (SHARD_GRAD_OP), fsdp and hsdp free them after
    forward; hsdp is a (replicate, shard) mesh of the requested shape."""
    facts = json.loads((runs / "facts.json").read_text())[name]
    mode, mesh = MODES[name]
    expected = {"sdp": ([2], ["Shard"]), "fsdp": ([2], ["Shard"]), "hsdp_2x1": ([2, 1], ["Replicate", "Shard"]),
                "hsdp_1x2": ([1, 2], ["Replicate", "Shard"])}[name]
    assert (facts["mesh"], facts["placements"]) == expected
    assert facts["gathered_after_forward"] == (mode == "sdp")
    assert facts["sharded_after_backward"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_gpt_sharded_modes_match_ddp(runs, name):
    """Same losses at every step and same weights after 8 steps as DDP (abs 1e-5, as the GPT's DDP/FSDP test); the
    checkpoint holds full, name-keyed state whatever the mode."""
    reference, metrics = _metrics(runs / "gpt" / "ddp"), _metrics(runs / "gpt" / name)
    assert sorted(metrics) == list(range(1, GPT_STEPS + 1))
    assert reference[GPT_STEPS]["train/loss"] < reference[1]["train/loss"]  # it learns
    for step in range(1, GPT_STEPS + 1):
        for key in ("train/loss", "train/grad_norm"):
            assert metrics[step][key] == pytest.approx(reference[step][key], abs=1e-5), (step, key)
    ddp, sharded = _checkpoint(runs / "gpt" / "ddp", GPT_STEPS), _checkpoint(runs / "gpt" / name, GPT_STEPS)
    assert sharded["model"].keys() == ddp["model"].keys()
    for key, value in ddp["model"].items():
        torch.testing.assert_close(sharded["model"][key], value, rtol=0, atol=1e-5, msg=key)
    assert sharded["extra"]["optimizer_format"] == "fqn" and sharded["extra"]["data_parallel"] == MODES[name][0]
    assert sharded["optimizer"]["state"].keys() == set(ddp["model"])  # full moments of every parameter
    mode, mesh = MODES[name]
    log = (runs / "gpt" / name / "log.txt").read_text()
    shape = {"hsdp_2x1": "2 replica(s) x 1 shard(s)", "hsdp_1x2": "1 replica(s) x 2 shard(s)"}.get(name, "2 shards")
    assert f"{mode} (FSDP2: {shape}" in log


@pytest.mark.slow
def test_gpt_hsdp_resume_after_a_checkpoint_is_exact(runs):
    """hsdp 2x1 with activation checkpointing, stopped at its step-4 checkpoint and resumed, equals the
    uninterrupted run (no checkpointing) bit for bit; no wrapper name leaks into the checkpoint."""
    whole, split = runs / "gpt" / "hsdp_2x1", runs / "gpt" / "hsdp_2x1_split"
    assert "at step 4" in (split / "log.txt").read_text()
    a, b = _metrics(whole), _metrics(split)
    assert sorted(b) == list(range(1, GPT_STEPS + 1))
    for step in range(1, GPT_STEPS + 1):
        assert b[step]["train/loss"] == a[step]["train/loss"], step
    final_a, final_b = _checkpoint(whole, GPT_STEPS), _checkpoint(split, GPT_STEPS)
    assert final_b["model"].keys() == final_a["model"].keys()
    assert final_b["optimizer"]["state"].keys() == final_a["optimizer"]["state"].keys()
    for key, value in final_a["model"].items():
        assert torch.equal(final_b["model"][key], value), key
    for key, state in final_a["optimizer"]["state"].items():
        assert torch.equal(final_b["optimizer"]["state"][key]["exp_avg_sq"], state["exp_avg_sq"]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_tokenizer_sharded_modes_match_ddp(runs, name):
    """Every loss term within rel 1e-5 of DDP at both steps; after 2 steps AdamW's first moments within 1e-6 and the
    weights within 1e-5, except where the gradient is pure rounding noise (AdamW turns it into a full +-lr step), as
    in the tokenizer's DDP test. (The tokenizer is seeded per rank before it is built: like DDP, the sharded modes
    must start every rank from rank 0's weights.) The sdp run was stopped at step 1 and resumed: its step 2 agreeing too means the
    weights, moments and data position came back from the checkpoint."""
    from gigatok.builders import load_tokenizer
    from gigatok.infra.optim import split_decay_parameters

    reference, metrics = _metrics(runs / "vq" / "ddp"), _metrics(runs / "vq" / name)
    assert sorted(metrics) == list(range(1, VQ_STEPS + 1))
    for step in range(1, VQ_STEPS + 1):
        for key in ("train/total", "train/rec", "train/rec_direct", "train/fea_rec", "train/vq", "train/commit",
                    "train/grad_norm"):
            assert metrics[step][key] == pytest.approx(reference[step][key], rel=1e-5, abs=1e-7), (step, key)
    if name == "sdp":
        assert "resuming from" in (log := (runs / "vq" / name / "log.txt").read_text()) and "at step 1" in log
    first = _checkpoint(runs / "vq" / "ddp", 1)
    ddp, sharded = _checkpoint(runs / "vq" / "ddp", VQ_STEPS), _checkpoint(runs / "vq" / name, VQ_STEPS)
    assert sharded["extra"]["optimizer_format"] == "fqn"
    # DDP's optimizer state is keyed by parameter index, in the order of its param groups (decay, then no_decay).
    decay, no_decay = split_decay_parameters(load_tokenizer(None, VQ_CONFIG), "no_norm_bias")
    names = [n for n, _ in decay + no_decay]
    # Step-1 gradients: AdamW's first moment after one step is (1 - beta1) x the clipped gradient.
    state_ddp, state = ddp["optimizer"]["state"], sharded["optimizer"]["state"]
    idle = [n for i, n in enumerate(names) if i not in state_ddp]  # never had a gradient: the distill MLP
    assert idle and all(n.startswith("s1to2decoder.distill_mlp.") for n in idle)
    grads = {n: first["optimizer"]["state"][i]["exp_avg"] / 0.1 for i, n in enumerate(names) if n not in idle}
    g_max = max(g.abs().max() for g in grads.values())
    noise = total = 0
    for i, n in enumerate(names):
        if n in idle:  # untouched in both (AdamW skips parameters without a gradient, weight decay included)
            assert n not in state and torch.equal(sharded["model"][n], ddp["model"][n]), n
            continue
        torch.testing.assert_close(state[n]["exp_avg"], state_ddp[i]["exp_avg"], rtol=0, atol=1e-6, msg=n)
        diff = (sharded["model"][n] - ddp["model"][n]).abs()
        noisy = grads[n].abs() < 1e-5 * g_max
        assert not (diff[~noisy] > 1e-5).any(), n
        noise, total = noise + int((diff[noisy] > 1e-5).sum()), total + diff.numel()
    assert noise < 1e-3 * total
    load_tokenizer(runs / "vq" / name / "checkpoints" / f"{VQ_STEPS:07d}.pt", runs / "vq" / name / "config.yaml")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
