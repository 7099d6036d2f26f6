"""What the CPU demo's stages and its report share: the flags, where everything goes under --out, the files the
stages pass to each other, and whether FID can be computed here.

`gigatok.stages.demo` builds one `Plan` and hands it to its stage lists and to `gigatok.engine.demo_report`.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from gigatok.infra.stage_runner import first_match


def inception_available() -> tuple[bool, str]:
    """Whether FID can be computed here (Inception weights found), and why not."""
    from gigatok.eval.inception import InceptionWeightsError, find_inception_weights

    try:
        _path, kind = find_inception_weights()
    except InceptionWeightsError as err:
        return False, str(err).splitlines()[0]
    return True, f"Inception: {kind} weights"


class Paths:
    """Where everything goes under --out."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data, self.runs, self.reference, self.recon, self.codes, self.samples, self.classifier, self.curves = (
            out / name for name in ("data", "runs", "reference", "recon", "codes", "samples", "classifier", "curves"))

    def checkpoint(self, run: str, steps: int) -> Path:
        return self.runs / run / "checkpoints" / f"{steps:07d}.pt"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the stages share: the flags, the paths and the files they pass to each other."""

    args: argparse.Namespace
    paths: Paths
    use_fid: bool
    config: str  # the tokenizer config (YAML path) of --tokenizer
    gpt_flags: tuple[str, ...]  # the GPT position flags that match its codes (--gpt-2d for the 2D tokenizer)

    @property
    def use_rfid(self) -> bool:
        """The held-out reconstruction in the quantitative mode (rFID; --rfid): one more Inception pass."""
        return self.use_fid and self.args.rfid

    @property
    def data(self) -> Any:
        from gigatok.data.demo_data import demo_data_paths

        return demo_data_paths(self.paths.data)

    @property
    def heldout(self) -> Path:
        """The evaluated held-out digits: all of them, or the --eval-limit subset."""
        return self.data.heldout if self.args.eval_limit is None else self.paths.data / "digits_heldout_eval"

    @property
    def vq_ckpt(self) -> str:
        return str(self.paths.checkpoint("tokenizer", self.args.vq_steps))

    @property
    def curve(self) -> Path:
        """This tokenizer kind's held-out PSNR curve (one file per kind, so the other kind's survives)."""
        return self.paths.curves / f"tokenizer_{self.args.tokenizer}.json"

    @property
    def ref_npz(self) -> Path:
        return self.paths.reference / "val_imagenet.npz"

    @property
    def heldout_deps(self) -> list[str]:
        return ["eval_subset"] if self.args.eval_limit is not None else ["data"]


def sample_batch(folder: Path, with_results: bool) -> Path | None:
    """The sample npz of the `samples` stage (with its FID results `.json` when asked), or None."""
    npz = first_match(folder, "*.npz")
    if npz is None or (with_results and not npz.with_suffix(".json").is_file()):
        return None
    return npz
