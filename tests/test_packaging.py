"""pyproject.toml declares every third-party package that fpn_lab imports (as a dependency or in an
extra), mmcv as mmcv-lite, and a missing extra is an error naming it."""

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


def _declared(with_extras: bool = True) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    if with_extras:
        reqs += [d for extra in project["optional-dependencies"].values() for d in extra]
    return {_norm(re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0]) for d in reqs}


def test_every_imported_package_is_a_declared_dependency():
    declared = _declared()
    dists = packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        providers = {_norm(d) for d in dists.get(module, [])}
        if not providers & declared:
            missing[module] = sorted(providers) or ["(not installed)"]
    assert not missing, f"imported by fpn_lab but not in pyproject.toml's dependencies: {missing}"


def test_the_default_install_has_mmcv_lite_and_the_extras_hold_the_optional_features():
    core = _declared(with_extras=False)
    assert "mmcv-lite" in core and "mmcv" not in core  # no compiler needed: mmcv's operators come from fpn_lab
    assert not {"mlflow", "tensorboard", "onnx", "onnxruntime", "jupyterlab", "pytest"} & core
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"tracking", "export", "notebook", "dev"} <= set(extras)


def test_a_missing_extra_is_an_error_naming_it(monkeypatch):
    import importlib.util

    import pytest

    from fpn_lab.errors import MissingExtraError, ParamsError
    from fpn_lab.export import OnnxDetector
    from fpn_lab.runner.params import validate_params

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mlflow", "onnxruntime") else real(name, *a))
    with pytest.raises(ParamsError, match=r"track: mlflow needs mlflow.*pip install 'fpn_lab\[tracking\]'"):
        validate_params({"track": "mlflow"}, ROOT / "notebooks" / "getting_started.ipynb")  # before a kernel starts
    from fpn_lab.runner.tracking import make_tracker

    with pytest.raises(MissingExtraError, match="fpn_lab\\[tracking\\]"):
        make_tracker("mlflow", None)
    with pytest.raises(MissingExtraError, match=r"OnnxDetector needs onnxruntime.*fpn_lab\[export\]"):
        OnnxDetector(ROOT / "missing.onnx")
    with pytest.raises(ParamsError):
        validate_params({"track": "wandb"}, ROOT / "notebooks" / "getting_started.ipynb")
