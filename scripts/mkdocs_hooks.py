"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``): the pages that would drift
from the code are generated at build time, never committed.

* ``index.md``: README.md, the front page, with its ``docs/`` links pointed at the site's pages
  and links to other repository files shown as their paths (the site has no repository browser).
* ``reference/presets.md``: the preset catalogue from the registry (:mod:`fpn_lab.models.catalogue`)
  with each preset's mmdet config and weights URL.
* ``reference/params.md``: the notebooks' parameters, types, defaults and comments
  (:func:`fpn_lab.runner.params.notebook_parameters`, what ``fpn-lab params`` prints).
* ``reference/cli.md``: each ``fpn-lab`` sub-command's help from its parser (:func:`fpn_lab.cli.build_parser`).
* ``reference/api.md``: the public names of ``fpn_lab.all`` (IceVision's and fpn_lab's own), each
  rendered from its docstring by mkdocstrings, grouped by the module that defines it.
* ``benchmarks/results.md``: bench/RESULTS.md.
* In docs/migrating_from_icevision.md, the IceVision backbone table (:func:`on_page_markdown`).
* ``notebook/getting_started.ipynb``: the getting-started notebook as executed by the newest
  finished demo run of the committed code (``runs/*/`` whose ``metrics.json`` says ``status: ok`` with
  ``params/demo.yaml``'s preset, and whose code cells are the committed notebook's), with a first cell
  naming that run; without one, the committed notebook without outputs and a
  first cell saying how to get them (``make demo``); widgets by their text form (their live views
  would load a script from a CDN). mkdocs-jupyter renders it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def site_links(markdown: str, *, prefix: str = "") -> str:
    """Rewrite a repository markdown file's links for the site: ``docs/X.md#a`` -> ``prefix + X.md#a``,
    ``bench/RESULTS.md`` -> its page ``benchmarks/results.md``; web and in-page links unchanged; any
    other repository path -> its text followed by the path in code (``text (`path`)``, or the text
    alone when it already is code)."""
    def rewrite(m: re.Match) -> str:
        text, target = m.group(1), m.group(2)
        if target.startswith(("http://", "https://", "mailto:", "#")):
            return m.group(0)
        if target.startswith("docs/"):
            return f"[{text}]({prefix}{target[len('docs/'):]})"
        if target.split("#")[0] == "bench/RESULTS.md":  # on the site: its page
            return f"[{text}]({prefix}benchmarks/results.md)"
        return text if text.startswith("`") else f"{text} (`{target}`)"

    return _LINK.sub(rewrite, markdown)


def presets_page() -> str:
    from fpn_lab.models.catalogue import selection_table
    from fpn_lab.models.registry import get_preset

    table = selection_table()
    lines = ["# Preset catalogue", "",
             "Every preset of the registry (`fpn_lab.models.registry`), IceVision's getting-started presets first "
             "(`selection` 0, 1, 4), as the notebook's selection table shows them. Parameters (3 classes) and CPU "
             "seconds per training step (batch 2, from scratch, the project's 2-core machine) are measured by "
             "`bench/step_time.py` into `fpn_lab/models/measured.json`; `nan` means not measured yet. COCO box AP, "
             "config and weights URL come from mmdet 3.3's `metafile.yml`. Generated when the site is built.", "",
             "| preset | selection | IceVision alias | neck (levels) | params (M) | COCO box AP (mmdet) | "
             "CPU s/step @256 | CPU s/step @384 | mmdet config | COCO weights |",
             "|" + " --- |" * 10]
    for name, row in table.iterrows():
        p = get_preset(name)
        url = p.weights_url
        lines.append(f"| `{name}` | {row['selection']} | {row['alias']} | {row['neck']} | {row['params (M)']} | "
                     f"{row['COCO box AP (mmdet)']} | {row['CPU s/step @256']} | {row['CPU s/step @384']} | "
                     f"`{p.config}` | {f'[checkpoint]({url})' if url else '-'} |")
    return "\n".join(lines) + "\n"


def params_page() -> str:
    from fpn_lab.runner.params import notebook_parameters

    lines = ["# Notebook parameters", "",
             "The parameters of each notebook's `parameters` cell, which a params YAML file, `fpn-lab run --set "
             "KEY=VALUE` or papermill sets (`fpn-lab params` prints the same list). Generated from the notebooks "
             "when the site is built.", ""]
    for nb in ("getting_started", "compare_necks"):
        lines += [f"## `notebooks/{nb}.ipynb`", "", "| parameter | type | default | meaning |",
                  "| --- | --- | --- | --- |"]
        for name, info in notebook_parameters(ROOT / "notebooks" / f"{nb}.ipynb").items():
            default = repr(info["default"])  # as written in the notebook (Python), as the comments speak
            help_text = str(info.get("help") or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {info['type']} | `{default}` | {help_text} |")
        lines.append("")
    return "\n".join(lines)


def cli_page() -> str:
    from fpn_lab.cli import build_parser

    parser = build_parser()
    lines = ["# `fpn-lab` command", "", "Each sub-command's `--help`, generated from the command's parser "
             "(`fpn_lab/cli.py`) when the site is built.", "", "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        lines += [f"## `fpn-lab {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


#: Public names outside ``fpn_lab.all`` (their modules import optional or heavy packages).
EXTRA_API = ("fpn_lab.export.export_onnx", "fpn_lab.export.OnnxDetector", "fpn_lab.distributed.init",
             "fpn_lab.distributed.shutdown")


def api_page() -> str:
    import inspect

    import fpn_lab.all as everything

    groups: dict[str, list[str]] = {}
    for name in everything.__all__:
        obj = getattr(everything, name)
        named = inspect.isclass(obj) or inspect.isfunction(obj)
        module = obj.__name__ if inspect.ismodule(obj) else getattr(type(obj) if not named else obj, "__module__", "")
        if not module.startswith("fpn_lab"):
            continue  # re-exported for IceVision's code (pathlib's Path, fastcore's first)
        # a function or class by its own name; a namespace object (IceVision's models, parsers, tfms) by its module
        groups.setdefault(module, []).append(f"{module}.{obj.__qualname__}" if named else module)
    for ident in EXTRA_API:
        groups.setdefault(ident.rsplit(".", 1)[0], []).append(ident)
    lines = ["# API reference", "",
             "Every public name of `fpn_lab.all` (`from fpn_lab.all import *`), and the ONNX export and process-group "
             "functions, from their docstrings, grouped by the module that defines them. Generated when the site is "
             "built.", ""]
    for module in sorted(groups):
        lines += [f"## `{module}`", ""]
        for ident in sorted(set(groups[module])):
            lines += [f"::: {ident}", ""]
    return "\n".join(lines)


def _code_cells(nb) -> list[str]:
    """The sources of a notebook's code cells, papermill's injected parameters cell left out."""
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def newest_demo_notebook() -> tuple[Path | None, dict | None]:
    """The executed notebook of the newest ``runs/*/`` demo run that finished ok with ``params/demo.yaml``'s
    parameters and the committed notebook's code (every code cell the same, papermill's injected
    parameters aside), and its metrics."""
    import nbformat
    import yaml

    committed = _code_cells(nbformat.read(str(ROOT / "notebooks" / "getting_started.ipynb"), as_version=4))
    demo = yaml.safe_load((ROOT / "params" / "demo.yaml").read_text()) or {}
    preset = demo.get("selection")
    found = []
    for metrics in (ROOT / "runs").glob("*/metrics.json"):
        try:
            m = json.loads(metrics.read_text())
        except ValueError:
            continue
        nb = metrics.parent / "getting_started.ipynb"
        same_params = all(m.get("params", {}).get(k) == v for k, v in demo.items())  # not a run with other settings
        if m.get("status") == "ok" and m.get("preset") == preset and same_params and nb.is_file() and m.get("metrics"):
            if _code_cells(nbformat.read(str(nb), as_version=4)) == committed:
                found.append((m.get("finished_at", ""), nb, m))
    if not found:
        return None, None
    _, nb, m = max(found, key=lambda t: t[0])
    return nb, m


def notebook_file(out_dir: Path) -> Path:
    import nbformat

    nb_path, m = newest_demo_notebook()
    if nb_path is None:
        nb = nbformat.read(str(ROOT / "notebooks" / "getting_started.ipynb"), as_version=4)
        note = ("**This page shows the notebook without outputs**: no finished demo run was found in `runs/` when the "
                "site was built. Run `make demo`, then `make docs`, to see it with the outputs of a real run.")
    else:
        nb = nbformat.read(str(nb_path), as_version=4)
        met = m["metrics"]
        note = (f"**Outputs of a real run**: `{nb_path.parent.relative_to(ROOT)}` (`make demo`, seed "
                f"{m.get('seed')}, finished {m.get('finished_at')}): AP {met['AP']:.3f}, AP50 {met['AP50']:.3f} on the "
                "BCCD test split. Another CPU gives other last digits (its float kernels round differently). The "
                "committed notebook, `notebooks/getting_started.ipynb`, has no outputs.")
    # widgets are shown by their text form, as in the runs' HTML: their live views would load
    # Jupyter's widget manager from a CDN
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# The getting-started notebook\n\n{note}"))
    out = out_dir / "notebook" / "getting_started.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    return out


_TMP: list[tempfile.TemporaryDirectory] = []


@event_priority(100)  # before mkdocs-jupyter's on_files, which picks the notebook up from the file list
def on_files(files, config):
    from mkdocs.structure.files import File

    generated = {
        "index.md": site_links((ROOT / "README.md").read_text()),
        "reference/presets.md": presets_page(),
        "reference/params.md": params_page(),
        "reference/cli.md": cli_page(),
        "reference/api.md": api_page(),
        "benchmarks/results.md": site_links((ROOT / "bench" / "RESULTS.md").read_text(), prefix="../"),
    }
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    tmp = tempfile.TemporaryDirectory(prefix="fpn_lab_docs_")
    _TMP.append(tmp)
    notebook_file(Path(tmp.name))
    files.append(File("notebook/getting_started.ipynb", src_dir=tmp.name, dest_dir=config["site_dir"],
                      use_directory_urls=config["use_directory_urls"]))
    return files


BACKBONES_MARKER = "<!-- icevision-backbones: generated by scripts/mkdocs_hooks.py -->"


def icevision_backbones_table() -> str:
    """Every IceVision backbone name per architecture with its preset and ``selection`` index."""
    from fpn_lab.models.registry import archs, get_preset, icevision_backbones

    lines = ["| `models.mmdet.<type>` | `.backbones.<name>` | fpn_lab preset | selection |",
             "| --- | --- | --- | --- |"]
    for arch in archs():
        for name, preset in icevision_backbones(arch).items():
            sel = get_preset(preset).selection
            lines.append(f"| `{arch}` | `{name}` | `{preset}` | {'' if sel is None else sel} |")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    """Fill the generated parts of hand-written pages (the IceVision backbone table)."""
    if BACKBONES_MARKER in markdown:
        markdown = markdown.replace(BACKBONES_MARKER, icevision_backbones_table())
    return markdown


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)*(\w+)</code>")


def on_page_content(html, page, config, files):
    """Docstrings cross-reference in Sphinx's roles (``:func:`~fpn_lab.x.name```): show the name in
    code, without the role, and only its last part where Sphinx's ``~`` asks for it."""
    return _TILDE.sub(r"<code>\1</code>", _ROLE.sub("", html))
