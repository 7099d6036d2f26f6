"""The entropy loss: its formula, and its all-ranks option equal to the single-process loss on the global batch."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gigatok.tokenizer.quantizer import entropy_loss

N, K, TEMPERATURE = 6, 10, 0.5


def _affinity() -> torch.Tensor:
    return torch.randn(2 * N, K, generator=torch.Generator().manual_seed(0))


def test_entropy_loss_formula() -> None:
    affinity = _affinity()
    p = torch.softmax(affinity / TEMPERATURE, dim=-1)
    log_p = torch.log_softmax(affinity / TEMPERATURE + 1e-5, dim=-1)
    mean = p.mean(0)
    expected = -(p * log_p).sum(-1).mean() + (mean * torch.log(mean + 1e-5)).sum()
    torch.testing.assert_close(entropy_loss(affinity, TEMPERATURE), expected)
    # without a process group the option changes nothing
    torch.testing.assert_close(entropy_loss(affinity, TEMPERATURE, all_ranks=True), expected)


def _worker(rank: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rows = _affinity()[rank * N:(rank + 1) * N].clone().requires_grad_(True)
    loss = entropy_loss(rows, TEMPERATURE, all_ranks=True)
    loss.backward()
    queue.put((rank, loss.item(), rows.grad.clone()))
    dist.barrier()
    dist.destroy_process_group()


def test_all_ranks_option_matches_the_global_batch(tmp_path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = str(tmp_path / "pg")
    procs = [ctx.Process(target=_worker, args=(r, init_file, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    full = _affinity().requires_grad_(True)
    loss = entropy_loss(full, TEMPERATURE)
    loss.backward()
    # DDP averages the ranks' losses and gradients: both equal the single-process loss on the whole batch.
    torch.testing.assert_close(torch.tensor(sum(r[1] for r in results) / 2), loss.detach())
    grads = torch.cat([r[2] for r in results]) / 2
    torch.testing.assert_close(grads, full.grad, atol=1e-6, rtol=1e-5)
    # and it differs from the official per-rank loss
    local = [entropy_loss(_affinity()[r * N:(r + 1) * N], TEMPERATURE) for r in range(2)]
    assert abs(sum(local).item() / 2 - loss.item()) > 1e-3


def test_quantizer_is_finite_on_inputs_that_overflow_fp16() -> None:
    """z**2 of these half-precision inputs is inf in fp16 (> 65504), and softmax(-d / 0.01) of raw distances would
    overflow too; the quantizer runs its maths in fp32 and stays finite, under autocast as well."""
    from gigatok.tokenizer.quantizer import VectorQuantizer

    torch.manual_seed(0)
    quantizer = VectorQuantizer(64, 8, entropy_loss_ratio=0.005, rot=True).train()
    z = (torch.randn(2, 8, 1, 16) * 1000).half().requires_grad_(True)  # (B, Dc, 1, L) with |z| up to ~3000
    assert torch.isinf(z.detach() ** 2).any()  # the naive fp16 computation overflows
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            quant, losses, codes = quantizer(z)
        total = losses.vq + losses.commit + losses.entropy + quant.float().sum()
        assert torch.isfinite(total) and torch.isfinite(quant).all()
        total.backward()
        assert torch.isfinite(z.grad).all()
        z.grad = None
