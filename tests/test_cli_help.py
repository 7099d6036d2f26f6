"""The `gigatok` console command: every stage is a subcommand, `--help` works for each, and every flag says what
it does. Also the W&B / TensorBoard flags of both trainers and their precedence."""
from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from gigatok.stages import STAGES, main, module_of

ROOT = Path(__file__).resolve().parents[1]


def _walk(parser: argparse.ArgumentParser, prefix: str):
    """(command, action) for every option of `parser` and of its sub-commands (hidden ones left out)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{prefix} {name}")
        elif (action.option_strings and not isinstance(action, argparse._HelpAction)
              and action.help is not argparse.SUPPRESS):
            yield prefix, action


@pytest.fixture(scope="module")
def stage_parsers() -> dict[str, tuple[int, str, argparse.ArgumentParser]]:
    """stage -> (exit code, stdout, the parser that answered) of `gigatok <stage> --help`, run in-process."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse._HelpAction.__call__

    def record(self, parser, namespace, values, option_string=None):
        seen.append(parser)
        return original(self, parser, namespace, values, option_string)

    argparse._HelpAction.__call__ = record
    results = {}
    try:
        for stage in STAGES:
            seen.clear()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    code = main([stage, "--help"])
                except SystemExit as exit_:
                    code = exit_.code
            results[stage] = (code, out.getvalue(), seen[0] if seen else None)
    finally:
        argparse._HelpAction.__call__ = original
    return results


def test_every_stage_module_exists_and_is_listed():
    stage_files = {p.stem for p in (ROOT / "gigatok" / "stages").glob("*.py") if p.stem != "__init__"}
    assert stage_files | {"bench"} == set(STAGES)
    for stage in STAGES:
        assert (ROOT / (module_of(stage).replace(".", "/") + ".py")).is_file() or \
            (ROOT / module_of(stage).replace(".", "/") / "__init__.py").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib needs python 3.11; we support 3.10)
    scripts = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'gigatok = "gigatok.stages:main"' in scripts


def test_help_of_every_stage_exits_0_and_every_flag_is_explained(stage_parsers):
    missing = []
    for stage, (code, out, parser) in stage_parsers.items():
        assert code == 0, stage
        assert parser is not None and out.startswith("usage: gigatok"), stage
        options = list(_walk(parser, stage))
        assert options, stage
        missing += [f"{where} {'/'.join(a.option_strings)}" for where, a in options if not (a.help or "").strip()]
    assert not missing, f"flags without a help text: {missing}"


def test_the_bench_subcommands_are_walked(stage_parsers):
    commands = {where for where, _ in _walk(stage_parsers["bench"][2], "bench")}
    assert {"bench tokenizer", "bench gpt", "bench eval"} <= commands


def test_python_m_gigatok_and_unknown_stages():
    run = subprocess.run([sys.executable, "-m", "gigatok", "train_c2i", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--wandb-mode" in run.stdout and "--tensorboard" in run.stdout
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--help"]) == 0
    assert all(stage in out.getvalue() for stage in STAGES)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train-vqq"]) == 2
    assert "Did you mean 'train_vq'?" in err.getvalue()


def test_logging_flags_of_both_trainers():
    from gigatok.config import GPTTrainConfig, VQConfig
    from gigatok.config.flags import given_flags, resolve_config
    from gigatok.stages import train_c2i, train_vq

    config_file = str(ROOT / "configs" / "vq" / "VQ_debug.yaml")

    def vq(*flags: str) -> VQConfig:
        args, overrides = train_vq.parse_args(["--model-config", config_file, *flags])
        return resolve_config(VQConfig, args.model_config, train_vq.flag_values(args), overrides)[0].trainer

    assert (vq().wandb_mode, vq().tensorboard) == ("auto", False)  # the default: works without wandb
    assert vq("--wandb-mode", "offline", "--tensorboard").wandb_mode == "offline"
    assert vq("--tensorboard").tensorboard is True
    assert vq("--wandb-mode", "online", "--no-wandb").wandb_mode == "disabled"  # --no-wandb wins
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            vq("--wandb-mode", "on")

    def gpt(*flags: str) -> GPTTrainConfig:
        args, table, overrides = train_c2i.parse_args(["--sub-exp-dir", "run", *flags])
        return resolve_config(GPTTrainConfig, None, given_flags(args, table), overrides)[0]

    assert train_c2i.wandb_mode(gpt()) == "auto" and gpt().trainer.tensorboard is False
    assert train_c2i.wandb_mode(gpt("--wandb-mode", "online", "--no-wandb")) == "disabled"
    assert train_c2i.wandb_mode(gpt("--wandb-mode", "offline")) == "offline"
    assert gpt("--tensorboard").trainer.tensorboard is True
