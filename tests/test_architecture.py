"""The layout shows the architecture, and this keeps it so: every `gigatok` import (module-level or inside a function)
goes down the floors, never up, and the rules of the style guide hold (layers import nothing else from gigatok, the
GPT never imports the tokenizer, eval holds metrics only, nothing imports a stage, model files hold architecture)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gigatok"

# What each floor may import from gigatok (besides itself). Level 0: errors, config, layers; level 1: tokenizer, gpt,
# data, eval, infra; level 2: builders, engine; level 3: stages and the bench tool.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "layers": set(),
    "infra": {"errors"},
    "data": {"errors", "infra"},
    "eval": {"errors", "infra"},
    "gpt": {"layers"},
    "tokenizer": {"errors", "config", "layers"},
    "builders": {"errors", "config", "layers", "infra", "tokenizer", "gpt"},
    "engine": {"errors", "config", "layers", "infra", "data", "eval", "tokenizer", "gpt", "builders"},
    "stages": {"errors", "config", "layers", "infra", "data", "eval", "tokenizer", "gpt", "builders", "engine"},
    "bench": {"errors", "config", "layers", "infra", "data", "eval", "tokenizer", "gpt", "builders", "engine"},
    "__main__": {"stages"},  # `python -m gigatok <stage>`: the dispatcher, which finds stages by name
    # The public API: zoo (registry + shipped config names, level 0), hub and api (level 2, beside engine), re-exported
    # lazily by __init__.
    "zoo": {"errors", "config"},
    "hub": {"errors", "config", "layers", "infra", "tokenizer", "gpt", "builders", "zoo"},
    "api": {"errors", "config", "layers", "infra", "data", "eval", "tokenizer", "gpt", "builders", "engine", "hub",
            "zoo"},
    "__init__": {"zoo", "api", "hub"},
}
for _floor in ("builders", "engine", "stages", "bench"):
    ALLOWED[_floor] |= {"zoo"}
ALLOWED["stages"] |= {"api", "hub"}
ALLOWED["bench"] |= {"api", "hub"}


def gigatok_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `gigatok...` import in a file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"gigatok.{a.name}" for a in node.names] if node.module == "gigatok" else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.startswith("gigatok.")]
    return found


def floor(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_floors(path: Path) -> None:
    own = floor(path)
    assert own in ALLOWED, f"{path}: a new top-level module; give it a floor in ALLOWED"
    for line, module in gigatok_imports(path):
        target = module.split(".")[1]
        if target == own:
            continue
        assert target in ALLOWED[own], f"{path}:{line} ({own}) imports {module}: {target} is not below {own}"
        assert not module.startswith("gigatok.stages."), f"{path}:{line} imports the stage {module}"


def test_stages_do_not_import_each_other_and_engines_hold_no_entry_point() -> None:
    for path in (PACKAGE / "stages").glob("*.py"):
        assert not [m for _, m in gigatok_imports(path) if m.startswith("gigatok.stages.")], path
    for folder in ("engine", "builders.py", "infra", "tokenizer", "gpt", "layers", "data", "eval", "config"):
        for path in [PACKAGE / folder] if folder.endswith(".py") else (PACKAGE / folder).rglob("*.py"):
            # adm_tf_evaluator.py: a standalone script for the separate TensorFlow environment; launch.py: the torchrun
            # wrapper of scripts/*.sh (`python -m gigatok.infra.launch`), a launcher, not a stage.
            if path.name in ("adm_tf_evaluator.py", "launch.py"):
                continue
            assert 'if __name__ == "__main__"' not in path.read_text(), f"{path} is an entry point outside stages/"


def test_config_and_errors_need_no_torch() -> None:
    for path in [*(PACKAGE / "config").glob("*.py"), PACKAGE / "errors.py"]:
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path


def test_model_files_hold_architecture_only() -> None:
    """No data parallelism, memory-format switching, checkpoint files or training machinery in the model code."""
    for path in [*(PACKAGE / "tokenizer").glob("*.py"), PACKAGE / "gpt" / "model.py", PACKAGE / "gpt" / "config.py",
                 *(PACKAGE / "layers").glob("*.py")]:
        text = path.read_text()
        for marker in ("fully_shard", "DistributedDataParallel", "get_fsdp_wrap_module_list", "set_cnn_channels_last",
                       "torch.compile(", "gigatok.infra"):
            assert marker not in text, f"{path} mentions {marker}"


def test_one_atomic_writer_one_user_error_one_grad_sync_one_unwrap() -> None:
    texts = {path: path.read_text() for path in FILES if path.name != "adm_tf_evaluator.py"}
    with_replace = [p for p, t in texts.items() if "os.replace(" in t]
    assert {p.name for p in with_replace} <= {"io.py", "demo_data.py"}, with_replace  # demo_data: folder renames
    for definition, home in (("def atomic_write(", "io.py"), ("def grad_sync(", "parallel.py"),
                             ("def unwrap(", "parallel.py"), ("class UserError(", "errors.py")):
        owners = [p.name for p, t in texts.items() if definition in t]
        assert owners == [home], (definition, owners)


def test_every_error_class_is_a_user_error() -> None:
    """A user mistake is one class of exception, handled once (infra.cli.run_stage); the only other error class is
    the demo's internal fallback signal."""
    import importlib
    import inspect

    from gigatok.errors import UserError

    others = []
    for path in FILES:
        if path.name in ("adm_tf_evaluator.py", "__main__.py"):
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == name and not issubclass(cls, UserError):
                others.append(f"{name}.{cls_name}")
    assert others == ["gigatok.infra.warm_start.WarmStartError"], others
