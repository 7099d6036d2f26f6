"""Speculative Jacobi decoding (`generate(..., sampler="sjd")`): greedy output equals plain decoding, and sampled
codes follow the model's distribution (checked against exact marginals of a tiny trained GPT)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from gigatok.builders import build_gpt
from gigatok.gpt.generate import cfg_schedule_values, filtered_probs, generate
from gigatok.gpt.model import GPT

torch.set_num_threads(2)


def random_gpt(pos_type: str, vocab: int = 64, tokens: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    gpt = build_gpt("debug", vocab_size=vocab, block_size=tokens, num_classes=10, pos_type=pos_type)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)  # informative, untied logits
    return gpt.eval()


@pytest.mark.parametrize("pos_type", ["learned_1d", "rope_2d"])
@pytest.mark.parametrize("cfg_scale, schedule, kwargs, interval", [
    (1.0, "constant", {}, -1), (3.0, "constant", {}, -1), (2.5, "linear", {}, -1), (4.0, "cosine", {}, -1),
    (2.0, "step", {"window_start": 0.3}, -1), (2.0, "constant", {}, 5),
])
def test_greedy_sjd_equals_plain_decoding(pos_type, cfg_scale, schedule, kwargs, interval):
    gpt = random_gpt(pos_type)
    labels = torch.tensor([3, 0, 9])
    common = {"cfg_scale": cfg_scale, "cfg_schedule": schedule, "cfg_schedule_kwargs": kwargs, "cfg_interval": interval,
                  "top_k": 1}
    plain = generate(gpt, labels, 16, **common)
    for window in (2, 5, 16):
        stats = {}
        sjd = generate(gpt, labels, 16, sampler="sjd", sjd_window=window, stats=stats, **common)
        assert torch.equal(sjd, plain), (window, stats)
        assert 1 <= stats["forwards"] <= 16 and 0 <= stats["acceptance_rate"] <= 1
    assert not gpt.has_caches


def test_sjd_makes_fewer_forward_passes_on_a_predictable_model():
    """A model whose next code hardly depends on the context is guessed right by the Jacobi update."""
    gpt = random_gpt("learned_1d")
    for layer in gpt.layers:  # no context: logits depend on the position only
        torch.nn.init.zeros_(layer.attention.wo.weight)
    torch.nn.init.zeros_(gpt.tok_embeddings.weight)
    stats = {}
    generate(gpt, torch.tensor([4]), 16, top_k=1, sampler="sjd", sjd_window=16, stats=stats)
    assert stats["forwards"] == 2  # the prefill pass drafts every code right, the second accepts them all
    assert stats["codes_per_forward"] == 8


def test_sjd_argument_errors():
    gpt = random_gpt("learned_1d")
    with pytest.raises(ValueError, match="sampler"):
        generate(gpt, torch.tensor([1]), 4, sampler="jacobi")
    with pytest.raises(ValueError, match="sjd_noise"):
        generate(gpt, torch.tensor([1]), 4, sampler="sjd", sjd_noise="gumbel")
    with pytest.raises(ValueError, match="sjd_window"):
        generate(gpt, torch.tensor([1]), 4, sampler="sjd", sjd_window=1)
    with pytest.raises(ValueError, match="eagerly"):
        generate(gpt, torch.tensor([1]), 4, sampler="sjd", compile=True)
    with pytest.raises(ValueError, match="CUDA"):
        generate(gpt, torch.tensor([1]), 4, cuda_graphs=True)


# ---------------------------------------------------------------------------------------------------------------
# distribution: a tiny GPT trained on a known source, exact marginals by enumeration
V, L, CLASSES, LABEL = 8, 4, 3, 1


def markov_codes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) classes and (n, L) codes: code 0 depends on the class, code t on code t - 1 and the class (peaked but
    not deterministic, so SJD both accepts and rejects)."""
    labels = torch.randint(CLASSES, (n,), generator=generator)
    codes = torch.empty(n, L, dtype=torch.long)
    codes[:, 0] = (2 * labels + torch.randint(2, (n,), generator=generator)) % V
    for t in range(1, L):
        r = torch.rand(n, generator=generator)
        follow = (codes[:, t - 1] + labels + 1) % V
        alt = (3 * codes[:, t - 1]) % V
        noise = torch.randint(V, (n,), generator=generator)
        codes[:, t] = torch.where(r < 0.6, follow, torch.where(r < 0.85, alt, noise))
    return labels, codes


