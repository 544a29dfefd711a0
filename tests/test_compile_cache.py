"""Where compiled work is kept (lipsync.compile_cache). That torch really reuses the folder's kernels in a second
process is measured on the GPU (bench/gpu_speed.sh: --compile cold, then warm): inductor's CPU compilation takes
minutes on a 2-core machine."""
import os
from pathlib import Path

from lipsync.compile_cache import cache_root, compiled_before, remember_compiled, use_persistent_compile_cache


def test_cache_root_follows_lipsync_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("LIPSYNC_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "lipsync"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lipsync"
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_torch_compile_cache_moves_out_of_the_temp_dir_unless_the_user_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "lipsync"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch stores once it picked its own
    assert use_persistent_compile_cache() == tmp_path / "lipsync" / "torch_compile"
    assert cache_dir() == str(tmp_path / "lipsync" / "torch_compile")  # where inductor now keeps its work
    assert (tmp_path / "lipsync" / "torch_compile").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users_choice"))
    assert use_persistent_compile_cache() == tmp_path / "users_choice"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "users_choice")


def test_markers_remember_each_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path))
    key = {"torch": "2.11", "image_size": 768, "unet": {"block_out_channels": [160, 320, 640]}}
    assert not compiled_before(key)
    remember_compiled(key)
    assert compiled_before(dict(key)) and not compiled_before(dict(key, image_size=256))
    assert [p.parent.name for p in Path(tmp_path).rglob("*.json")] == ["compiled"]
