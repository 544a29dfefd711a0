"""The web app in a real browser: headless Chromium from the OS packages (/usr/bin/chromium and its chromedriver),
driven by Selenium, against app.py serving the tiny checkpoint on the CPU. Upload (or record, with Chromium's
fake microphone), run, watch the progress, play the result and read its duration from the page, cancel.

Not part of `make test` (marker `browser`, deselected in pyproject.toml): `make test-browser` installs Chromium and
Selenium and runs it. The screenshot of the finished page is kept in $ARTIFACTS_DIR (default: test-artifacts/ in
the repository); the test prints where.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from lipsync.audio import load_audio, write_wav
from lipsync.video_io import iter_frames

import media
from app_server import AppServer
from browser import artifacts, chromium

pytestmark = pytest.mark.browser

STEPS = ("encoding the speech", "finding the face", "lip-syncing", "writing the video")


@pytest.fixture(scope="module")
def server(generator_checkpoint, tmp_path_factory):
    app = AppServer(generator_checkpoint, tmp_path_factory.mktemp("browser_app"), "--batch_size", 8)
    yield app.wait_until_serving()
    app.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The GRID clip as an H.264 + AAC mp4 (what a browser previews), its first frame, 2 s and 4 s of speech."""
    import cv2

    root = tmp_path_factory.mktemp("browser_files")
    frames = list(iter_frames(media.GRID.path))
    media.write_media(root / "face.mp4", frames, 25.0, load_audio(media.GRID.path))
    cv2.imwrite(str(root / "face.png"), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    speech = media.real_speech()
    write_wav(root / "speech.wav", speech[8000:40000])  # 2 s
    write_wav(root / "long_speech.wav", speech[:64000])  # 4 s
    return root


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium_profile"))  # the microphone beeps
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 120, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Page:
    """The app's page in the browser, by the elem_ids lipsync/app.py gives its components."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.common.by import By

        self.driver, self.by = driver, By
        driver.get(url)
        wait_for(lambda: self.find("#run"), what="the page to load")

    def find(self, css: str):
        found = [element for element in self.driver.find_elements(self.by.CSS_SELECTOR, css)]
        return found[0] if found else None

    def upload(self, component: str, path: Path) -> None:
        self.find(f"#{component} input[type=file]").send_keys(str(path))

    def clear(self, component: str) -> None:
        self.find(f"#{component} button[aria-label='Clear']").click()
        wait_for(lambda: self.find(f"#{component} input[type=file]"), what=f"{component} to clear")

    def click_tab(self, label: str) -> None:
        tabs = self.driver.find_elements(self.by.XPATH, f"//button[@role='tab' and normalize-space()='{label}']")
        tabs[0].click()

    def record_speech(self, seconds: float) -> None:
        """Chromium's fake microphone (a beep every second), recorded through the page's own controls."""
        self.find("#speech button[aria-label='Record audio']").click()
        wait_for(lambda: self.find("#speech button.record-button"), what="the record button").click()
        time.sleep(seconds)
        wait_for(lambda: self.find("#speech button.stop-button"), what="the stop button").click()
        wait_for(lambda: self.find("#speech audio") or self.find("#speech [data-testid='waveform-controls']"),
                 what="the recording")

    def run_and_watch(self, until, timeout: float = 300) -> list[str]:
        """Click Run; -> the step names the progress bar showed, in order, until `until()` is true."""
        self.find("#run").click()
        seen = []
        deadline = time.monotonic() + timeout
        while not until():
            text = self.driver.execute_script("return document.body.innerText")
            seen += [step for step in STEPS if step in text and step not in seen]
            assert time.monotonic() < deadline, f"timed out; the page showed {seen}"
            time.sleep(0.05)
        return seen

    def result_video(self):
        video = self.find("#result video")
        return video if video is not None and video.get_attribute("src") else None

    def media_state(self, video) -> dict:
        return self.driver.execute_script(
            "const v = arguments[0]; return {ready: v.readyState, duration: v.duration, time: v.currentTime, "
            "paused: v.paused, error: v.error && v.error.code}", video)

    def screenshot(self, path: Path) -> None:
        """The whole page, from its top."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1400, height + 200)  # the window's own bars take part of its height
        self.driver.execute_script("window.scrollTo(0, 0)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)


def test_upload_run_watch_progress_and_play_the_result(server, browser, files):
    page = Page(browser, server.url)
    page.upload("face_video", files / "face.mp4")
    page.upload("speech", files / "speech.wav")
    wait_for(lambda: page.find("#face_video video") and page.find("#speech audio, #speech .waveform-container"),
             what="the uploads' previews")

    seen = page.run_and_watch(until=page.result_video)
    assert "lip-syncing" in seen and seen == sorted(seen, key=STEPS.index), seen

    video = page.result_video()
    state = wait_for(lambda: (s := page.media_state(video))["ready"] >= 1 and s, what="the result's metadata")
    assert state["error"] is None and state["duration"] == pytest.approx(2.0, abs=0.05)
    browser.execute_script("arguments[0].muted = true; return arguments[0].play()", video)
    wait_for(lambda: page.media_state(video)["time"] > 0.2, timeout=30, what="the result to play")
    assert not page.media_state(video)["paused"]

    link = page.find("#download a")
    assert link is not None and link.get_attribute("href").endswith("/face_lipsync.mp4")
    summary = page.find("#summary textarea").get_attribute("value")
    assert summary.startswith("wrote face_lipsync.mp4: 50 frames") and "faces found in 50/50 frames" in summary

    browser.execute_script("arguments[0].pause(); arguments[0].currentTime = 1.0", video)
    shot = artifacts() / "webapp.png"
    page.screenshot(shot)
    print(f"\nscreenshot of the finished page: {shot}")
    assert shot.stat().st_size > 10_000


def test_an_image_and_a_microphone_recording(server, browser, files):
    page = Page(browser, server.url)
    page.click_tab("Face image")
    page.upload("face_image", files / "face.png")
    page.record_speech(2.0)
    page.run_and_watch(until=page.result_video)

    video = page.result_video()
    state = wait_for(lambda: (s := page.media_state(video))["ready"] >= 1 and s, what="the result's metadata")
    summary = page.find("#summary textarea").get_attribute("value")
    frames = int(re.match(r"wrote face_lipsync.mp4: (\d+) frames", summary).group(1))
    assert "1 source frames" in summary and frames >= 40  # 2 s of recording (and the clicks' latency) at 25 fps
    assert state["duration"] == pytest.approx(frames / 25, abs=0.1)


def test_cancel_stops_the_run_and_the_next_one_succeeds(server, browser, files):
    shutil.copy(files / "face.mp4", files / "cancel_me.mp4")
    page = Page(browser, server.url)
    page.upload("face_video", files / "cancel_me.mp4")
    page.upload("speech", files / "long_speech.wav")  # 100 frames
    wait_for(lambda: page.find("#face_video video"), what="the upload's preview")
    page.run_and_watch(until=lambda: "lip-syncing" in browser.execute_script("return document.body.innerText"))
    page.find("#cancel").click()

    wait_for(lambda: "cancelled after" in server.log, what="the server to stop the run")
    written, total = map(int, re.search(r"cancelled after [\d.]+ s, (\d+) of (\d+) frames", server.log).groups())
    assert total == 100 and written < total
    assert page.result_video() is None
    assert not [path for path in server.root.rglob("*") if ".tmp" in path.name or "cancel_me_lipsync" in path.name]

    page.clear("speech")  # the face upload stays
    page.upload("speech", files / "speech.wav")
    page.run_and_watch(until=page.result_video)
    summary = page.find("#summary textarea").get_attribute("value")
    assert summary.startswith("wrote cancel_me_lipsync.mp4: 50 frames")


def test_leaving_the_page_cancels_its_run(server, browser, files):
    shutil.copy(files / "face.mp4", files / "left_behind.mp4")
    page = Page(browser, server.url)
    page.upload("face_video", files / "left_behind.mp4")
    page.upload("speech", files / "long_speech.wav")
    wait_for(lambda: page.find("#face_video video"), what="the upload's preview")
    page.run_and_watch(until=lambda: "lip-syncing" in browser.execute_script("return document.body.innerText"))
    browser.get("about:blank")

    number = int(re.search(r"request (\d+): left_behind.mp4 \+", server.log).group(1))
    wait_for(lambda: f"request {number}: cancelled after" in server.log, timeout=120,
             what="the server to stop the run of a page that is gone")
    assert not [path for path in server.root.rglob("*") if "left_behind_lipsync" in path.name]
