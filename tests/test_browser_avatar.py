"""The page in a real browser: Debian's Chromium (headless, driven by Selenium) with a wav of real speech as its
fake microphone, against a real server on localhost. Marked `browser`: `make test` deselects it, `make
test-browser` installs Chromium and runs it. The screenshot is kept in tests/browser.py's artifacts folder."""
from __future__ import annotations

import time

import pytest
from test_avatar_server import WAIT_S, Server, avatars_dir, models  # noqa: F401 (fixtures)

from lipsync.audio import write_wav
from lipsync.realtime.server import ServerOptions, create_app, load_avatars
from lipsync.realtime.streaming import StreamOptions

from browser import artifacts, chromium

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def server(models, avatars_dir):  # noqa: F811
    running = Server(create_app(models, load_avatars(avatars_dir, models),
                                ServerOptions(stream=StreamOptions(silence_db=None))))
    yield running
    running.stop()


def test_the_page_streams_the_microphone_and_shows_frames(server, speech, tmp_path):
    microphone = tmp_path / "speech.wav"
    write_wav(microphone, speech)  # the fake microphone plays it (looped)
    driver = chromium(tmp_path / 'profile', microphone, window=(800, 700))
    try:
        driver.get(f"http://127.0.0.1:{server.port}/?avatar=grid2&autostart=mic")
        deadline = time.monotonic() + WAIT_S
        state = {}
        while time.monotonic() < deadline:
            state = driver.execute_script("const s = window.avatarState; return s && {received: s.received, "
                                          "shown: s.shown, last: s.lastIndex, status: "
                                          "document.getElementById('status').textContent};")
            if state and state["shown"] >= 25:
                break
            time.sleep(0.2)
        assert state and state["shown"] >= 25, state
        assert state["last"] >= state["received"] - 1  # frames arrive in order, none lost
        pixels = driver.execute_script(
            "const c = document.getElementById('view'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let sum = 0, sq = 0;"
            "for (let i = 0; i < d.length; i += 4) { sum += d[i]; sq += d[i] * d[i]; }"
            "const n = d.length / 4; return [c.width, c.height, sum / n, Math.sqrt(sq / n - (sum / n) ** 2)];")
        width, height, mean, std = pixels
        assert (width, height) == (360, 288) and mean > 20 and std > 10  # a face, not a black canvas
        shot = artifacts() / "avatar_page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot} ({state['status']})")
    finally:
        driver.quit()


def test_the_page_streams_a_file_to_its_end_and_gets_every_frame(server, speech, tmp_path):
    clip = tmp_path / "clip.wav"
    write_wav(clip, speech[:32000])  # 2 s
    driver = chromium(tmp_path / 'profile', clip, window=(800, 700))
    try:
        driver.get(f"http://127.0.0.1:{server.port}/?avatar=grid")
        deadline = time.monotonic() + WAIT_S
        while not driver.execute_script("return document.getElementById('avatar').options.length"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        driver.find_element("id", "file").send_keys(str(clip))
        state = {}
        while time.monotonic() < deadline:
            state = driver.execute_script("const s = window.avatarState; return {ended: s.ended, received: "
                                          "s.received, end: s.endFrames, last: s.lastIndex, late: s.late, "
                                          "socket: s.ws && s.ws.readyState, audio: s.ctx && s.ctx.state, "
                                          "time: s.ctx && s.ctx.currentTime, status: "
                                          "document.getElementById('status').textContent};")
            if state["ended"]:
                break
            time.sleep(0.2)
        # the file played to its end; every frame the server made for the audio the page sent arrived, in order
        assert state["ended"] and state["received"] == state["end"] == state["last"] + 1, str(state)
        assert 45 <= state["received"] <= 50, state  # 2 s at 25 fps, less the page's last partial 20 ms block
    finally:
        driver.quit()
