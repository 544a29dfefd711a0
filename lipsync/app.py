"""The web app: lip-sync an uploaded face video (or image) to uploaded or recorded speech, in the browser.

    models = load_models(checkpoint_path)                       # once, at start-up, shared by every request
    service = LipSyncService(models, files_dir, max_seconds=60) # the request handler
    blocks = build_blocks(service)                              # the page
    blocks.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", theme=THEME, css=CSS)
    # serve(checkpoint_path, files_dir, host, port, ...) does all of this; app.py calls it

The page: the inputs (a face video or an image; speech from a file or the microphone), the options users change
(reference frame, box padding, colour match, crf, crop size), a progress bar fed by lip_sync's on_progress (step
names, frame counts), a Cancel button, and the result (player, download, the run's per-stage summary).

Every request runs lipsync.inference.lip_sync, the function unet_inference.py runs, on the models loaded at
start-up. Requests wait in Gradio's queue and run one at a time; a lock also holds back the next run while a
cancelled one is still stopping (within a batch). Bad input is a one-line message in the page, an unexpected
failure too (its traceback goes to the server log), and the server goes on serving. Uploads and results live in
one folder of the app's own (GRADIO_TEMP_DIR): files older than `keep_minutes` are deleted while it runs, the
folder at exit (app.py). A result is written under a temp name and handed to the page only once complete; a
cancelled or failed run leaves no file.
"""
from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from lipsync.errors import Cancelled, UserError
from lipsync.inference import LipSyncModels, LipSyncOptions, format_summary, lip_sync, load_models

log = logging.getLogger("lipsync.app")

DEFAULTS = LipSyncOptions()
# on_progress steps (lipsync.inference.options) as the page names them
STEP_NAMES = {"load models": "loading the models", "encode audio": "encoding the speech",
              "detect": "finding the face", "lip sync": "lip-syncing", "finish": "writing the video"}
# system fonts: the default theme fetches Google Fonts, which an offline machine cannot reach
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = "#summary textarea {font-family: ui-monospace, Consolas, monospace; font-size: 0.8em}"


def crop_sizes(models: LipSyncModels) -> list[int]:
    """Face crop sizes the models can run, from half to twice the checkpoint's own: multiples of what the codec
    and the UNet's downsampling divide evenly (the UNet is convolutional; its attention sees any latent size)."""
    step = models.codec.downsample_factor * 2 ** (len(models.unet.config.down_block_types) - 1)
    sizes = {max(step, round(models.image_size * quarter / 4 / step) * step) for quarter in range(2, 9)}
    return sorted(sizes | {models.image_size})


