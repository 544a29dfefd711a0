"""Where torch.compile's work is kept between runs, and what this machine has compiled before.

torch.compile keeps what it compiles (inductor's FX graph cache, AOTAutograd's cache, the Triton kernels and
their autotuning results) in a folder, by default in the temp dir (/tmp/torchinductor_<user>), which a reboot or
a tmp cleaner empties. `use_persistent_compile_cache()` points it at one stable folder per user instead, so only
the first compiled run on a machine pays for compilation; later runs load the compiled kernels (they still
trace the Python code, a few seconds). Every caller of torch.compile in this project calls it first.

    $LIPSYNC_CACHE_DIR               (if set) else
    $XDG_CACHE_HOME/lipsync          (if set) else
    ~/.cache/lipsync
        torch_compile/               TORCHINDUCTOR_CACHE_DIR (unless already set): FX graphs, AOTAutograd, Triton
        compiled/<key>.json          one per configuration lip_sync has compiled (`compiled_before`)

Copying that folder to another machine with the same GPU, driver, torch and Triton moves the cache with it.
Delete it to start cold; set TORCHINDUCTOR_CACHE_DIR to keep torch's own choice.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lipsync.files import atomic_path


def cache_root() -> Path:
    """The project's cache folder (see the module docstring); not created here."""
    if os.environ.get("LIPSYNC_CACHE_DIR"):
        return Path(os.environ["LIPSYNC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lipsync"


def use_persistent_compile_cache() -> Path:
    """Point torch.compile's caches at cache_root()/torch_compile (created), unless TORCHINDUCTOR_CACHE_DIR names
    another folder than torch's temp-dir default; returns the folder in use. Call before the first torch.compile
    call of the process (torch reads the variable whenever it opens its cache, and writes its default into it)."""
    current, default = os.environ.get("TORCHINDUCTOR_CACHE_DIR"), _torch_default_cache_dir()
    if current is None or (default and os.path.abspath(current) == os.path.abspath(default)):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "torch_compile")
    folder = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _torch_default_cache_dir() -> str:
    """The temp-dir folder torch picks (and stores in TORCHINDUCTOR_CACHE_DIR) when nobody chose one."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        return default_cache_dir()
    except ImportError:  # another torch layout: only an unset variable counts as torch's choice
        return ""


def _marker(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_root() / "compiled" / f"{digest}.json"


def compiled_before(key: dict) -> bool:
    """Whether remember_compiled(key) ran on this machine, with this cache folder (a compiled run of exactly this
    configuration finished here: its kernels are likely on disk)."""
    return _marker(key).is_file()


def remember_compiled(key: dict) -> None:
    """Record that `key` (a JSON-able description of what was compiled: versions, device, shapes) compiled."""
    path = _marker(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(key, sort_keys=True, default=str, indent=1) + "\n")
