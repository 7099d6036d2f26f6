"""Runs a pipeline's steps as entry-point processes, reusing the finished ones (used by the CPU demo).

A `Stage` is one step: an entry point run as `python -m <module> <flags>` (or an in-process function), the file
that proves it finished, the outputs to delete when it must start over, and the stages whose outputs it reads.
`StageRunner.run` keeps a record per stage in `<out>/stages/<name>.json`: a stage is reused when its artifact
exists and its record holds the same key (a hash of its command, its settings and the identities of the stages it
reads, with the output folder and the checkout as placeholders, so a moved output folder is reused); a stage whose
key changed starts over (its outputs are deleted first); an interrupted one is run again (the
entry points resume from their checkpoints). Each stage's output goes to the terminal and to
`<out>/logs/<name>.log`, and its record keeps its wall time and CPU time (user + system, of this process and of
its children, warm-started ones included).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gigatok.errors import UserError
from gigatok.infra import warm_start
from gigatok.infra.io import write_json_atomic

# The folder that holds the gigatok package: the stages' working directory and first PYTHONPATH entry, so that
# `python -m gigatok...` runs this checkout.
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: record / log name.
        title: one line for the terminal.
        artifact: returns the file that proves the stage finished, or None.
        outputs: deleted when the stage must start over.
        deps: stages whose outputs this one reads (their identities are part of the key).
        command: entry point module + arguments (run as `python -m ...`), or None for `func`.
        func: in-process body, for the stages that are not entry points.
        params: settings of an in-process stage (part of the key).
    """

    name: str
    title: str
    artifact: Callable[[], Path | None]
    outputs: list[Path]
    deps: list[str] = dataclasses.field(default_factory=list)
    command: list[str] | None = None
    func: Callable[[], None] | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def existing(path: Path) -> Path | None:
    """`path` if it exists, else None (a `Stage.artifact`)."""
    return path if path.exists() else None


