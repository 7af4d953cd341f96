"""The structure rules the README states, checked on the import graph (tests/structure.py).

Every rule here is a sentence of the README's "Architecture" section; each test fails on the
first import that breaks it (checked by adding such an import: see the mutation notes).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest


def _load_structure():
    spec = importlib.util.spec_from_file_location(
        "structure", Path(__file__).with_name("structure.py")
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["structure"] = mod
    spec.loader.exec_module(mod)
    return mod


st = _load_structure()


def test_every_module_has_a_layer():
    unknown = sorted({st.group_of(m) for m in st.modules()} - set(st.LAYERS))
    assert not unknown, f"modules outside every layer: {unknown} (add them to tests/structure.py)"


def test_no_import_cycles():
    # Mutation: `from securefvpa.fl.server_app import FlowerTransport` under TYPE_CHECKING in
    # fl/secagg_workflow.py (the pre-refactor shape) makes this fail.
    assert st.cycles() == []


def test_no_import_points_to_a_higher_layer():
    # Mutation: `from securefvpa.fl.launch import flower_env` inside a function of
    # privacy/plan.py (what dp_plan.py used to do with fl/driver) makes this fail.
    ups = [f"{i.src}:{i.line} -> {i.dst}" for i in st.upward_imports()]
    assert ups == []


def test_privacy_never_imports_secagg():
    assert st.cross_pure_imports() == []


@pytest.mark.parametrize(
    "module",
    [m for m in st.modules() if st.group_of(m) in st.PURE_PACKAGES] + list(st.PURE_MODULES),
)
def test_pure_cores_import_neither_torch_nor_flwr(module):
    """privacy/, secagg/ and the audit statistics, transitively through every securefvpa module
    they import, never reach torch, flwr, opacus, transformers or ray."""
    assert st.heavy_imports_of(module) == []


def test_flwr_only_in_fl_and_opacus_only_in_train_private():
    assert all(m.startswith("securefvpa.fl.") for m in st.importers_of("flwr"))
    assert st.importers_of("opacus") in ([], ["securefvpa.train.private"])


def test_round_engine_is_flwr_free():
    for m in st.modules():
        if st.group_of(m) == "rounds":
            assert not any(h.startswith("flwr") for h in st.heavy_imports_of(m)), m


def test_absolute_imports_only():
    rel = [i for i in st.imports() if i.dst.startswith("<relative import")]
    assert rel == []


def test_client_mod_and_server_workflow_never_import_each_other():
    """The wire format is defined once (fl/wire.py); the client side (client_app, secagg_mod,
    node) and the server side (server_app, secagg_workflow) never import each other."""
    client = {"securefvpa.fl.client_app", "securefvpa.fl.secagg_mod", "securefvpa.fl.node"}
    server = {"securefvpa.fl.server_app", "securefvpa.fl.secagg_workflow"}
    bad = [
        f"{i.src} -> {i.dst}"
        for i in st.internal_edges()
        if (i.src in client and i.dst in server) or (i.src in server and i.dst in client)
    ]
    assert bad == []


def _wire_keys() -> set[str]:
    tree = ast.parse((st.PACKAGE / "fl" / "wire.py").read_text())
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str) and node.targets[0].id.isupper():  # type: ignore[attr-defined]
                keys.add(node.value.value)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    keys.add(item.target.id.replace("_", "-"))
    return {k for k in keys if "-" in k or k in ("arrays", "config", "reply")}


def test_wire_keys_are_spelled_only_in_wire_module():
    """No other module of fl/ spells a message key as a string: they use wire.py's names."""
    keys = _wire_keys()
    assert {"secagg-payload", "num-examples", "config-hash", "arrays", "reply"} <= keys
    offenders = []
    for m, path in st.modules().items():
        if st.group_of(m) != "fl" or m == "securefvpa.fl.wire":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in keys:
                offenders.append(f"{m}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_privacy_critical_signatures_are_keyword_only():
    """Events, DP settings, calibration and the guard take their privacy arguments by keyword."""
    import inspect

    from securefvpa.privacy.calibrate import calibrate_noise_multiplier
    from securefvpa.privacy.events import DpSgdEvent
    from securefvpa.privacy.guard import BudgetGuard
    from securefvpa.privacy.plan import DPSettings, PrivacyPlan

    for fn in (DpSgdEvent, DPSettings, PrivacyPlan, calibrate_noise_multiplier, BudgetGuard):
        params = [
            p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")
        ]
        positional = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
        assert positional == [], f"{fn.__qualname__} takes {positional} positionally"
    for method in (BudgetGuard.check, PrivacyPlan.authorize, PrivacyPlan.commit, PrivacyPlan.event):
        params = list(inspect.signature(method).parameters.values())[1:]
        assert all(p.kind is p.KEYWORD_ONLY for p in params), method.__qualname__


def test_no_bare_value_errors_on_user_reachable_paths():
    """Errors raised on purpose come from the one exception tree (securefvpa.errors)."""
    pattern = re.compile(r"raise (ValueError|TypeError|KeyError|RuntimeError)\(")
    hits = [
        f"{m}:{n}"
        for m, p in st.modules().items()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
