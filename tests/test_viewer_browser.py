"""`ns-viewer` on a reconstructed run, driven in headless Chromium (Debian's `chromium` through Playwright).

The page must show a rendered scene (not a blank canvas) at the reference view, and the ZipSplat controls must work:
moving the compression slider re-runs the network (the Gaussian count follows ``int(V*324*c)*k``) and "Color by token"
changes the picture. With ``ZIPSPLAT_SCREENSHOT_DIR`` set, the screenshots are also copied there (``docs/viewer.png``
at compression 1, ``docs/viewer_tokens.png`` at 0.25 with token colours):
``ZIPSPLAT_SCREENSHOT_DIR=docs python -m pytest tests/test_viewer_browser.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nerfstudio")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)"),
]

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
GPT = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canvas_pixels(png: Path) -> np.ndarray:
    """The 3D view of a 1200x800 screenshot (left of the control panel, below the header)."""
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB"))[70:790, 10:860].astype(np.int32)


def rendered_mask(px: np.ndarray) -> np.ndarray:
    """Pixels whose colour is far from the view's most common colour (the empty background)."""
    flat = px.reshape(-1, 3)
    colours, counts = np.unique(flat // 8, axis=0, return_counts=True)
    bg = colours[np.argmax(counts)] * 8 + 4
    return (np.abs(px - bg).sum(-1) > 40)


def rendered_fraction(px: np.ndarray) -> float:
    return float(rendered_mask(px).mean())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from zipsplat_ns.reconstruct import ReconstructCommand

    root = tmp_path_factory.mktemp("viewer")
    src = SHARED / "videos" / "drone.mp4"
    if not src.is_file():  # without ../shared: a synthetic test scene's images
        from zipsplat_ns.data.synth import synth_main

        synth_main(root / "synth", num_scenes=1, views=4, size=128, test_fraction=0.0, progress=False)
        src = root / "synth"
    out = root / "run"
    rep = ReconstructCommand(str(src), weights="random-tiny", output_dir=out, num_frames=3, device="cpu",
                             gaussians_per_token=GPT, progress=False).run()  # fmt: skip
    return out, rep


@pytest.fixture(scope="module")
def viewer(run_dir):
    out, rep = run_dir
    port = free_port()
    exe = Path(sys.executable).parent / "ns-viewer"
    log = open(out.parent / "viewer.log", "w")
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "ns-viewer", "--load-config", str(out / "config.yml"),
         "--viewer.websocket-host", "127.0.0.1", "--viewer.websocket-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=out.parent, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
    if proc.poll() is not None:
        log.close()
        pytest.fail("ns-viewer did not start:\n" + (out.parent / "viewer.log").read_text()[-4000:])
    yield url, rep
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_viewer_page_shows_the_scene_and_the_zipsplat_controls(viewer, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    url, rep = viewer
    n_views = len(rep["views"])
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url)
        page.wait_for_selector("text=Compression", timeout=90_000)
        comp = page.locator("xpath=//*[normalize-space(text())='Compression']/following::input[@type='text'][1]")
        count = page.locator("xpath=//*[normalize-space(text())='Gaussians']/following::input[1]")
        assert comp.input_value() == "1" and page.locator("text=Color by token").count() == 1
        assert int(count.input_value()) == rep["num_gaussians"] == n_views * 324 * GPT

        shot = tmp_path / "viewer.png"
        frac = 0.0
        for _ in range(60):  # the first render arrives after the client camera is placed
            time.sleep(1.0)
            page.screenshot(path=str(shot))
            frac = rendered_fraction(canvas_pixels(shot))
            if frac > 0.05:
                break
        # a blank canvas scores 0; the input-camera frustums alone about 0.01; the random-weight scene about 0.1
        assert frac > 0.05, f"the 3D view looks blank ({frac:.3f} of it differs from the background)"
        try:  # the viewer refines low-resolution renders to the full one (max res 512) once the camera rests
            page.wait_for_selector("text=/Resolution: 512\\D/", timeout=60_000)
            time.sleep(1.0)
            page.screenshot(path=str(shot))
        except playwright.TimeoutError:
            pass
        if os.environ.get("ZIPSPLAT_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["ZIPSPLAT_SCREENSHOT_DIR"]) / "viewer.png")

        # compression slider: re-runs the network; the count follows int(V*324*c)*k
        comp.fill("0.25")
        comp.press("Enter")
        want = str(int(n_views * 324 * 0.25) * GPT)
        for _ in range(100):
            if count.input_value() == want:
                break
            time.sleep(0.2)
        assert count.input_value() == want

        # token colouring changes the picture (compared with the settled render at c = 0.25)
        try:
            page.wait_for_selector("text=/Resolution: 512\\D/", timeout=60_000)
        except playwright.TimeoutError:
            pass
        time.sleep(2.0)
        page.screenshot(path=str(tmp_path / "c025.png"))
        before = canvas_pixels(tmp_path / "c025.png")
        page.locator("xpath=//*[normalize-space(text())='Color by token']/following::input[@type='checkbox'][1]").check()
        scene = rendered_mask(before)
        time.sleep(3.0)  # the re-render starts at a low resolution; compare full-resolution renders only
        page.wait_for_selector("text=/Resolution: 512\\D/", timeout=60_000)
        time.sleep(2.0)
        page.screenshot(path=str(tmp_path / "tokens.png"))
        diff = float(np.abs(canvas_pixels(tmp_path / "tokens.png") - before).sum(-1)[scene].mean())
        assert diff > 30, f"token colouring did not change the rendered scene (mean |diff| {diff:.1f} over RGB)"
        if os.environ.get("ZIPSPLAT_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "tokens.png", Path(os.environ["ZIPSPLAT_SCREENSHOT_DIR"]) / "viewer_tokens.png")
        browser.close()
