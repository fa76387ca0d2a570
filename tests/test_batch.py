"""fpn-lab batch: two smoke runs and one failing run give the comparison page and a non-zero exit;
the pages open in headless Chromium with the network blocked, every image loaded."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.notebook
PARAMS = ROOT / "tests" / "data" / "params"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(PARAMS / "smoke_a.yaml"), str(PARAMS / "smoke_b.yaml"),
           str(PARAMS / "broken.yaml"), "--runs-dir", str(runs), "--name", "cmp", "--min", "AP50=0.0"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    return out, runs / "cmp"


def test_batch_with_a_failing_run(batch):
    out, batch_dir = batch
    assert out.returncode == 1, out.stdout + out.stderr
    rows = {r["run"]: r for r in csv.DictReader(open(batch_dir / "comparison.csv"))}
    assert rows["smoke_a"]["status"] == rows["smoke_b"]["status"] == "ok", out.stdout
    assert rows["smoke_a"]["neck"] == "YOLOXPAFPN" and rows["smoke_b"]["neck"] == "FPN"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["failed_step"] == "DataLoaders and learner"
    assert "batch_size 16 is larger than the training set" in rows["broken"]["error"]
    page = (batch_dir / "index.html").read_text()
    assert page.count('<tr class="ok">') == 2 and "failed at step <b>DataLoaders and learner</b>" in page
    assert 'href="smoke_a/getting_started.html"' in page and "data:image/png;base64," in page


def test_bad_params_give_a_failed_row_without_a_run(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("selection: yolox_tiny_pafpn_300e\nepoch: 1\n")
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(bad), "--runs-dir", str(tmp_path / "runs")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 1
    (row,) = csv.DictReader(open(next((tmp_path / "runs").iterdir()) / "comparison.csv"))
    assert row["failed_step"].startswith("parameters") and "Did you mean 'epochs'" in row["error"]


def test_gate_fails_a_run_below_the_floor(tmp_path):
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(PARAMS / "smoke_a.yaml"), "--runs-dir", str(tmp_path),
           "--min", "AP50=0.99"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 1 and "gate failed: smoke_a AP50=" in out.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
@pytest.mark.parametrize("page_name", ["index.html", "smoke_a/getting_started.html"])
def test_pages_open_offline_in_chromium(batch, page_name):
    from playwright.sync_api import sync_playwright

    _, batch_dir = batch
    path = batch_dir / page_name
    ARTIFACTS.mkdir(exist_ok=True)
    blocked = []

    def only_local(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            return route.continue_()
        blocked.append(url)
        return route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page()
            page.route("**/*", only_local)
            page.goto(path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            tables = page.eval_on_selector_all("table", "els => els.length")
            page.screenshot(path=str(ARTIFACTS / (page_name.replace("/", "_") + ".png")), full_page=True)
        finally:
            browser.close()
    assert blocked == []
    assert images and all(done and width > 0 for done, width in images), images
    assert tables >= 1
