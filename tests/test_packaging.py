"""pyproject.toml declares every third-party package that fpn_lab imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import ROOT


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "fpn_lab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("fpn_lab", "__future__")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_a_declared_dependency():
    declared = {_norm(re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0])
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    dists = packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        providers = {_norm(d) for d in dists.get(module, [])}
        if not providers & declared:
            missing[module] = sorted(providers) or ["(not installed)"]
    assert not missing, f"imported by fpn_lab but not in pyproject.toml's dependencies: {missing}"
