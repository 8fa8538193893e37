"""The floor plan holds: no package of sss imports one above it, and packages import no loop.

The order (DESIGN notes, docs): data, models, distributed -> losses -> eval -> train -> editors ->
study -> cli. Every module under sss/ is read with ``ast``; every import, absolute or relative,
at the top or inside a function, counts.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple


SSS = Path(__file__).resolve().parents[1] / "sss"
# files: the crash-safe file helpers, progress: bars or log lines; ground level like data.
LEVELS = {"data": 0, "models": 0, "distributed": 0, "files": 0, "progress": 0, "version": 0, "stats": 1, "losses": 1,
          "eval": 2, "train": 3, "editors": 4, "study": 5, "cli": 6}
EXEMPT = {"__init__", "__main__"}  # sss/__init__.py (the public API) and sss/__main__.py (the entry point)


def package_of(module: Tuple[str, ...]) -> str:
    """``("sss", "editors", "mend", "editor")`` -> ``"editors"``; ``("sss", "models")`` -> ``"models"``."""
    return module[1]


def module_name(path: Path, root: Path = SSS) -> Tuple[str, ...]:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path, root: Path = SSS) -> Iterator[Tuple[Tuple[str, ...], int]]:
    """Every module ``path`` imports, as a tuple of names, with the line of the import."""
    here = module_name(path, root)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield tuple(alias.name.split(".")), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # "from . import x" in a package __init__ is relative to the package itself.
                base = here if is_package else here[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            else:
                base = ()
            target = base + (tuple(node.module.split(".")) if node.module else ())
            if node.module:
                yield target, node.lineno
            else:
                for alias in node.names:  # "from .. import distributed": each name may be a module
                    yield target + (alias.name,), node.lineno


def sss_modules(root: Path = SSS):
    return sorted(p for p in root.rglob("*.py") if ".ipynb_checkpoints" not in p.parts)


def package_imports(root: Path = SSS) -> Dict[str, Dict[str, list]]:
    """``{importer package: {imported package: ["file:line", ...]}}`` over all of sss."""
    graph: Dict[str, Dict[str, list]] = {}
    for path in sss_modules(root):
        name = module_name(path, root)
        if len(name) < 2 or (len(name) == 2 and name[1] in EXEMPT):
            continue
        source = package_of(name)
        for target, line in imported_modules(path, root):
            if target[0] != "sss" or len(target) < 2:
                continue
            imported = package_of(target)
            if imported != source:
                graph.setdefault(source, {}).setdefault(imported, []).append(f"{path.relative_to(root.parent)}:{line}")
    return graph


def test_every_package_has_a_level():
    packages = {module_name(p)[1] for p in sss_modules() if len(module_name(p)) >= 2} - EXEMPT
    assert packages <= set(LEVELS), f"packages without a place in the order: {sorted(packages - set(LEVELS))}"


def upward_imports(graph) -> list:
    return [f"{source} imports {target} at {', '.join(places)}"
            for source, targets in graph.items() for target, places in targets.items()
            if LEVELS[target] > LEVELS[source]]


def import_loops(graph) -> list:
    graph = {source: set(targets) for source, targets in graph.items()}
    loops = []

    def visit(node: str, path: list, done: Set[str]):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                loops.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt], done)
        done.add(node)

    done: Set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    return loops


def test_no_package_imports_one_above_it():
    upward = upward_imports(package_imports())
    assert not upward, "imports that point up the order:\n  " + "\n  ".join(upward)


def test_packages_import_no_loop():
    loops = import_loops(package_imports())
    assert not loops, "import loops between packages:\n  " + "\n  ".join(loops)


def test_the_walker_sees_relative_absolute_and_function_level_imports(tmp_path):
    """The check itself, on a made-up tree: an upward relative import inside a function is caught,
    and so is the loop it closes with an absolute import the other way."""
    fake = tmp_path / "sss"
    for package in ("eval", "cli", "data"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "eval" / "x.py").write_text("import os\n\ndef f():\n    from ..cli import main\n    from . import y\n")
    (fake / "cli" / "z.py").write_text("import sss.eval.x\nfrom .. import data\n")
    (fake / "data" / "__init__.py").write_text("from .requests import EditRequest\n")
    graph = package_imports(fake)
    assert graph == {"eval": {"cli": ["sss/eval/x.py:4"]}, "cli": {"eval": ["sss/cli/z.py:1"], "data": ["sss/cli/z.py:2"]}}
    assert upward_imports(graph) == ["eval imports cli at sss/eval/x.py:4"]
    assert import_loops(graph) == ["cli -> eval -> cli"]


EDITORS = SSS / "editors"


def editor_package_imports(root: Path = SSS) -> Dict[str, Set[str]]:
    """``{editor package: {other editor packages it imports}}``; ``core`` counts as a package."""
    found: Dict[str, Set[str]] = {}
    for path in sss_modules(root):
        name = module_name(path, root)
        if name[:2] != ("sss", "editors") or len(name) < 3:
            continue
        for target, _line in imported_modules(path, root):
            if target[:2] == ("sss", "editors") and len(target) >= 3 and target[2] != name[2]:
                found.setdefault(name[2], set()).add(target[2])
    return found


def test_editor_packages_import_the_core_and_no_other_editor():
    imports = editor_package_imports()
    assert "core" not in imports, f"the core imports editor packages: {sorted(imports['core'])}"
    wrong = {package: sorted(others - {"core"}) for package, others in imports.items() if others - {"core"}}
    assert not wrong, f"editor packages that import another editor's package: {wrong}"


def test_every_editor_is_a_package_and_none_lies_flat():
    flat = sorted(p.name for p in EDITORS.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules directly under sss/editors/ (each editor is a package, shared code is core/): {flat}"
    packages = {p.name for p in EDITORS.iterdir() if (p / "__init__.py").is_file()}
    assert {"core", "ftl", "mend", "serac"} <= packages


def test_no_module_of_sss_is_over_300_lines():
    long = {str(p.relative_to(SSS.parent)): n for p in sss_modules() if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines (split them by idea): {long}"


def test_editors_ask_regularizers_instead_of_inspecting_their_classes():
    import re

    pattern = re.compile(r"\.(penalty|token_mask|forward|loss_and_penalty)\s+is\s|__func__")
    found = [f"{p.relative_to(SSS.parent)}:{i}" for p in EDITORS.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"class checks of regularizers in sss/editors (use regularizer.shortcuts()): {found}"


def test_the_editor_package_check_sees_an_import_of_another_editor(tmp_path):
    fake = tmp_path / "sss" / "editors"
    for package in ("core", "alpha", "beta"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "alpha" / "x.py").write_text("from ..core import Editor\nfrom ..beta import thing\n")
    (fake / "core" / "y.py").write_text("def f():\n    from sss.editors.alpha import x\n")
    assert editor_package_imports(tmp_path / "sss") == {"alpha": {"core", "beta"}, "core": {"alpha"}}
