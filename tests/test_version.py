"""The package version is written twice: pyproject.toml (static, because `flwr run` rejects a
Flower App whose [project] has no literal version) and securefvpa/_version.py (read by the report
and the CLI without importing the package). They must agree."""

import tomllib
from pathlib import Path

from securefvpa._version import __version__

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_version_is_static_and_equals_the_package_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project.get("dynamic", []), "flwr run needs a literal version"
    assert project["version"] == __version__
