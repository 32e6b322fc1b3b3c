"""dvc.yaml's code dependencies are exactly the import graph of each stage's script.

For every stage, the script its ``cmd`` runs (``python pipeline/X.py``) is AST-walked with every
``hlm12erc`` module it imports, transitively, function-level imports included (a lazy import
still runs in the stage). The stage's ``deps`` under ``pipeline/`` and ``src/`` must be exactly
those files: a missing one leaves stale outputs when it changes, an extra one re-runs the stage
for nothing. A folder is accepted only when every ``.py`` file in it is imported. Package
``__init__.py`` files that hold nothing but a docstring may be listed or not. Imports inside a
package's PEP 562 ``__getattr__`` are followed only for names actually taken from that package.

``python tests/test_dvc_deps.py`` prints the derived deps of every stage, ready for dvc.yaml.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "hlm12erc"


def _module_file(name: str) -> Path | None:
    """``hlm12erc.a.b`` -> its file under src/ (a package's ``__init__.py``), or None."""
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b`` (packages whose ``__init__`` runs first)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _lazy_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a module-level ``def __getattr__`` (PEP 562 lazy attributes)."""
    lazy: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            lazy.update(id(n) for n in ast.walk(node))
    return lazy


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, lazy: bool = False) -> set[tuple[str, str | None]]:
    """``(module, name)`` pairs imported by ``path``: name is the ``from`` name or None.

    ``lazy=True`` gives only the imports inside ``__getattr__``; else every other import.
    """
    tree = _parse(path)
    inside = _lazy_nodes(tree)
    here = _module_name(path) if path.is_relative_to(SRC) else ""
    package = here if _is_package(path) else here.rpartition(".")[0]
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(tree):
        if (id(node) in inside) != lazy:
            continue
        if isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.update((module, alias.name) for alias in node.names)
    return {(m, n) for m, n in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def import_closure(script: Path) -> set[Path]:
    """Every file of ``hlm12erc`` that running ``script`` may import, plus ``script``."""
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        path = todo.pop()
        for module, name in _imports(path):
            targets = [*_parents(module), module]
            if name is not None:
                sub = f"{module}.{name}"
                if _module_file(sub) is not None:
                    targets.append(sub)
                else:  # an attribute: a package __getattr__ may import it lazily
                    package = _module_file(module)
                    if package is not None and _is_package(package):
                        for lazy_module, lazy_name in _imports(package, lazy=True):
                            targets += [*_parents(lazy_module), lazy_module]
                            if lazy_name and _module_file(f"{lazy_module}.{lazy_name}"):
                                targets.append(f"{lazy_module}.{lazy_name}")
            for target in targets:
                file = _module_file(target)
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def _docstring_only(path: Path) -> bool:
    body = _parse(path).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _stage_scripts() -> dict[str, tuple[Path, list[str]]]:
    """``{stage: (script, deps)}`` from dvc.yaml (foreach stages once, by their ``do`` block)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        words = shlex.split(body["cmd"])
        script = next((w for w in words if w.startswith("pipeline/") and w.endswith(".py")), None)
        if script is None:
            continue
        out[name] = (ROOT / script, [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])])
    return out


def _code_deps(deps: list[str]) -> set[str]:
    return {d.rstrip("/") for d in deps if d.startswith(("src/", "pipeline/")) and "${" not in d}


def derived(script: Path) -> list[str]:
    """The deps a stage running ``script`` should list: the script, then its modules, sorted."""
    files = sorted(p for p in import_closure(script) if p != script and not (
        _is_package(p) and _docstring_only(p)))
    return [script.relative_to(ROOT).as_posix(), *(p.relative_to(ROOT).as_posix() for p in files)]


def _problems(stage: str, script: Path, deps: list[str]) -> list[str]:
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(script)}
    optional = {p.relative_to(ROOT).as_posix() for p in import_closure(script)
                if _is_package(p) and _docstring_only(p)}
    listed: set[str] = set()
    problems = []
    for dep in sorted(_code_deps(deps)):
        path = ROOT / dep
        if path.is_dir():
            files = {p.relative_to(ROOT).as_posix() for p in path.rglob("*.py")}
            unused = sorted(files - closure)
            if unused:
                problems.append(f"{stage}: folder {dep} has files the stage never imports: {unused}")
            listed |= files & closure
        elif dep not in closure:
            problems.append(f"{stage}: {dep} is listed but not imported by {script.name}")
        else:
            listed.add(dep)
    missing = sorted(closure - listed - optional)
    if missing:
        problems.append(f"{stage}: imported but not in deps: {missing}")
    return problems


def test_every_stage_depends_on_exactly_the_modules_it_imports() -> None:
    stages = _stage_scripts()
    assert {"download", "extract", "tables", "featurize", "train", "evaluate", "report"} <= set(stages)
    problems = [p for name, (script, deps) in stages.items() for p in _problems(name, script, deps)]
    assert not problems, "\n".join(problems) + "\n(run `python tests/test_dvc_deps.py` for the derived lists)"


