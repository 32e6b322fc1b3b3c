"""What every benchmark shares: timing, peak memory, the machine, params overrides, and its page.

Peak memory is the peak resident set of a process: of this one (:func:`peak_rss_mib`, ``ru_maxrss``) or
of a child (:func:`run_measured`, its own ``VmHWM``: a child's ``ru_maxrss`` starts at its parent's size).
A measurement whose peak should be its own runs in a child process.

Each script ends with :func:`write_page`: its table under ``docs/benchmarks/<script>.md`` with
the command, the machine and the date, so no figure there is typed by hand.
``$HLM12ERC_BENCH_PAGES`` sends the pages to another folder (tests, trial runs).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "docs" / "benchmarks"
MELD_TEXT = REPO.parent / "shared" / "meld-text"  # MELD's text CSVs, when a shared folder sits beside the repo
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DVC_NO_ANALYTICS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
for _key, _value in CHILD_ENV.items():  # nothing a benchmark runs may download
    os.environ.setdefault(_key, _value)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Timer:
    seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Timer]:
    """``with timed() as t: ...`` then ``t.seconds`` (wall clock, ``perf_counter``)."""
    timer, start = Timer(), time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - start


def seconds_of(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``."""
    with timed() as t:
        fn()
    return t.seconds


def cpu_seconds() -> float:
    """User + system CPU time of this process: robust to other jobs sharing the cores, unlike wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _mib(maxrss: int) -> float:
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


def peak_rss_mib() -> float:
    """This process's peak resident set so far (``ru_maxrss``), imports included."""
    return _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _high_water_kib(pid: int) -> int:
    """``VmHWM`` of a live process: the peak of its own address space (unlike ``ru_maxrss``, which a child
    inherits from the parent it was forked from, so a big parent inflates every child's figure)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def run_measured(command: Sequence[str], env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``command``; its result (stdout/stderr text), wall seconds and peak RSS in MiB (the child's
    ``VmHWM``, read every 20 ms while it runs; ``ru_maxrss`` where /proc has none)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # no pipe to fill up
        start = time.perf_counter()
        proc = subprocess.Popen(list(command), cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                                stdout=out, stderr=err)
        peak_kib = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, _high_water_kib(proc.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(list(command), proc.returncode, out.read(), err.read())
    return result, seconds, peak_kib / 1024.0 if peak_kib else _mib(usage.ru_maxrss)


def machine() -> str:
    """Cores, CPU model and vector ISA, load average, torch version and whether the CPU has bf16 matmul units."""
    import torch

    from hlm12erc.runtime import cpu_has_bf16, machine_kind

    load = os.getloadavg()
    busy = " (busier than its cores: other jobs slowed every time here)" if load[1] > (os.cpu_count() or 1) else ""
    return (f"{os.cpu_count()} cores, {machine_kind()}, load average {'/'.join(f'{v:.2f}' for v in load)} "
            f"(1/5/15 min){busy}, torch {torch.__version__}, bf16 matmul units: {'yes' if cpu_has_bf16() else 'no'}")


def repo_relative(arg: str) -> str:
    """``arg`` relative to the repo when it is an absolute path in the repo's parent folder (pages hold no paths of
    this checkout)."""
    path = Path(os.path.abspath(arg))  # abspath, not resolve: a linked ../shared stays ../shared
    if Path(arg).is_absolute() and path.is_relative_to(REPO.parent):
        return os.path.relpath(path, REPO)
    return arg


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as a shell line, paths inside the repo made relative to it."""
    return shlex.join(["python", *(repo_relative(a) for a in argv)])


def write_page(script: str, title: str, table_md: str, notes: str = "", folder: Path | None = None,
               argv: Sequence[str] | None = None, smoke: bool = False) -> Path | None:
    """Print ``table_md`` and write it to ``<folder>/<script stem>.md`` (default ``$HLM12ERC_BENCH_PAGES`` or
    docs/benchmarks) with the command that made it, the machine and the UTC date. A ``smoke`` run (``--quick``)
    measures nothing worth keeping: it writes a page only where ``folder`` or the variable says."""
    print("\n" + table_md.strip() + "\n", flush=True)
    folder = folder or os.environ.get("HLM12ERC_BENCH_PAGES") or (None if smoke else PAGES)
    if folder is None:
        log("a --quick run: docs/benchmarks left as it is")
        return None
    stem = Path(script).stem
    page = Path(folder) / f"{stem}.md"
    page.parent.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.UTC).date().isoformat()
    parts = [f"# {title}", f"Written by `benchmarks/{stem}.py`; rerun the command to refresh it.", table_md.strip()]
    parts += [notes.strip()] if notes.strip() else []
    parts += [f"Command: `{command_line(sys.argv if argv is None else argv)}`  \n"
              f"Machine: {machine()}  \nDate: {date} (UTC)"]
    page.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    log(f"wrote {page}")
    return page


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column (l or r, default: first l, the rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(map(str, header)) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


# ----------------------------------------------------------------------------- params


def merged(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``, mappings key by key."""
    return {**base, **{k: merged(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in over.items()}}


def params_with(overrides: dict | None = None, path: Path = REPO / "params.yaml") -> Any:
    """The repo's params.yaml with ``overrides`` (a nested mapping) merged in, validated as a stage would."""
    from hlm12erc.config import params_from_dict

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return params_from_dict(merged(raw, overrides or {}))


def fields_of(section: Any) -> dict[str, Any]:
    """A params section (a pydantic dataclass) as a plain mapping."""
    return dataclasses.asdict(section)