@pytest.fixture(scope="module")
def trained_gpt() -> GPT:
    torch.manual_seed(0)
    gpt = build_gpt("debug", vocab_size=V, block_size=L, num_classes=CLASSES, pos_type="learned_1d")
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    gpt.train()
    for _ in range(150):
        labels, codes = markov_codes(256, gen)
        _, loss = gpt(codes[:, :-1], labels, targets=codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.6, loss.item()  # learned the source (uniform: ln 8 = 2.08)
    return gpt.eval()


def exact_joint(gpt: GPT, cfg_scale: float, schedule: str, temperature: float, top_k: int) -> np.ndarray:
    """P(codes) over all V**L sequences for class LABEL, from teacher-forced guided, filtered conditionals."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (V**L, L)
    labels = torch.full((len(seqs),), LABEL)
    with torch.no_grad():
        cond, _ = gpt(seqs[:, :-1], labels)  # (N, L, V)
        logits = cond
        if cfg_scale > 1:
            uncond, _ = gpt(seqs[:, :-1], torch.full_like(labels, CLASSES))
            scales = torch.tensor(cfg_schedule_values(cfg_scale, L, schedule))[None, :, None]
            logits = uncond + (cond - uncond) * scales
    probs = filtered_probs(logits, temperature, top_k)  # (N, L, V)
    per_code = probs.gather(-1, seqs[..., None])[..., 0]  # (N, L)
    return per_code.prod(-1).double().reshape((V,) * L).numpy()


def gof_pvalues(codes: torch.Tensor, joint: np.ndarray) -> list[float]:
    """Chi-square goodness-of-fit p-values of every code's and every adjacent pair's counts against `joint`."""
    n, pvalues = codes.shape[0], []
    groups = [(t,) for t in range(L)] + [(t, t + 1) for t in range(L - 1)]
    for group in groups:
        others = tuple(a for a in range(L) if a not in group)
        expected = joint.sum(axis=others).reshape(-1) * n
        index = codes[:, list(group)].numpy() @ (V ** np.arange(len(group) - 1, -1, -1))
        observed = np.bincount(index, minlength=V ** len(group)).astype(float)
        small = expected < 5  # pool sparse cells so the chi-square approximation holds
        obs = np.append(observed[~small], observed[small].sum())
        exp = np.append(expected[~small], expected[small].sum())
        obs, exp = obs[exp > 0], exp[exp > 0]
        pvalues.append(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)
    return pvalues


@pytest.mark.parametrize("cfg_scale, schedule, temperature, top_k, noise", [(1.0, "constant", 1.0, 0, "fixed"),
                                                                            (2.0, "linear", 0.8, 5, "fixed"),
                                                                            (1.5, "cosine", 1.0, 0, "fresh")])
def test_sjd_samples_follow_the_model_distribution(trained_gpt, cfg_scale, schedule, temperature, top_k, noise):
    joint = exact_joint(trained_gpt, cfg_scale, schedule, temperature, top_k)
    labels = torch.full((4000,), LABEL)
    common = {"cfg_scale": cfg_scale, "cfg_schedule": schedule, "temperature": temperature, "top_k": top_k}
    stats = {}
    sjd = generate(trained_gpt, labels, L, sampler="sjd", sjd_window=3, sjd_noise=noise, stats=stats,
                   generator=torch.Generator().manual_seed(1), **common)
    plain = generate(trained_gpt, labels, L, generator=torch.Generator().manual_seed(2), **common)
    assert 0.05 < stats["acceptance_rate"] < 0.95  # both branches of the acceptance rule ran
    for name, codes in (("sjd", sjd), ("plain", plain)):
        assert min(gof_pvalues(codes, joint)) > 1e-3, name
    # the test has power: samples at another temperature fail it
    hotter = generate(trained_gpt, labels, L, sampler="sjd", sjd_noise=noise,
                      generator=torch.Generator().manual_seed(3),
                      **{**common, "temperature": temperature * 1.3})
    assert min(gof_pvalues(hotter, joint)) < 1e-6
