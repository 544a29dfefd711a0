"""app.py as a real server process for the tests: started on a free localhost port with its own temp folder,
its log kept, stopped with SIGTERM as a service manager would stop it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`python app.py --checkpoint_path CKPT --port P ARGS...` with TMPDIR = folder/tmp (so the app's own folder
    of uploads and results lands there) and its output in folder/server.log."""

    def __init__(self, checkpoint, folder: Path, *args, port: int | None = None):
        self.folder = Path(folder)
        self.tmp = self.folder / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "server.log"
        env = {**os.environ, "TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), "--checkpoint_path", str(checkpoint), "--port",
                 str(self.port), *map(str, args)], cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_until_serving(self, timeout: float = 300) -> "AppServer":
        deadline = time.monotonic() + timeout
        while "serving on" not in self.log:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"app.py did not serve within {timeout} s:\n{self.log}")
            time.sleep(0.1)
        return self

    @property
    def root(self) -> Path:
        """The app's folder of uploads and results (GRADIO_TEMP_DIR)."""
        (folder,) = self.tmp.glob("lipsync_app_*")
        return folder

    def client(self, downloads: Path):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(downloads))

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
