"""Debian's Chromium, headless, driven by Selenium: shared by the explorer's browser test
and its latency benchmark (`rgflow explore --open` uses the user's own browser instead).

The flags keep Chromium off the network (this machine has none), away from the GPU and
without a sandbox (it runs as root in CI).
"""

import shutil
import socket
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1100",
]


def find_chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and of chromedriver.

    Raises:
        LookupError: what is missing and how to install it.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise LookupError(
            "selenium is not installed (pip install selenium, or the dev extra)"
        ) from None
    names = ("chromium", "chromium-browser", "google-chrome")
    chromium = next(filter(None, map(shutil.which, names)), None)
    if chromium is None:
        raise LookupError("no chromium browser on PATH (apt-get install chromium)")
    driver = shutil.which("chromedriver")
    if driver is None:
        raise LookupError("no chromedriver on PATH (apt-get install chromium-driver)")
    return chromium, driver


def start_browser(profile: Path):
    """A headless Chromium with a fresh profile folder, as a Selenium WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = find_chromium()
    options = webdriver.ChromeOptions()
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=options)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
