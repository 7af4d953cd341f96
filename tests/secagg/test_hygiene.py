"""Source-level rules of the secagg core: no torch/flwr, no non-CSPRNG randomness, no assert."""

from __future__ import annotations

import ast
from pathlib import Path

import securefvpa.secagg as pkg

SOURCES = sorted(Path(pkg.__file__).parent.glob("*.py"))


def test_sources_found():
    assert {p.name for p in SOURCES} >= {"client.py", "server.py", "primitives.py", "shamir.py"}


def test_no_torch_flwr_or_python_random_imports():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root not in {"torch", "flwr", "random"}, f"{path.name} imports {name}"


def test_no_numpy_random_and_no_assert():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Assert), f"assert in {path.name}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr == "random":
                assert not (
                    isinstance(node.value, ast.Name) and node.value.id in {"np", "numpy"}
                ), f"np.random in {path.name}:{node.lineno}"
