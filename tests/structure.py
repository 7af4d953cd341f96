"""The import graph of the ``securefvpa`` package and its layer rules (used by tests/test_layers.py
and benchmarks/structure.py). Static: every ``import`` statement counts, at module level, inside
functions and under ``TYPE_CHECKING`` alike.

Layers, bottom to top (README "Architecture"); a module may import its own layer and below:

    0  errors, config, fsutil, rundir, config_reference   the ground floor
    1  privacy/, secagg/                              pure cores (privacy never imports secagg)
    2  data/
    3  models/
    4  train/
    5  rounds/                                        the flwr-free round engine
    6  audit/
    7  fl/                                            Flower adapters
    8  run, sweep, compare
    9  cli, api, __init__, __main__                   users
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "securefvpa"

LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 0,
    "fsutil": 0,
    "rundir": 0,
    "config_reference": 0,
    "_version": 0,
    "privacy": 1,
    "secagg": 1,
    "data": 2,
    "models": 3,
    "train": 4,
    "rounds": 5,
    "audit": 6,
    "fl": 7,
    "run": 8,
    "sweep": 8,
    "compare": 8,
    "cli": 9,
    "api": 9,
    "__init__": 9,
    "__main__": 9,
}
PURE_PACKAGES = ("privacy", "secagg")
PURE_MODULES = ("securefvpa.audit.stats",)
HEAVY = ("torch", "flwr", "opacus", "transformers", "ray")


@dataclass(frozen=True)
class Import:
    src: str  # importing module, dotted
    dst: str  # imported module (dotted; securefvpa.* resolved to the module file)
    line: int
    function_level: bool


def module_name(path: Path) -> str:
    """Dotted name; a package's ``__init__`` is the package itself (``securefvpa`` included)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The securefvpa module ``name`` refers to (a package, a module, or a module's member)."""
    while name and name not in known:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


@functools.cache
def imports() -> list[Import]:
    known = modules()
    out: list[Import] = []
    for src, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        func_lines: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        func_lines.add(inner.lineno)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # the package uses absolute imports only (checked by a test)
                    names = [f"<relative import in {src}>"]
                else:
                    mod = node.module or ""
                    names = (
                        [f"{mod}.{a.name}" for a in node.names]
                        if mod.startswith("securefvpa")
                        else [mod]
                    )
            for n in names:
                dst = _resolve(n, known) if n.startswith("securefvpa") else n
                if dst:
                    out.append(Import(src, dst, node.lineno, node.lineno in func_lines))
    return out


def layer_of(module: str) -> int:
    return LAYERS[group_of(module)]


def group_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def internal_edges() -> list[Import]:
    return [i for i in imports() if i.dst.startswith("securefvpa") and i.dst != i.src]


def upward_imports() -> list[Import]:
    return [i for i in internal_edges() if layer_of(i.dst) > layer_of(i.src)]


def cross_pure_imports() -> list[Import]:
    """privacy/ (accounting) never imports secagg/ (protocol); the distributed-DP encoding in
    secagg/ may use privacy/'s bounds, so that the encoder enforces what the accountant assumes."""
    return [
        i for i in internal_edges() if group_of(i.src) == "privacy" and group_of(i.dst) == "secagg"
    ]


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for e in internal_edges():
        graph[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def closure(module: str) -> set[str]:
    """Every module ``module`` imports, transitively (securefvpa modules and third-party roots)."""
    edges: dict[str, set[str]] = {}
    for e in imports():
        edges.setdefault(e.src, set()).add(e.dst)
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for d in edges.get(m, ()):
            if d not in seen:
                seen.add(d)
                if d.startswith("securefvpa"):
                    todo.append(d)
    return seen


def heavy_imports_of(module: str) -> list[str]:
    return sorted(
        d for d in closure(module) if not d.startswith("securefvpa") and d.split(".")[0] in HEAVY
    )


def importers_of(root: str) -> list[str]:
    """securefvpa modules with a direct import of third-party package ``root``."""
    return sorted({i.src for i in imports() if i.dst.split(".")[0] == root})


def largest() -> tuple[tuple[str, int], tuple[str, int]]:
    """(largest module, lines) and (largest function, lines)."""
    mods = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    best_f = ("", 0)
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > best_f[1]:
                    best_f = (f"{m}.{node.name}", n)
    top = max(mods.items(), key=lambda kv: kv[1])
    return top, best_f
