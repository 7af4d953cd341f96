"""Structure measures of the package: import cycles, upward imports, size, and a traced run.

``python benchmarks/structure.py [--root PATH] [--trace] [--out FILE]`` prints a table and writes
JSON (default ``benchmarks/results/structure.json``). ``--root`` measures another checkout of the
repository (e.g. a ``git worktree`` of an older commit) with the same rules (tests/structure.py).

- cycles: strongly connected components of the static import graph (every import statement,
  function-level and ``TYPE_CHECKING`` ones included);
- upward imports: imports of a module in a higher layer than the importer's;
- function-level imports of securefvpa modules;
- largest module (lines) and function (lines);
- ``--trace``: the securefvpa files a small ``securefvpa run --out`` (Flower simulation, 2 rounds)
  executes in the launching process, and the distinct caller→callee file pairs that go to a
  higher layer (callbacks through an injected transport count here; imports cannot).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "structure.json"


def _structure(root: Path) -> Any:
    spec = importlib.util.spec_from_file_location("structure_rules", HERE.parent / "tests" / "structure.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["structure_rules"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.PACKAGE = root / "securefvpa"
    mod.modules.cache_clear()
    mod.imports.cache_clear()
    for name in {p.parts[-2] if p.name == "__init__.py" else p.stem for p in mod.PACKAGE.iterdir()}:
        mod.LAYERS.setdefault(name, {"dp_plan": 1}.get(name, 0))  # old modules: ground/privacy
    return mod


def static_measures(root: Path) -> dict[str, Any]:
    st = _structure(root)
    (big_mod, big_mod_lines), (big_fn, big_fn_lines) = st.largest()
    internal = st.internal_edges()
    return {
        "modules": len(st.modules()),
        "cycles": st.cycles(),
        "files_in_cycles": sum(len(c) for c in st.cycles()),
        "upward_imports": [f"{i.src} -> {i.dst}" for i in st.upward_imports()],
        "function_level_internal_imports": sum(i.function_level for i in internal),
        "largest_module": [big_mod, big_mod_lines],
        "largest_function": [big_fn, big_fn_lines],
    }


def traced_run(root: Path) -> dict[str, Any]:
    """Trace a 2-round Flower simulation started with ``securefvpa.run.run`` in this process."""
    sys.path.insert(0, str(root))
    st = _structure(root)
    pkg = str((root / "securefvpa").resolve())
    files: list[str] = []
    edges: set[tuple[str, str]] = set()

    def prof(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        f = frame.f_code.co_filename
        if not f.startswith(pkg):
            return
        files.append(f)
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(pkg):
            caller = caller.f_back
        if caller is not None and caller.f_code.co_filename != f:
            edges.add((caller.f_code.co_filename, f))

    def mod_of(path: str) -> str:
        return st.module_name(Path(path))

    import tomli_w

    cfg = {
        "seed": 0,
        "data": {"source": "synth", "users": 24, "pairs_per_user": 16},
        "federation": {"mode": "simulation", "rounds": 2, "local_steps": 2, "min_fit_clients": 2},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.toml"
        path.write_text(tomli_w.dumps(cfg))
        from securefvpa.run import run  # noqa: PLC0415

        threading.setprofile(prof)
        sys.setprofile(prof)
        try:
            run(path, Path(tmp) / "run")
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    distinct = sorted({mod_of(f) for f in files})
    climbs = sorted(
        f"{mod_of(a)} -> {mod_of(b)}"
        for a, b in edges
        if st.layer_of(mod_of(b)) > st.layer_of(mod_of(a))
    )
    return {"files": len(distinct), "file_list": distinct, "upward_calls": climbs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE.parent)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = static_measures(args.root.resolve())
    if args.trace:
        out["trace"] = traced_run(args.root.resolve())
    print(f"{'measure':<36} value")
    print(f"{'modules':<36} {out['modules']}")
    print(f"{'import cycles (files in cycles)':<36} {len(out['cycles'])} ({out['files_in_cycles']})")
    print(f"{'imports to a higher layer':<36} {len(out['upward_imports'])}")
    print(f"{'function-level internal imports':<36} {out['function_level_internal_imports']}")
    print(f"{'largest module':<36} {out['largest_module'][0]} ({out['largest_module'][1]} lines)")
    print(f"{'largest function':<36} {out['largest_function'][0]} ({out['largest_function'][1]} lines)")
    if "trace" in out:
        print(f"{'files a run --out executes':<36} {out['trace']['files']}")
        print(f"{'distinct upward calls (callbacks)':<36} {len(out['trace']['upward_calls'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
