"""Headless Chromium for the browser tests (marker `browser`; `make test-browser` installs Debian's chromium and
chromium-driver and runs them): ONE way to start it, and where screenshots are kept."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chromium(profile: Path, microphone: Path | None = None, window: tuple[int, int] = (1400, 1000)):
    """A Selenium driver of the OS's Chromium, headless, with a fresh profile and Chromium's fake media devices:
    the microphone plays `microphone` (a wav, looped) or beeps. Nothing is downloaded: Selenium drives the
    chromedriver Debian installs next to Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    for path in (binary, driver):
        assert Path(path).is_file(), f"{path} is missing: `make test-browser` installs Debian's chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             # no connections to Google's services: this machine's network is closed
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=no-user-gesture-required", f"--window-size={window[0]},{window[1]}",
             f"--user-data-dir={profile}"]
    if microphone is not None:
        flags.append(f"--use-file-for-fake-audio-capture={microphone}")
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def artifacts() -> Path:
    """Where screenshots are kept: $ARTIFACTS_DIR/browser (CI sets it), else test-artifacts/browser."""
    return Path(os.environ.get("ARTIFACTS_DIR") or ROOT / "test-artifacts") / "browser"
