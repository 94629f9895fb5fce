"""The package's shape, read statically (ast) from hrm/: a layered import graph.

- No import cycles among hrm's modules (module-level and function-level imports alike).
- Command-line modules (``ENTRY_POINTS``, plus ``hrm.cli``, their shared plumbing) import the library; no
  library module imports them.
- No function-level import of an hrm module: such imports hid the cycles. Function-level imports are kept
  only for optional or heavy dependencies, and each says why in a comment on its line or the line above.

``python tests/test_structure.py`` prints the figures: cycles, function-level imports, largest modules.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hrm"

# The modules a user runs (`python -m hrm.X`, the console scripts in pyproject.toml) and their shared
# argparse plumbing. Nothing else may import them.
ENTRY_POINTS = {
    "hrm.train",
    "hrm.info",
    "hrm.eval",
    "hrm.memtest",
    "hrm.sample",
    "hrm.serve",
    "hrm.export",
    "hrm.convert",
    "hrm.doctor",
    "hrm.runs",
    "hrm.lm_eval",
}
COMMAND_LINE = ENTRY_POINTS | {"hrm.cli"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the hrm module imported ("" for a third-party one)
    name: str  # the module as written
    line: int
    in_function: bool
    commented: bool  # says why it is where it is (see imports_of)


# Folders at the top of the checkout that install inside hrm (pyproject.toml's package-dir).
INSTALLED_AS = {ROOT / "kernels": "hrm.kernels"}


def module_name(path: Path) -> str:
    for folder, package in INSTALLED_AS.items():
        if path.is_relative_to(folder):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            break
    else:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    files = [*PACKAGE.rglob("*.py"), *(p for folder in INSTALLED_AS for p in folder.rglob("*.py"))]
    return {module_name(p): p for p in sorted(files)}


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The hrm module ``name`` (``a.b.c``, maybe ``module.attribute``) loads last: its longest known prefix."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return ""


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _guards_import_error(node: ast.Try) -> bool:
    names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return bool(names & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"})


def imports_of(source: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import statement's names; an import says why it is deferred with a comment on its line or the line
    above, by its ``except ImportError`` (an optional package with its install hint), or by following such an
    import directly (a block of them)."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    out: list[Import] = []

    def has_comment(node) -> bool:
        here = lines[node.lineno - 1]
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        return "#" in here or above.startswith("#")

    def visit(node, in_function: bool, guarded: bool) -> None:
        previous = None  # (end line, explained) of the import statement just before, in this block
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, source, path.name == "__init__.py")
                names = [f"{base}.{alias.name}" for alias in child.names]
            else:
                previous = None
                visit(child, inside, isinstance(child, ast.Try) and _guards_import_error(child))
                continue
            explained = guarded or has_comment(child) or (previous is not None and previous == (child.lineno - 1, True))
            previous = (child.end_lineno, explained)
            for name in names:
                target = _resolve(name, known) if name.startswith("hrm") else ""
                out.append(Import(source, target, name, child.lineno, in_function, explained))

    visit(tree, False, False)
    return out


def all_imports() -> list[Import]:
    known = modules()
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def graph(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in imports:
        if imp.target and imp.target != imp.source:
            edges[imp.source].add(imp.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted: every import cycle
    lies inside one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_entry_point_set_matches_the_commands():
    """ENTRY_POINTS names exactly the modules a user runs: those with a ``__main__`` block."""
    runnable = {name for name, path in modules().items() if 'if __name__ == "__main__":' in path.read_text()}
    assert runnable == ENTRY_POINTS


def test_no_import_cycles():
    assert cycles(graph(all_imports())) == []


def test_library_never_imports_the_command_line():
    wrong = [
        f"{imp.source} imports {imp.target} (line {imp.line})"
        for imp in all_imports()
        if imp.target in COMMAND_LINE and imp.source not in COMMAND_LINE
    ]
    assert wrong == []


def test_no_function_level_import_of_hrm():
    """Except a kernel module loaded on first use because it pulls in a heavy backend (the Pallas scan imports
    jax.experimental.pallas), with its reason beside it."""
    wrong = [
        f"{imp.source}:{imp.line} {imp.name}"
        for imp in all_imports()
        if imp.in_function and imp.target and not (imp.target.startswith("hrm.kernels.") and imp.commented)
    ]
    assert wrong == []


def test_function_level_imports_say_why():
    """A deferred third-party import is for an optional dependency or a heavy one kept off a command's startup;
    each says which, in a comment."""
    wrong = [
        f"{imp.source}:{imp.line} {imp.name}"
        for imp in all_imports()
        if imp.in_function and not imp.target and not imp.commented
    ]
    assert wrong == []


def report() -> str:
    imports = all_imports()
    module_level = [imp for imp in imports if not imp.in_function]
    deferred = [imp for imp in imports if imp.in_function]
    statements = {(imp.source, imp.line) for imp in deferred}
    internal = {(imp.source, imp.line) for imp in deferred if imp.target}
    backwards = [
        f"{i.source}->{i.target}" for i in imports if i.target in COMMAND_LINE and i.source not in COMMAND_LINE
    ]
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in modules().items()), reverse=True)
    lines = [
        f"import cycles (strongly connected components), module-level imports only: {cycles(graph(module_level))}",
        f"import cycles, all imports: {cycles(graph(imports))}",
        f"function-level import statements: {len(statements)}, of hrm modules: {len(internal)}, "
        f"without a stated reason: {len({(i.source, i.line) for i in deferred if not i.commented})}",
        f"library modules importing the command line: {sorted(set(backwards))}",
        "largest modules: " + ", ".join(f"{n} {c}" for c, n in sizes[:8]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