def first_match(folder: Path, pattern: str) -> Path | None:
    """The first file under `folder` matching the glob `pattern` (sorted), or None."""
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return matches[0] if matches else None


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON content of `path`, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class StageRunner:
    """Runs stages in order, reusing finished ones, streaming each stage's output to the terminal and a log.

    Entry-point stages run as `python -m <command>`: in children of one warm interpreter that has imported torch
    and the stages' modules once (`gigatok.infra.warm_start`; saves 5-15 s per stage on 2 cores), or as plain
    subprocesses with `warm=False`, off Linux, or if the warm-start helper fails. Use as a context manager.

    Args:
        out: the records go to `out/stages/`, the logs to `out/logs/`.
        threads: OMP_NUM_THREADS / MKL_NUM_THREADS of the stages (None: torch's default).
        modules: the entry points the warm interpreter imports up front.
        root: the stages' working directory, put first on their PYTHONPATH.
        version: part of every key: a new version makes every stage start over.
        label: the terminal lines' prefix (`[label i/n] name: title`).
    """

    def __init__(self, out: Path, threads: int | None, warm: bool = True, modules: list[str] = (), *,
                 root: Path = CHECKOUT_ROOT, version: int = 1, label: str = "stage") -> None:
        self.out, self.records_dir, self.logs_dir = out, out / "stages", out / "logs"
        self.records: dict[str, dict[str, Any]] = {}
        self.threads, self.root, self.version, self.label = threads, root, version, label
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root),
                                                                               os.environ.get("PYTHONPATH")]))}
        if threads:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.launcher = (warm_start.WarmLauncher(modules, env=self.env, cwd=str(root))
                         if warm and warm_start.available() else None)

    def __enter__(self) -> StageRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.launcher is not None:
            self.launcher.close()

    def key(self, stage: Stage, portable: bool = True) -> str:
        """The stage's identity: its command, settings and the stamps of the stages it reads. `portable`: with the
        output folder and the checkout written as placeholders, so that a moved or copied output folder (or
        checkout) keeps every key; False gives the keys of records written before placeholders (still accepted)."""
        deps = {d: self.records[d]["stamp"] for d in stage.deps}
        text = json.dumps({"v": self.version, "command": stage.command, "params": stage.params, "deps": deps},
                          sort_keys=True, default=str)
        if portable:  # the output folder first: it usually lies inside the checkout (the stages' paths are absolute)
            for path, name in ((self.out.resolve(), "<out>"), (self.root.resolve(), "<root>")):
                text = text.replace(str(path), name)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run(self, stage: Stage, index: int, total: int) -> dict[str, Any]:
        """Run (or reuse) one stage; returns its record."""
        record_path = self.records_dir / f"{stage.name}.json"
        key, old = self.key(stage), read_json(record_path)
        header = f"[{self.label} {index}/{total}] {stage.name}: {stage.title}"
        artifact = stage.artifact()
        if old and old.get("key") != key and old.get("key") == self.key(stage, portable=False):
            old = {**old, "key": key}  # a record from before the portable keys: the same stage, its key upgraded
            write_json_atomic(record_path, old)
        if old and old.get("key") == key and old.get("status") == "done" and artifact is not None:
            now = json.loads(json.dumps({"command": stage.command, "params": stage.params}, default=str))
            if (old.get("command"), old.get("params")) != (now["command"], now["params"]):  # a moved folder: the
                old = {**old, **now}  # record names where the stage's files are now
                write_json_atomic(record_path, old)
            print(f"{header} -- reused (done in an earlier run, {old['wall_s']:.1f} s)", flush=True)
            self.records[stage.name] = {**old, "reused": True}
            return self.records[stage.name]
        if old and old.get("key") != key:  # other settings or inputs: start this stage over
            for path in stage.outputs:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        record = {"key": key, "status": "running", "command": stage.command, "params": stage.params}
        write_json_atomic(record_path, record)
        print(f"{header}\n  " + (" ".join(["python", "-m", *stage.command]) if stage.command else "(in-process)"),
              flush=True)
        wall, self_cpu, child_cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
        log_path = self.logs_dir / f"{stage.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        warm_cpu = 0.0
        if stage.command is not None:
            warm_cpu = self._command(stage, log_path)
        else:
            stage.func()
        wall = time.perf_counter() - wall
        cpu = _cpu(resource.RUSAGE_SELF) - self_cpu + _cpu(resource.RUSAGE_CHILDREN) - child_cpu + warm_cpu
        if stage.artifact() is None:
            raise UserError(f"stage '{stage.name}' finished without producing its output; see {log_path}")
        record.update(status="done", stamp=time.time_ns(), wall_s=wall, cpu_s=cpu, reused=False)
        write_json_atomic(record_path, record)
        print(f"  done in {wall:.1f} s (CPU {cpu:.1f} s)", flush=True)
        self.records[stage.name] = record
        return record

    def _command(self, stage: Stage, log_path: Path) -> float:
        """`python -m <command>`; its merged stdout/stderr (tqdm bars included) is copied to ours and the log.
        Returns the CPU seconds of a warm-started child (a subprocess's are in RUSAGE_CHILDREN)."""
        with open(log_path, "wb") as log:
            log.write(("$ python -m " + " ".join(stage.command) + "\n").encode())

            def sink(chunk: bytes) -> None:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                log.write(chunk)

            code, cpu = None, 0.0
            if self.launcher is not None:
                try:
                    code, cpu = self.launcher.run(stage.command[0], stage.command[1:], self.env, str(self.root),
                                                  sink, self.threads)
                except warm_start.WarmStartError as err:  # rerun as a subprocess (the entry points resume)
                    print(f"  [{self.label}] {err}; running the stage as a plain subprocess", file=sys.stderr,
                          flush=True)
                    self.launcher.close()
                    self.launcher = None
            if code is None:
                code = self._subprocess(stage, sink)
        if code in (130, -signal.SIGINT):  # Ctrl-C reached the stage first: report it as the interruption it is
            raise KeyboardInterrupt
        if code != 0:
            raise UserError(f"stage '{stage.name}' failed (exit code {code}); its output is in {log_path}")
        return cpu

    def _subprocess(self, stage: Stage, sink: Callable[[bytes], None]) -> int:
        process = subprocess.Popen([sys.executable, "-m", *stage.command], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        try:
            while chunk := os.read(process.stdout.fileno(), 4096):
                sink(chunk)
            return process.wait()
        except BaseException:  # Ctrl-C: stop the child too; its checkpoints let a re-run resume
            process.kill()
            process.wait()
            raise