def test_the_import_graph_follows_function_level_relative_and_lazy_imports(tmp_path, monkeypatch) -> None:
    """The walker itself, on a throwaway package: what counts as imported and what does not."""
    src = tmp_path / "src"
    pkg = src / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""doc only."""\n')
    (pkg / "sub" / "__init__.py").write_text(
        "def __getattr__(name):\n    from hlm12erc.sub import facade\n    return getattr(facade, name)\n")
    (pkg / "sub" / "facade.py").write_text("X = 1\n")
    (pkg / "sub" / "core.py").write_text("def f():\n    from . import helper\n")
    (pkg / "sub" / "helper.py").write_text("from ..other import thing\n")
    (pkg / "other.py").write_text("thing = 1\n")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "pipeline" / "stage.py"
    script.parent.mkdir()
    script.write_text("def main():\n    from hlm12erc.sub import core\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", src)
    _parse.cache_clear()
    try:
        names = {p.relative_to(src).as_posix() for p in import_closure(script) if p != script}
        assert names == {"hlm12erc/__init__.py", "hlm12erc/sub/__init__.py", "hlm12erc/sub/core.py",
                         "hlm12erc/sub/helper.py", "hlm12erc/other.py"}  # not facade.py, not unused.py
        script.write_text("from hlm12erc.sub import X\n")  # a lazy attribute: its module counts
        _parse.cache_clear()
        assert pkg / "sub" / "facade.py" in import_closure(script)
    finally:
        _parse.cache_clear()


def test_src_has_no_import_cycle() -> None:
    """Every import in src/ (function-level ones included) points one way: models/ never reaches training/."""
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        here = _module_name(path)
        targets = {f"{m}.{n}" if _module_file(f"{m}.{n}") else m for m, n in _imports(path) | _imports(path, True)}
        edges[here] = {t for t in targets if _module_file(t) is not None and t != here}
    cycles = []
    for start, targets in edges.items():
        seen, todo = set(), list(targets)
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(edges.get(module, ()))
        if start in seen:
            cycles.append(start)
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"
    assert not any(t.startswith("hlm12erc.training") for m, ts in edges.items() if m.startswith("hlm12erc.models")
                   for t in ts)


def test_report_lists_the_metrics_of_exactly_the_objectives_in_params() -> None:
    """The objective names live in params.yaml; the report stage's metrics deps must follow them."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    listed = [d for d in stage["deps"] if re.fullmatch(r"metrics/[^/]+\.json", d)]
    assert listed == [f"metrics/{name}.json" for name in params["objectives"]]
    assert "--objectives" not in stage["cmd"]  # report.py reads the names from params.yaml


def test_pages_lists_the_predictions_of_exactly_the_objectives_in_params() -> None:
    """The pages stage reads every objective's predictions (pages.py takes the names from params.yaml) and
    their scores from the report's table, not from each metrics JSON."""
    names = list(yaml.safe_load((ROOT / "params.yaml").read_text())["objectives"])
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pages"]["deps"]
    assert [d for d in deps if re.fullmatch(r"plots/[^/]+/predictions\.csv", d)] == \
        [f"plots/{name}/predictions.csv" for name in names]
    assert {"data/tables", "data/media", "metrics/objectives.csv"} <= set(deps)
    assert not [d for d in deps if re.fullmatch(r"metrics/[^/]+\.json", d)]


def test_folder_deps_hash_no_bytecode() -> None:
    """A folder dep (src/hlm12erc/features) would change its hash whenever Python writes __pycache__ into it,
    and every stage on it would look stale; .dvcignore leaves the bytecode out."""
    folders = [d for _, deps in _stage_scripts().values() for d in _code_deps(deps) if (ROOT / d).is_dir()]
    assert folders, "no folder deps: this test guards nothing"
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        for folder in folders:
            cache = ROOT / folder / "__pycache__" / "x.cpython-312.pyc"
            assert repo.dvcignore.is_ignored(repo.fs, str(cache)), f"{cache} is hashed into the dep {folder}"
            assert not repo.dvcignore.is_ignored(repo.fs, str(ROOT / folder / "__init__.py"))


def test_no_stage_script_shadows_an_installed_module() -> None:
    """``python pipeline/X.py`` puts pipeline/ first on sys.path, so a script named like an installed
    module (``tabulate.py`` hid the ``tabulate`` package that torch imports) breaks the stage's imports."""
    import importlib.util

    pipeline_dir = str(ROOT / "pipeline")
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in ("", ".", pipeline_dir, str(ROOT))]
    try:
        shadowing = sorted(s.stem for s in (ROOT / "pipeline").glob("*.py") if importlib.util.find_spec(s.stem))
    finally:
        sys.path[:] = saved
    assert shadowing == [], f"pipeline scripts named like installed modules: {shadowing}; rename them"


if __name__ == "__main__":
    for stage, (script, _deps) in _stage_scripts().items():
        print(f"{stage}:")
        for dep in derived(script):
            print(f"  - {dep}")
