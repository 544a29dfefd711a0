"""The layers import one way: top-level scripts -> lipsync -> models. models/ holds networks only and imports
nothing of the project's; lipsync/ never imports a top-level script."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {path.stem for path in ROOT.glob("*.py")}  # demo, unet_inference, video_preprocess, ...


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of its code (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def offending_imports(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_modules(path) & forbidden
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_models_import_nothing_of_the_project():
    assert offending_imports("models", {"lipsync"} | SCRIPTS) == {}


def test_lipsync_never_imports_a_script():
    assert SCRIPTS >= {"demo", "unet_inference", "unet_wav2lip_lightning", "video_preprocess"}  # the walk works
    assert offending_imports("lipsync", SCRIPTS) == {}


def test_the_checker_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import video_preprocess\n    from lipsync.data import folder\n")
    assert imported_modules(module) >= {"video_preprocess", "lipsync"}
