"""The documentation site (mkdocs.yml, docs/, scripts/mkdocs_hooks.py): the strict build `make docs`
runs, the generated pages against the code they come from, and the built site in Chromium with the
network blocked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import CHROMIUM, NO_CHROMIUM, ROOT, offline_chromium


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The strict build is what catches a page linking to a page that does not exist."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "data.md").write_text((docs / "data.md").read_text() + "\nSee [the missing page](no_such_page.md).\n")
    cfg = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    cfg = cfg.replace("  - scripts/mkdocs_hooks.py", f"  - {ROOT / 'scripts' / 'mkdocs_hooks.py'}")
    (tmp_path / "mkdocs.yml").write_text(cfg)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode != 0
    assert "no_such_page.md" in proc.stderr


def test_generated_pages_follow_the_code(site):
    from fpn_lab.cli import build_parser
    from fpn_lab.models.registry import list_models
    from fpn_lab.runner.params import notebook_parameters

    presets = (site / "reference" / "presets.html").read_text()
    assert all(f"<code>{name}</code>" in presets for name in list_models())
    params = (site / "reference" / "params.html").read_text()
    for name in notebook_parameters(ROOT / "notebooks" / "getting_started.ipynb"):
        assert f"<code>{name}</code>" in params, name
    cli = (site / "reference" / "cli.html").read_text()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in sub.choices:
        assert f"fpn-lab {command}" in cli
    api = (site / "reference" / "api.html").read_text()
    for name in ("build_model", "open_dataset", "evaluate", "load_checkpoint", "OnnxDetector", "COCOMetric"):
        assert re.search(rf'id="[\w.]*{name}"', api), name
    from fpn_lab.models.registry import archs, icevision_backbones

    migrating = (site / "migrating_from_icevision.html").read_text()
    for arch in archs():
        for name, preset in icevision_backbones(arch).items():
            assert f"<code>{name}</code>" in migrating and f"<code>{preset}</code>" in migrating, name
    # the front page is README.md, its links pointed at the site's pages
    index = (site / "index.html").read_text()
    assert "make demo" in index and 'href="getting-started.html"' in index and "docs/getting-started.md" not in index


def test_notebook_page_is_the_getting_started_notebook(site):
    import nbformat

    page = (site / "notebook" / "getting_started.html").read_text()
    nb = nbformat.read(str(ROOT / "notebooks" / "getting_started.ipynb"), as_version=4)
    first_code = next(c.source for c in nb.cells if c.cell_type == "code").splitlines()[0]
    assert re.sub(r"\W", "", first_code)[:20] in re.sub(r"<[^>]+>|\W", "", page)
    assert "Outputs of a real run" in page or "without outputs" in page


@pytest.fixture()
def served(site):
    """The built site on a local HTTP server (as `make docs-serve`): search's web worker needs HTTP."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_site_works_offline_in_chromium(served, site):
    """With every request off this machine blocked: the pages load and make no such request, the
    figures load, the search box finds a preset by name; pages also open from the file system."""
    with offline_chromium(served) as (new_page, blocked):
        page = new_page()
        for name in ("index.html", "getting-started.html", "reference/api.html", "notebook/getting_started.html"):
            page.goto(f"{served}/{name}", wait_until="load")
            assert page.locator("article h1").count() >= 1, name
        page.goto((site / "models.html").as_uri(), wait_until="load")
        assert page.locator("article h1").count() >= 1
        page.goto(f"{served}/necks.html", wait_until="load")
        images = page.eval_on_selector_all("article img", "els => els.map(e => [e.src, e.complete, e.naturalWidth])")
        page.goto(f"{served}/index.html", wait_until="load")
        query = page.locator("input[data-md-component='search-query']")
        query.click()
        query.fill("yolox_tiny_pafpn_300e")
        page.wait_for_selector(".md-search-result__item", timeout=20_000)
        hits = page.eval_on_selector_all(".md-search-result__item a", "els => els.map(e => e.href)")
    assert blocked == []
    assert len(images) >= 5 and all(done and width > 0 for _, done, width in images), images
    assert any("presets.html" in h or "models.html" in h for h in hits), hits


def test_notebook_page_takes_only_a_demo_run_of_the_demo_parameters(tmp_path, monkeypatch):
    """A newer run of the demo's preset with other settings (epochs=1) is not shown as `make demo`."""
    import json
    import sys

    import yaml

    sys.path.insert(0, str(ROOT / "scripts"))
    import mkdocs_hooks

    (tmp_path / "params").mkdir()
    shutil.copy(ROOT / "params" / "demo.yaml", tmp_path / "params" / "demo.yaml")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "getting_started.ipynb", tmp_path / "notebooks" / "getting_started.ipynb")
    demo = yaml.safe_load((ROOT / "params" / "demo.yaml").read_text())
    for name, epochs, finished in (("demo", demo["epochs"], "2026-01-01T00:00:00"), ("short", 1, "2026-02-01T00:00:00")):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        shutil.copy(ROOT / "notebooks" / "getting_started.ipynb", run / "getting_started.ipynb")
        (run / "metrics.json").write_text(json.dumps({
            "status": "ok", "preset": demo["selection"], "params": {**demo, "epochs": epochs},
            "metrics": {"AP": 0.5, "AP50": 0.8}, "finished_at": finished}))
    monkeypatch.setattr(mkdocs_hooks, "ROOT", tmp_path)
    nb, _ = mkdocs_hooks.newest_demo_notebook()
    assert nb == tmp_path / "runs" / "demo" / "getting_started.ipynb"