def _seconds(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"


class LipSyncService:
    """The request handler: one lip_sync run at a time on the shared models, results written into `results_dir`
    (inside Gradio's cache folder, so the page serves them as they are, and Gradio's sweep deletes them)."""

    def __init__(self, models: LipSyncModels, results_dir, max_seconds: float | None = 60.0,
                 keep_minutes: float = 60.0, batch_size: int = DEFAULTS.batch_size):
        self.models = models
        self.results_dir = Path(results_dir)
        self.max_seconds = max_seconds
        self.keep_minutes = keep_minutes
        self.batch_size = batch_size
        self.crop_sizes = crop_sizes(models)
        self._lock = threading.Lock()  # one run on the models at a time, a cancelled one included
        self._requests = 0
        self._running: dict[threading.Event, str | None] = {}  # each running request's cancel -> its session

    async def run(self, face_video, face_image, speech, ref_frame, pad_top, pad_bottom, pad_left, pad_right,
                  color_match, crf, crop_size, request: gr.Request, progress=gr.Progress()):
        """The Run button and the API's /lip_sync: -> (result video, the same file to download, summary).

        The work runs in a thread; when Gradio cancels this coroutine (the Cancel button, a client's cancel),
        the thread is told through lip_sync's `cancel` and stops within a batch, leaving no file."""
        self._requests += 1
        number = self._requests
        cancel = threading.Event()
        self._running[cancel] = request.session_hash if request is not None else None
        work = asyncio.ensure_future(asyncio.to_thread(
            self._run, number, face_video, face_image, speech, ref_frame, (pad_top, pad_bottom, pad_left, pad_right),
            color_match, crf, crop_size, cancel, progress))
        work.add_done_callback(lambda task: task.cancelled() or task.exception())  # seen, not logged twice
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            del self._running[cancel]

    def cancel_session(self, request: gr.Request) -> None:
        """The page was closed: stop its running requests."""
        for cancel, session in list(self._running.items()):
            if request is not None and session == request.session_hash:
                cancel.set()

    def cancel_all(self) -> None:
        """The server is stopping: stop every running request."""
        for cancel in list(self._running):
            cancel.set()

    def _run(self, number, face_video, face_image, speech, ref_frame, pads, color_match, crf, crop_size,
             cancel: threading.Event, progress):
        names = {}  # upload path -> the name the user gave it, for messages

        def message(err: Exception) -> str:
            text = str(err)
            for path, name in names.items():
                text = text.replace(path, name)
            return html.escape(text)

        try:
            face, speech, models, options = self._check(face_video, face_image, speech, ref_frame, pads,
                                                        color_match, crf, crop_size, names)
        except UserError as err:
            log.info("request %d: refused: %s", number, err)
            raise gr.Error(message(err), duration=None, print_exception=False) from None
        if not self._lock.acquire(blocking=False):
            progress(None, desc="waiting for the previous run to stop")
            self._lock.acquire()
        folder = None
        start = time.perf_counter()
        written = [0, 0]  # output frames written, of
        try:
            if cancel.is_set():
                raise Cancelled("cancelled before it started")
            log.info("request %d: %s + %s, %s", number, names[face], names[speech], options)

            def on_progress(step: str, done: int, total: int) -> None:
                if step == "lip sync":
                    written[:] = done, total
                if total:
                    progress((done, total), desc=STEP_NAMES.get(step, step), unit="frames")
                else:
                    progress(None, desc=STEP_NAMES.get(step, step))

            folder = Path(tempfile.mkdtemp(prefix="result_", dir=self.results_dir))
            outfile = folder / f"{Path(names[face]).stem}_lipsync.mp4"
            summary = lip_sync(models, face, speech, outfile, on_progress=on_progress, cancel=cancel,
                               max_seconds=self.max_seconds, batch_size=self.batch_size, progress=False,
                               **options)
        except UserError as err:
            log.info("request %d: bad input after %s: %s", number, _seconds(start), err)
            raise gr.Error(message(err), duration=None, print_exception=False) from None
        except Cancelled:
            log.info("request %d: cancelled after %s, %d of %d frames written, no file kept", number,
                     _seconds(start), *written)
            raise gr.Error("Cancelled: nothing was written.", title="Cancelled", print_exception=False) from None
        except Exception as err:  # a bug: the server log gets the traceback, the page one line
            log.exception("request %d: failed after %s", number, _seconds(start))
            first_line = (str(err).splitlines() or [""])[0]
            raise gr.Error(f"Internal error ({type(err).__name__}: {html.escape(first_line)}); the server log has "
                           f"the details.", duration=None, print_exception=False) from None
        finally:
            self._lock.release()
            if folder is not None and not any(folder.iterdir()):
                folder.rmdir()  # lip_sync removed its temp file: nothing is left behind
        log.info("request %d: %d frames in %s", number, summary["frames"], _seconds(start))
        summary["outfile"] = outfile.name  # the page shows no server paths
        return str(outfile), str(outfile), format_summary(summary)

    def _check(self, face_video, face_image, speech, ref_frame, pads, color_match, crf, crop_size,
               names: dict) -> tuple[str, str, LipSyncModels, dict]:
        """The request's inputs (uploads as Gradio stored them: {"path", "orig_name", ...}) -> (face path, speech
        path, the models at the crop size, lip_sync options), or a UserError. names: upload path -> its name."""
        if face_video and face_image:
            raise UserError("Give either a face video or an image, not both (clear one).")
        face = face_video or face_image
        if not face:
            raise UserError("Give a face: upload a video or an image.")
        if not speech:
            raise UserError("Give speech: upload an audio file (or a video with sound) or record with the "
                            "microphone.")
        paths = []
        for upload, what in ((face, "face"), (speech, "speech")):
            if not isinstance(upload, dict) or not upload.get("path"):  # an API caller's mistake
                raise UserError(f"The {what} must be an uploaded file (gradio_client: handle_file(path)).")
            path = str(upload["path"])
            names[path] = Path(upload.get("orig_name") or path).name
            try:
                os.utime(path)  # in use: Gradio's sweep ages files by their change time
            except OSError:
                raise UserError(f"The {what} file is no longer on the server (uploads are kept a limited time): "
                                f"upload it again.") from None
            paths.append(path)
        options = {"ref_frame": None if ref_frame is None else _whole(ref_frame, "Reference frame", low=0),
                   "pads": tuple(_whole(pad, "Box padding") for pad in pads), "color_match": bool(color_match),
                   "crf": _whole(crf, "crf", low=0, high=51)}
        crop_size = self.models.image_size if crop_size is None else crop_size
        if crop_size not in self.crop_sizes:
            raise UserError(f"Crop size must be one of {', '.join(map(str, self.crop_sizes))}, got {crop_size}.")
        # the same modules at another crop size (CUDA graphs are kept per size)
        models = dataclasses.replace(self.models, image_size=int(crop_size))
        return paths[0], paths[1], models, options


def _whole(value, what: str, low: int | None = None, high: int | None = None) -> int:
    """A form's number as an int in [low, high], or a UserError."""
    if not isinstance(value, (int, float)) or value != int(value) or (low is not None and value < low) or (
            high is not None and value > high):
        bounds = f" from {low} to {high}" if high is not None else f" >= {low}" if low is not None else ""
        raise UserError(f"{what} must be a whole number{bounds}, got {value!r}.")
    return int(value)


def build_blocks(service: LipSyncService) -> gr.Blocks:
    """The page around `service`. Gradio reads GRADIO_TEMP_DIR (where uploads go) when the blocks are made."""
    models, max_seconds = service.models, service.max_seconds
    keep = int(service.keep_minutes * 60)
    with gr.Blocks(title="Latent Wav2Lip", analytics_enabled=False,
                   delete_cache=(max(60, keep // 10), keep)) as blocks:
        limit = f" up to {max_seconds:g} s" if max_seconds else ""
        gr.Markdown(f"# Latent Wav2Lip\nUpload a face video (or an image) and speech{limit}; the lower face of "
                    f"the result speaks it. Runs on {models.device}, {models.image_size} px face crops; requests "
                    f"wait their turn.")
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Face video"):
                        face_video = gr.Video(label="Face video", sources=["upload"], elem_id="face_video")
                    with gr.Tab("Face image"):
                        face_image = gr.Image(label="Face image", type="filepath", sources=["upload"],
                                              elem_id="face_image")
                speech = gr.Audio(label="Speech (a file, or record)", type="filepath",
                                  sources=["upload", "microphone"], elem_id="speech")
                with gr.Accordion("Options", open=False):
                    ref_frame = gr.Number(label="Reference frame (empty: each frame's own face)", value=None,
                                          precision=0, minimum=0)
                    with gr.Row():
                        pads = [gr.Number(label=f"Box padding {side} (px)", value=value, precision=0)
                                for side, value in zip(("top", "bottom", "left", "right"), DEFAULTS.pads)]
                    color_match = gr.Checkbox(label="Match the lower face's colours to the input's",
                                              value=DEFAULTS.color_match)
                    crf = gr.Slider(0, 51, value=DEFAULTS.crf, step=1, label="Quality: x264 crf (0 best, 18 looks "
                                                                               "lossless, 51 smallest)")
                    crop_size = gr.Dropdown(
                        [(f"{size} px" + (" (the checkpoint's)" if size == models.image_size else ""), size)
                         for size in service.crop_sizes], value=models.image_size, label="Face crop size")
                with gr.Row():
                    run = gr.Button("Lip-sync", variant="primary", elem_id="run")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, elem_id="result")
                download = gr.File(label="Download", interactive=False, elem_id="download")
                summary = gr.Textbox(label="Run summary", lines=12, max_lines=30, interactive=False,
                                     elem_id="summary")
        # preprocess=False: the handler gets the uploads as Gradio stored them ({"path", "orig_name", ...}) and
        # checks them itself; gr.Image's own check would answer an unreadable image with a bare "Error"
        event = run.click(service.run, [face_video, face_image, speech, ref_frame, *pads, color_match, crf,
                                        crop_size], [result, download, summary], api_name="lip_sync",
                          concurrency_limit=1, preprocess=False)
        stop.click(None, cancels=[event])
        blocks.unload(service.cancel_session)
    return blocks


def _check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None


def serve(checkpoint_path, files_dir, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          max_seconds: float | None = 60.0, keep_minutes: float = 60.0, max_queue: int = 16,
          device: str = "auto", compile: bool = False, batch_size: int = DEFAULTS.batch_size) -> None:
    """Load the models, start the server, block until interrupted (Ctrl-C, or SystemExit, which app.py raises on
    SIGTERM); running requests are then cancelled. files_dir: the app's folder for uploads and results, named by
    GRADIO_TEMP_DIR from before Gradio was imported (some of its modules read it then); the caller removes it."""
    if Path(os.environ.get("GRADIO_TEMP_DIR", "")).resolve() != Path(files_dir).resolve():
        raise ValueError("serve() needs GRADIO_TEMP_DIR=files_dir set before gradio is imported")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("httpx", "gradio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()
    _check_port(host, port)  # before the models load: a busy port fails in a second, not after them
    models = load_models(checkpoint_path, device=device, compile=compile)
    log.info("models loaded in %s: %d px crops on %s (%s)", _seconds(start), models.image_size, models.device,
             str(models.dtype).replace("torch.", ""))
    service = LipSyncService(models, files_dir, max_seconds, keep_minutes, batch_size)
    blocks = build_blocks(service)
    blocks.queue(default_concurrency_limit=1, max_size=max_queue)
    try:
        try:
            blocks.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                          show_error=False, ssr_mode=False, theme=THEME, css=CSS, footer_links=["api"])
        except OSError as err:
            raise UserError(f"cannot serve on {host}:{port}: {str(err).splitlines()[0]}") from None
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: anyone who can reach this machine can use the app", host)
        log.info("serving on %s (started in %s); Ctrl-C stops", blocks.local_url.rstrip("/"), _seconds(start))
        if blocks.share_url:
            log.info("public link: %s", blocks.share_url)
        blocks.block_thread()
    finally:
        service.cancel_all()
        blocks.close()
