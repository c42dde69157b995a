"""`rgflow explore` end to end: the real command as a subprocess, driven by headless Chromium.

Needs selenium (the dev extra) and Debian's `chromium` and `chromium-driver`; the browser
test is skipped, saying which is missing, when one is absent. Set RGFLOW_SCREENSHOT_DIR to
keep the screenshot it takes.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import perturb, tiny_config
from PIL import Image

from rgflow_cli.explore.headless import find_chromium, free_port, start_browser
from rgflow_core import build_model, load_model, save_model
from rgflow_core.codec import decode_images
from rgflow_core.latents import load_latents

STARTUP = 90.0  # seconds for the server to answer (torch import, a loaded CI machine)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explore")
    ckpt = root / "model.safetensors"
    save_model(perturb(build_model(tiny_config(channels=3)), scale=0.3, seed=4), ckpt)
    images = root / "images"
    images.mkdir()
    gen = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{k}.png")
    return {"ckpt": ckpt, "images": images, "root": root}


def _start(files: dict[str, Path], log: Path) -> tuple[subprocess.Popen, str]:
    """`rgflow explore` on a free loopback port; returns once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "rgflow_cli", "explore", "-c", files["ckpt"]]
    command += ["--images", files["images"], "--port", port, "--device", "cpu", "--samples", 3]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(c) for c in command], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "api/info", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.1)
    server.kill()
    pytest.fail(f"rgflow explore did not answer within {STARTUP:.0f} s: {log.read_text()}")


def _stop(server: subprocess.Popen) -> int:
    server.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        raise


@pytest.fixture(scope="module")
def served(files):
    """(process, url, log) of one server for the module; the last test stops it."""
    log = files["root"] / "server.log"
    server, url = _start(files, log)
    yield server, url, log
    if server.poll() is None:
        _stop(server)


@pytest.fixture
def driver(tmp_path):
    try:
        find_chromium()
    except LookupError as missing:
        pytest.skip(str(missing))
    browser = start_browser(tmp_path / "chrome-profile")
    browser.set_script_timeout(30)
    yield browser
    browser.quit()


def _wait(driver, script: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _shown(driver) -> str:
    return driver.execute_script("return document.getElementById('image').src")


def _changed(driver, before: str) -> str:
    """Wait until the page shows an image other than `before`; return its data URL."""
    script = "const s = document.getElementById('image').src; "
    return _wait(driver, script + f"return s !== '{before}' && s.startsWith('data:') ? s : null")


def _text(element: str, start: str) -> str:
    """A script that returns the element's text once it starts with `start`."""
    return f"const t = document.getElementById('{element}').textContent; " + (
        f"return t.startsWith('{start}') ? t : null"
    )


def _canvas(driver, name: str, blank: bool = False) -> str:
    """A canvas's pixels as a data URL (`blank`: those of an empty canvas of its size)."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "if (!arguments[1]) return c.toDataURL();"
        "const e = document.createElement('canvas'); e.width = c.width; e.height = c.height;"
        "return e.toDataURL();",
        name,
        blank,
    )


def _pixels(url: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        return np.asarray(img)


def _settled(driver) -> str:
    """The image shown once every request the page made has been answered."""
    _wait(driver, "return window.rgflowIdle()")
    return _shown(driver)


def test_the_page_follows_sliders_buttons_and_the_pointer(files, served, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(served[1])
    _wait(driver, "return window.rgflowReady === true")
    assert driver.execute_script("return document.querySelectorAll('.level').length") == 3
    first = _settled(driver)
    assert first.startswith("data:image/png")

    slider = driver.find_element(By.ID, "factor-0")  # a factor of the coarsest level
    slider.send_keys(*[Keys.ARROW_RIGHT] * 8)
    _wait(driver, "return window.rgflowTimings.length >= 8")
    assert all(t >= 0 for t in driver.execute_script("return window.rgflowTimings"))
    moved = _settled(driver)
    assert moved != first

    driver.find_element(By.ID, "resample-0").click()
    resampled = _changed(driver, moved)

    # pointing at a pixel lights up the latents that reach it in the latent map
    plain_map = _canvas(driver, "latent-map")
    overlay = driver.find_element(By.ID, "overlay")
    ActionChains(driver).move_to_element_with_offset(overlay, -100, -100).perform()
    hint = _wait(driver, _text("image-hint", "Pixel"))
    assert "of level 2" in hint and "of level 0" in hint
    assert _canvas(driver, "latent-map") != plain_map
    # pointing at a latent shows where it acts on the image
    latent_map = driver.find_element(By.ID, "latent-map")
    ActionChains(driver).move_to_element_with_offset(latent_map, 10, 10).perform()
    _wait(driver, _text("map-hint", "Position"))
    _wait(driver, "return state.fields.size > 0")  # the receptive field came
    assert _canvas(driver, "overlay") != _canvas(driver, "overlay", blank=True)

    # the page downloads its latents: they decode to the image it shows
    latents = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/download/latents.safetensors').then(r => r.arrayBuffer()).then(b => {"
        "  let s = ''; new Uint8Array(b).forEach(c => { s += String.fromCharCode(c); });"
        "  done(btoa(s)); });"
    )
    path = tmp_path / "z.safetensors"
    path.write_bytes(base64.b64decode(latents))
    decoded = decode_images(load_model(files["ckpt"]), load_latents(path).z)[0]
    shown = _settled(driver)
    assert shown == resampled
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), _pixels(shown))
    assert not driver.execute_script("return document.getElementById('status').textContent")

    screenshot = tmp_path / "explore.png"
    driver.save_screenshot(str(screenshot))
    if os.environ.get("RGFLOW_SCREENSHOT_DIR"):
        keep = Path(os.environ["RGFLOW_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, keep / "explore.png")


def test_ctrl_c_stops_the_server_cleanly(served):
    """Runs last: it stops the module's server."""
    server, _, log = served
    code = _stop(server)
    output = log.read_text()
    assert code in (0, 130) and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] in ("stopped", "error: interrupted"), output
