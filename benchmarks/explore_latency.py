"""Latency of `rgflow explore`: from a slider's `input` event to the new image on screen.

Starts `rgflow explore` on a free loopback port, drives headless Chromium through Selenium
to move one factor slider N times, `interval` seconds apart like a key held down (a timer
in the page steps the slider and fires its `input` event; with --drive keys, Selenium
presses the arrow keys), and reads the page's own timings: for every input event,
performance.now() from the event to the `onload` of the first image that reflects it
(window.rgflowTimings, see static/app.js). Writes median, p95 and the setup to
benchmarks/results/explore_latency_<model>.json. With --screenshot it first saves a
picture of the page (docs/gallery/explore.png is made so).

    OMP_NUM_THREADS=1 python benchmarks/explore_latency.py \
        -c runs/quick-msds1-laplace/checkpoints/last.safetensors --model quick

Needs `pip install 'rgflow[explore]' selenium` and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rgflow_cli.explore.headless import free_port, start_browser

RESULTS = Path(__file__).parent / "results"


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"rgflow explore exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "api/info", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"rgflow explore did not answer within {timeout:.0f} s")


def wait_for(driver, script: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for: {script}")
        time.sleep(0.05)


SCRIPT_DRIVE = """
const [slider, n, interval, done] = arguments;
let k = 0;
const timer = setInterval(() => {
  const up = Math.floor(k / 20) % 2 === 0;  // runs of 20 steps up, then down
  if (up) slider.stepUp(); else slider.stepDown();
  slider.dispatchEvent(new Event("input", { bubbles: true }));
  k += 1;
  if (k >= n) { clearInterval(timer); done(); }
}, interval * 1000);
"""


SCRIPT_RESULTS = """
const inServer = performance.getEntriesByType("resource")
  .filter((e) => e.name.endsWith("/api/factor"))
  .map((e) => (e.serverTiming.find((t) => t.name === "app") || {}).duration);
