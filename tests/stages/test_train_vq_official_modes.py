"""Official tokenizer-training modes beyond the released recipes, end to end on CPU with the debug config:
`model.init_ckpt` (a stage-2 run starting from stage 1's weights and optimizer states), `freeze_but_decoder_iter`,
`random_mix_reg`, causal dynamic-length training, `optimizer: Adam` and the official `cosine` schedule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_vq import CONFIG, TEST_FLAGS, read_metrics, write_photos

from gigatok.infra.run_state import load_training_checkpoint
from gigatok.stages.train_vq import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "train", names=("astronaut", "chelsea", "coffee",
                                                                          "rocket"))


def run(data: Path, root: Path, name: str, *extra: str, iterations: int = 3) -> Path:
    main(["--model-config", str(CONFIG), "--data-path", str(data), "--save-path", str(root), "--sub-exp-dir", name,
          "--iterations", str(iterations), "--global-batch-size", "2", "--log-every", "1", "--ckpt-every", "1",
          *TEST_FLAGS, *extra])
    return root / name


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_training_checkpoint(run_dir / "checkpoints" / f"{step:07d}.pt")["model"]


def test_official_ablation_switches_train_together(photos, tmp_path, capsys):
    run_dir = run(photos, tmp_path, "modes", "--model.causal_settings.causal_type=per-level",
                  "--model.causal_settings.dynamic_length_train=true", "--model.causal_settings.min_level=1",
                  "--trainer.random_mix_reg=true", "--trainer.replace_ratio=0.3", "--trainer.freeze_but_decoder_iter=2",
                  "--trainer.optimizer=Adam", "--trainer.lr_scheduler=cosine", "--trainer.warmup=0")
    assert "Adam (all" in capsys.readouterr().err
    metrics = read_metrics(run_dir)
    assert sorted(metrics) == [1, 2, 3] and all(torch.isfinite(torch.tensor(m["train/total"])) for m in metrics.values())
    # Official cosine: 0.5 (1 + cos(pi s / N)) lr down to 0, not to end_lr (1e-5 in the config).
    assert metrics[3]["train/lr"] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(2 / 3 * torch.pi)).item()) * 1e-4)
    # From step index 2 (the third step) only the pixel decoder moves, and the semantic loss is off.
    before, after = weights(run_dir, 2), weights(run_dir, 3)
    moved = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])
             and not key.endswith("codebook_used")}
    assert moved == {"decoder"}
    assert metrics[3]["train/semantic"] == 0 and metrics[2]["train/semantic"] != 0
    assert weights(run_dir, 1).keys() == before.keys()


def test_mode_mistakes_are_named(photos, tmp_path, capsys):
    for flags, message in ((["--model.causal_settings.dynamic_length_train=true"], "needs a causal_type"),
                           (["--trainer.random_mix_reg=true"], "trainer.replace_ratio is not set"),
                           (["--model.causal_settings.causal_type=per-lvl"], "Did you mean 'per-level'"),
                           (["--trainer.optimizer=SGD"], "'trainer.optimizer' is 'SGD'"),
                           (["--model.init_ckpt", str(tmp_path / "missing.pt")], "missing.pt")):
        with pytest.raises(SystemExit) as info:
            run(photos, tmp_path, "bad", *flags, iterations=1)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and "Traceback" not in err, (flags, err[-800:])


def test_init_ckpt_starts_a_new_run_at_step_0_from_the_weights_and_optimizer_states(photos, tmp_path, capsys):
    stage1 = run(photos, tmp_path, "stage1", iterations=2)
    source = stage1 / "checkpoints" / "0000002.pt"
    stage2 = run(photos, tmp_path, "stage2", f"--model.init_ckpt={source}", iterations=1)
    assert f"starting from model.init_ckpt {source}" in capsys.readouterr().err
    first = load_training_checkpoint(stage2 / "checkpoints" / "0000001.pt")
    loaded = load_training_checkpoint(source)
    # One more Adam step on top of stage 1's moments: the per-parameter step counters continue from 2.
    steps = {float(state["step"]) for state in first["optimizer"]["state"].values()}
    assert steps == {3.0}
    assert first["discriminator"].keys() == loaded["discriminator"].keys()
    changed = [k for k in loaded["model"] if not torch.equal(loaded["model"][k], first["model"][k])]
    assert changed  # it trained from there
    # A rerun of the same command resumes its own run (step 1), not the init checkpoint again.
    run(photos, tmp_path, "stage2", f"--model.init_ckpt={source}", iterations=2)
    assert "resuming from" in capsys.readouterr().err
