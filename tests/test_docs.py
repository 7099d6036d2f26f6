"""The README and docs/*.md: the README stays short and links every page, every relative link and anchor resolves, the
model-zoo table is the registry's, and every Python block runs.

Python blocks run in a fresh folder holding `photo.jpg` (a photo of tests/gt_qualitative) with tiny stand-ins for
what cannot be had here, so the blocks' own code paths run unchanged:
- the released checkpoints (hundreds of MB to 12 GB, Google Drive): every registry entry is pointed at a tiny random
  model of the same family (the `VQ_debug` tokenizer, the `debug` GPT), and the file it names is put in the torch-hub
  cache of a temporary TORCH_HOME with downloads off, where the loaders look for released files;
- official checkpoint files a block names by path (`VQ_SS256_e100.pt`): the same tiny files, in the block's folder;
- official config paths (`configs/vq/VQ_SS256.yaml`): the tiny config `configs/vq/VQ_debug.yaml`.
After a block runs, every image file it saved must exist and decode.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from gigatok import zoo
from gigatok.builders import build_gpt, build_tokenizer
from gigatok.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
TINY_CONFIG = ROOT / "configs" / "vq" / "VQ_debug.yaml"
PHOTO = ROOT / "tests" / "gt_qualitative" / "chelsea.jpg"
MAX_README_LINES = 350


def strip_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links inside them are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL), re.M)
    return {slug(h) for h in headings}


def links(path: Path) -> list[str]:
    """Targets of the page's markdown links and images, web addresses excluded."""
    found = re.findall(r"\]\(([^)\s]+)\)", strip_code(path.read_text()))
    return [t for t in found if not re.match(r"[a-z]+://|mailto:", t)]


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{path.name}: {target}: no heading '#{anchor}' in {dest.name}")
    return problems


def test_readme_is_short_and_links_every_docs_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move material to docs/"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
    assert len(PAGES) >= 6, "docs/ should hold the moved material"


def test_every_relative_link_and_anchor_resolves():
    problems = [problem for page in PAGES for problem in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_link_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n## The CPU demo: 2 cores\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-cpu-demo-2-cores) [x](c.md) [y](b.md#nope) `[z](c.md)` [w](https://e.org/x)\n"
                    "```\n[v](c.md)\n```\n")
    assert broken_links(page) == ["a.md: c.md: no such file", "a.md: b.md#nope: no heading '#nope' in b.md"]


def zoo_rows(page: Path = README, heading: str = "## Model zoo") -> dict[str, list[str]]:
    """A model-zoo table (the first table rows under `heading` up to the next section): registry name -> cells."""
    text = page.read_text()
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| `")]
    return {row[0].strip("`"): row for row in rows}


@pytest.mark.parametrize("repository, page, heading", [
    ("GigaTok", README, "## Model zoo"),
    ("LlamaGen", ROOT / "docs" / "models.md", "**LlamaGen's VQ-16 and VQ-8.**"),
])
def test_model_zoo_table_is_the_registry(repository, page, heading):
    rows = zoo_rows(page, heading)
    released = zoo.list_pretrained(repository=repository)
    assert len(released) == {"GigaTok": 13, "LlamaGen": 9}[repository]
    assert list(rows) == [p.name for p in released]  # the same names, in the same order
    for p in released:
        row = " | ".join(rows[p.name])
        assert f"[{p.filename}]({p.url}" in row, (p.name, p.url)
        assert p.params in row and f"{p.config}.yaml" in row
        numbers = [p.rfid, p.lpips] if p.kind == "tokenizer" else [p.gfid, p.lin_probe_acc]
        assert all(f"{n:g}" in row for n in numbers if n is not None), (p.name, numbers, row)
        if p.kind == "gpt":
            assert f"{p.gpt_model}" in row and f"`{p.tokenizer}`" in row


def python_blocks() -> list:
    params = []
    for page in PAGES:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)):
            params.append(pytest.param(block, id=f"{page.relative_to(ROOT)}[{i}]"))
    return params


def test_readme_has_a_short_quickstart():
    text = README.read_text()
    quickstart = re.search(r"## Quickstart\n+```python\n(.*?)```", text, flags=re.DOTALL)
    assert quickstart, "README.md needs a '## Quickstart' section that starts with a Python block"
    lines = [line for line in quickstart.group(1).splitlines() if line.strip()]
    assert len(lines) <= 10, f"the quickstart has {len(lines)} lines"
    calls = ("load_tokenizer(", "preprocess(", "encode_to_codes(", "decode_code(", ".save(", "load_gpt(", "sample(")
    for call in calls:
        assert call in quickstart.group(1), call


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny random tokenizer and GPT checkpoint, in the official file layout (`{"model": state_dict}`)."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(TINY_CONFIG)
    args = load_config(TINY_CONFIG).model.init_args
    gpt = build_gpt("debug", vocab_size=args.codebook_size, block_size=args.num_latent_tokens, num_classes=1000)
    files = {"tokenizer": folder / "tokenizer.pt", "gpt": folder / "gpt.pt"}
    torch.save({"model": tokenizer.state_dict()}, files["tokenizer"])
    torch.save({"model": gpt.state_dict()}, files["gpt"])
    return files


@pytest.fixture
def stand_ins(tmp_path, monkeypatch, tiny_files):
    """A working folder with `photo.jpg`, and the released checkpoints replaced by the tiny ones (module docstring)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(PHOTO, work / "photo.jpg")
    torch_home = tmp_path / "torch_home"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("GIGATOK_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for entry in zoo.list_pretrained():
        tiny = dataclasses.replace(entry, config=TINY_CONFIG.stem, gpt_model="debug" if entry.kind == "gpt" else None,
                                   gpt_2d=False, image_size=load_config(TINY_CONFIG).model.init_args.image_size)
        monkeypatch.setitem(zoo.PRETRAINED, entry.name, tiny)
        shutil.copy(tiny_files[entry.kind], torch_home / "hub" / "checkpoints" / entry.filename)
    monkeypatch.chdir(work)
    return work


def stand_in_source(block: str, work: Path, tiny_files: dict[str, Path]) -> str:
    """The block with official config paths pointing at the tiny config; official files it names are put in `work`."""
    block = re.sub(r"configs/vq/VQ_(SS|SB|BL|XLXXL)256\w*\.yaml", str(TINY_CONFIG), block)
    for name in re.findall(r"[\"']([\w./-]+\.pt)[\"']", block):
        entry = zoo.find_pretrained(name)
        assert entry is not None, f"{name}: not a released file; give the block a stand-in"
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_files[entry.kind], work / name)
    return block


@pytest.mark.parametrize("block", python_blocks())
def test_python_block_runs(block, stand_ins, tiny_files):
    source = stand_in_source(block, stand_ins, tiny_files)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(source, "<docs block>", "exec"), namespace)
    # Pictures the block saved exist, decode, and have the side of the tokenizer the block made.
    sides = {v.image_size for v in namespace.values() if isinstance(v, torch.nn.Module) and hasattr(v, "image_size")}
    for saved in re.findall(r"\.save\([\"']([^\"']+\.(?:png|jpg))[\"']\)", block):
        with Image.open(stand_ins / saved) as image:
            image.load()
            assert image.mode == "RGB" and image.size[0] == image.size[1] and sides <= {image.size[0]}, (saved, sides)


def test_every_python_block_is_collected():
    # The runner must see the README quickstart and the docs' blocks (a renamed fence would drop them silently).
    ids = [p.id for p in python_blocks()]
    assert "README.md[0]" in ids and any(i.startswith("docs/") for i in ids), ids
