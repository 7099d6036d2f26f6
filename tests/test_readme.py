"""The commands of the README and of docs/*.md exist: every script they run is in the repo, every module they run is an
entry point, and every flag they pass is accepted (found in that entry point's --help, in the config schema for
`--section.key` overrides, or in the shell script itself). The README's first code block holds exactly the two
commands the issue asks for: install + CPU demo, and install + tests (`bash .ci/run`, what CI runs)."""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from gigatok.config import VQConfig, _all_keys
from gigatok.stages import STAGES, module_of

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The README first, then the pages it links to: their commands are checked the same way.
PAGES = {"README.md": README} | {f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
SEPARATORS = {"&&", "||", ";", "|"}
SUBCOMMAND_MODULES = {"gigatok.bench"}  # `python -m gigatok.bench tokenizer|gpt|eval ...`


def code_blocks(text: str) -> list[str]:
    """Bodies of the ```bash / ```sh fenced blocks, in order."""
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL)


def command_lines(block: str) -> list[str]:
    """Logical lines of a shell block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = []
    for line in joined.splitlines():
        line = line.split(" # ")[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def inline_commands(text: str) -> list[str]:
    """Inline `code spans` that are commands (`python -m gigatok...`, `bash scripts/...`)."""
    spans = re.findall(r"`([^`\n]+)`", text)
    return [s for s in spans if re.match(r"(\S*python3? -m gigatok[. ]|gigatok |bash (scripts/|env_install))", s)]


def split_commands(line: str) -> list[list[str]]:
    """shlex tokens of every simple command of a line (split on &&, ||, ;, |), brackets of optional args removed."""
    tokens = [t.strip("[]") for t in shlex.split(line, comments=False)]
    commands, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        elif token:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def target_of(command: list[str]) -> tuple[str, str, list[str]] | None:
    """('script', path, args) | ('module', name, args) | None for commands we don't check (export, cd, pytest...)."""
    while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):  # VAR=value prefixes
        command = command[1:]
    if not command:
        return None
    if command[0] == "bash" and len(command) > 1:
        return "script", command[1], command[2:]
    is_python = command[0].endswith(("python", "python3")) and command[1:2] == ["-m"]
    if is_python and len(command) > 2 and command[2].startswith("gigatok"):
        command = command[2:]
    elif not command[0].endswith("gigatok"):
        return None
    if command[0].endswith("gigatok"):  # `gigatok <stage> ...` / `python -m gigatok <stage> ...`
        if len(command) > 1 and (command[1].startswith("<") or command[1] in ("-h", "--help")):
            return None  # the generic form, or the list of stages
        if len(command) < 2 or command[1] not in STAGES:
            return "module", f"{command[0]} {command[1:2]}", []  # reported as a missing module
        return "module", module_of(command[1]), command[2:]
    return "module", command[0], command[1:]


def flags(args: list[str]) -> list[str]:
    """The long options of an argument list, without their `=value`."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


@cache
def help_text(module: str, subcommand: str | None) -> str:
    """The --help output of an entry point (in-process: each entry point's main(argv) parses argv)."""
    entry = importlib.import_module(module)
    argv = ([subcommand] if subcommand else []) + ["--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry.main(argv)
    return out.getvalue()


def script_module(path: Path) -> str | None:
    """The gigatok module a launcher runs (`run_stage gigatok.x` or `-m gigatok.x`), if any."""
    code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    match = re.search(r"(?:run_stage|-m)\s+\"?(gigatok\.[\w.]+)", code)
    return match.group(1) if match else None


def all_commands(pages: dict[str, str] = PAGES) -> list[tuple[str, list[str]]]:
    """(where, command) for every command of the pages' shell blocks and inline command spans."""
    found = []
    for page, text in pages.items():
        for block in code_blocks(text):
            for line in command_lines(block):
                found += [(f"{page}: {line}", c) for c in split_commands(line)]
        for span in inline_commands(text):
            found += [(f"{page}: {span}", c) for c in split_commands(span)]
    return found


CONFIG_KEYS = set(_all_keys(VQConfig))


def check_flags(where: str, module: str, args: list[str]) -> list[str]:
    """Problems with the flags `args` passed to `module` (empty when all are accepted)."""
    sub = args[0] if module in SUBCOMMAND_MODULES and args and not args[0].startswith("-") else None
    text = help_text(module, sub)
    problems = []
    for flag in flags(args):
        if "." in flag:  # --section.key=value config override
            if flag[2:] not in CONFIG_KEYS:
                problems.append(f"{where}: config override {flag} is not a config field")
        elif not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
            problems.append(f"{where}: {module} does not accept {flag}")
    return problems


def test_readme_starts_with_the_two_commands():
    first = command_lines(code_blocks(README)[0])
    assert len(first) == 2, first
    demo, tests = first
    assert "env_install.sh" in demo and "scripts/demo.sh" in demo
    assert tests == "bash .ci/run"
    # The README's first block comes before any other section.
    assert README.index("```") < README.index("\n## ")
    # The test command is CI's entry point, which installs, then runs pytest.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "env_install.sh" in ci and "-m pytest" in ci


def test_every_documented_command_exists_and_accepts_its_flags():
    commands = all_commands()
    checked, problems = 0, []
    for line, command in commands:
        target = target_of(command)
        if target is None:
            continue
        kind, name, args = target
        if kind == "script":
            path = ROOT / name.replace("${PROJECT_ROOT}/", "")
            if not path.is_file():
                problems.append(f"{line}: no such script {name}")
                continue
            module = script_module(path)
            if module is None:  # a plain shell script: flags must appear in it
                text = path.read_text()
                problems += [f"{line}: {name} has no {f}" for f in flags(args) if f not in text]
            else:
                problems += check_flags(line, module, args)
        else:
            if " " in name or importlib.util.find_spec(name) is None:
                problems.append(f"{line}: no module {name}")
                continue
            problems += check_flags(line, name, args)
        checked += 1
    assert checked >= 30, f"only {checked} commands found: is the parser still matching the README and docs/?"
    readme_checked = [line for line, c in commands if line.startswith("README.md:") and target_of(c)]
    assert len(readme_checked) >= 8, readme_checked
    assert not problems, "\n".join(problems)


def test_checker_catches_a_bad_flag_and_a_missing_script():
    # The checker itself must be able to fail.
    assert check_flags("x", "gigatok.stages.reconstruct", ["--no-such-flag"])
    assert check_flags("x", "gigatok.stages.reconstruct", ["--data-path", "d", "--trainer.lr=1"]) == []
    assert check_flags("x", "gigatok.stages.reconstruct", ["--trainer.no_such_field=1"])
    assert target_of(["gpus=1", "bash", "scripts/nope.sh"]) == ("script", "scripts/nope.sh", [])
    assert not (ROOT / "scripts/nope.sh").exists()
    assert target_of(["python", "-m", "gigatok", "train_vq", "--iterations", "1"]) == (
        "module", "gigatok.stages.train_vq", ["--iterations", "1"])
    assert target_of(["gigatok", "bench", "gpt"]) == ("module", "gigatok.bench", ["gpt"])
    assert " " in target_of(["gigatok", "no_such_stage"])[1]  # reported as a missing module
    # Commands are collected from every page, with the page named.
    found = all_commands({"docs/x.md": "```bash\nbash scripts/nope.sh --a 1 && python -m gigatok evaluate A B\n```\n"})
    assert [where.split(":")[0] for where, _ in found] == ["docs/x.md", "docs/x.md"]
    assert [target_of(c)[1] for _, c in found] == ["scripts/nope.sh", "gigatok.stages.evaluate"]