return [window.rgflowTimings, window.rgflowPhases, inServer];
"""


def drive(driver, level: int | None, n: int, interval: float, mode: str, timeout: float):
    """Move factor slider 0 of `level` n times; the page's timings and request phases.

    `keys`: arrow key presses sent by Selenium (real key events, but each one also costs
    chromedriver some CPU); `script`: a timer in the page steps the slider and fires its
    `input` event, so that nothing but the page and the server runs while it is measured.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait_for(driver, "return window.rgflowReady === true", timeout)
    if level is not None:
        driver.execute_script(f"selectLevel({level})")
        shown = f"return document.getElementById('factors').dataset.level === '{level}'"
        wait_for(driver, shown, timeout)
    wait_for(driver, "return window.rgflowIdle()", timeout)
    slider = driver.find_element(By.ID, "factor-0")
    driver.execute_script("arguments[0].value = -1.5; arguments[0].focus();", slider)
    driver.execute_script(
        "window.rgflowTimings = []; window.rgflowPhases = [];"
        "performance.clearResourceTimings(); performance.setResourceTimingBufferSize(100000);"
    )
    if mode == "script":
        driver.set_script_timeout(timeout)
        driver.execute_async_script(SCRIPT_DRIVE, slider, n, interval)
    else:
        for k in range(n):
            key = Keys.ARROW_RIGHT if (k // 20) % 2 == 0 else Keys.ARROW_LEFT
            start = time.perf_counter()
            slider.send_keys(key)
            time.sleep(max(0.0, interval - (time.perf_counter() - start)))
    wait_for(driver, f"return window.rgflowTimings.length >= {n}", timeout)
    return driver.execute_script(SCRIPT_RESULTS)


def choose(driver, index: int, target: str, timeout: float) -> None:
    """Click thumbnail `index` with the page loading into `target` (current or second)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'input[name="target"][value="{target}"]').click()
    driver.find_elements(By.CSS_SELECTOR, "#thumbs img")[index].click()
    wait_for(driver, "return window.rgflowIdle()", timeout)
    driver.find_element(By.CSS_SELECTOR, 'input[name="target"][value="current"]').click()


def screenshot(driver, path: Path, images: tuple[int, int], point: tuple[int, int], timeout: float):
    """The page with two images of --images chosen (the image and its mixing partner) and the
    pointer on the latent at `point`: a picture of the whole page for the README."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    wait_for(driver, "return window.rgflowReady === true", timeout)
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, height + chrome)
    if images:
        choose(driver, images[0], "current", timeout)
        choose(driver, images[1], "second", timeout)
    latent_map = driver.find_element(By.ID, "latent-map")
    size = driver.execute_script("return state.info.size")
    cell = 256 / size
    x, y = (point[1] + 0.5) * cell - 128, (point[0] + 0.5) * cell - 128  # from the centre
    ActionChains(driver).move_to_element_with_offset(latent_map, round(x), round(y)).perform()
    wait_for(driver, f"return state.fields.has('{point[0]},{point[1]}')", timeout)
    time.sleep(0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    ActionChains(driver).move_by_offset(0, 400).perform()  # off the map again
    print(f"wrote {path}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-c", "--checkpoint")
    what.add_argument(
        "--preset", help="instead of a checkpoint: a preset's architecture, random weights"
    )
    parser.add_argument("--model", required=True, help="name for the results file")
    parser.add_argument("--images", help="--images folder for rgflow explore")
    parser.add_argument("--samples", type=int, default=64, help="--samples for rgflow explore")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--level", type=int, help="level of the slider (default: the page's)")
    parser.add_argument("-n", type=int, default=100, help="slider moves")
    parser.add_argument("--interval", type=float, default=0.04, help="seconds between moves")
    parser.add_argument("--drive", choices=("script", "keys"), default="script", help=drive.__doc__)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--screenshot", type=Path, help="first save a picture of the page here")
    parser.add_argument("--images-shown", help="for it: thumbnails A,B as image and partner")
    parser.add_argument("--point", default="6,6", help="for it: point at this latent I,J")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rgflow-latency-") as tmp:
        if args.preset:
            args.checkpoint = random_checkpoint(args.preset, Path(tmp))
        measure(args)


def random_checkpoint(preset: str, folder: Path) -> str:
    """A checkpoint of `preset`'s architecture with random weights (the speed of decoding
    does not depend on training): perturbed coupling gains, as `rgflow bench` times."""
    import torch

    from rgflow_core.bench import _random_model
    from rgflow_core.checkpoint import save_model
    from rgflow_core.config import load_preset

    model = _random_model(load_preset(preset).model, torch.device("cpu"))
    return str(save_model(model, folder / f"{preset}.safetensors"))


def measure(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "rgflow_cli", "explore", "-c", args.checkpoint]
    command += ["--port", str(port), "--device", args.device, "--samples", str(args.samples)]
    if args.images:
        command += ["--images", args.images]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(url, server, args.timeout)
        with tempfile.TemporaryDirectory(prefix="rgflow-chrome-") as profile:
            driver = start_browser(Path(profile))
            try:
                driver.get(url)
                if args.screenshot:
                    point = tuple(int(v) for v in args.point.split(","))
                    shown = args.images_shown and tuple(map(int, args.images_shown.split(",")))
                    screenshot(driver, args.screenshot, shown, point, args.timeout)
                timings, phases, in_server = drive(
                    driver, args.level, args.n, args.interval, args.drive, args.timeout
                )
                load = os.getloadavg()[0]
                level = driver.execute_script("return state.level")
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)

    threads = os.environ.get("OMP_NUM_THREADS", "")
    result = {
        "model": args.model,
        "checkpoint": f"random weights, preset {args.preset}" if args.preset else args.checkpoint,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "omp_num_threads": threads,
        "level": level,
        "n": len(timings),
        "interval_s": args.interval,
        "drive": args.drive,
        "median_ms": round(statistics.median(timings), 2),
        "p95_ms": round(percentile(timings, 95), 2),
        "min_ms": round(min(timings), 2),
        "max_ms": round(max(timings), 2),
        "requests": len(phases),  # input events are coalesced: at most one request in flight
        "median_phases_ms": {  # of each request: wait to be sent, server answer, image shown
            name: round(statistics.median(p[k] for p in phases), 2)
            for k, name in enumerate(("wait", "server", "show"))
        },
        # of the server's answer, the time spent inside the server (its Server-Timing)
        "median_in_server_ms": round(statistics.median(in_server), 2) if in_server else None,
        "load_average_1min": round(load, 2),  # other work on the machine while measuring
        "command": shlex.join([f"OMP_NUM_THREADS={threads}", "python", *sys.argv]),
        "server_command": shlex.join(command[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"explore_latency_{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
