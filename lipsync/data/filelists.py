"""Filelists: which video folders are a dataset's train / val / test split (`filelists_<name>/{split}.txt`, one
folder per line relative to --data_root), made by make_filelists.py: seeded splits of GROUPS (speaker / source
video), so no group is in two splits; or a union of other datasets' lists.
"""
from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

from lipsync.data.folder import LATENTS_FILE, META_FILE, find_video_folders, is_finished
from lipsync.errors import UserError
from lipsync.files import atomic_path

DATASET_NAMES = ("lrs2", "hdtf", "3300", "3300_and_hdtf", "all")
UNION_PARTS = {"3300_and_hdtf": ("3300", "hdtf"), "all": ("lrs2", "3300", "hdtf")}
SPLITS = ("train", "val", "test")
DROPPED_FILE = "dropped.txt"  # folders the sync filter left out, tab, the reason
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def filelist_dir(name: str, new: bool = False) -> Path:
    """filelists_<name>/ of the current directory if it has one, else of the project root.

    The five shipped names always resolve; any other name works once its filelists_<name>/ folder exists, or
    with `new` (lists about to be made), in the current directory."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"dataset name {name!r}: use letters, digits, '_', '.' and '-' (it names filelists_<name>/)")
    for root in (Path.cwd(), PROJECT_ROOT):
        if (root / f"filelists_{name}").is_dir():
            return root / f"filelists_{name}"
    if name in DATASET_NAMES:
        return PROJECT_ROOT / f"filelists_{name}"
    if new:
        return Path.cwd() / f"filelists_{name}"
    raise UserError(f"unknown dataset name {name!r}: no filelists_{name}/ in {Path.cwd()} or {PROJECT_ROOT} "
                    f"(shipped names: {', '.join(DATASET_NAMES)})")


def read_entries(path) -> list[str]:
    """A filelist -> the first whitespace token of each line; blank lines and # comments are skipped."""
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip() and not line.lstrip().startswith("#")]


def read_filelist(name: str, split: str, data_root) -> list[Path]:
    """Video folders of `split` ("train", "val", "test") of dataset `name`, joined onto data_root.

    Entries that are not finished video folders under data_root are left out with one warning (count and the
    first few).
    """
    path = filelist_dir(name) / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"filelist {path} not found; make it with make_filelists.py ({path.parent / 'README.md'})")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} is not a folder")
    folders = [data_root / entry for entry in read_entries(path)]
    is_present = [is_finished(folder) for folder in folders]
    present = [folder for folder, ok in zip(folders, is_present) if ok]
    if len(present) < len(folders):
        missing = [str(folder) for folder, ok in zip(folders, is_present) if not ok]
        warnings.warn(f"{len(missing)} of {len(folders)} entries of {path} are not finished video folders, left out "
                      f"(first: {', '.join(missing[:3])})")
    if not present:
        raise UserError(f"{path} lists no video folder present under {data_root}")
    return present


def make_filelists(data_root, out_dir, val_groups: int | float = 0.05, test_groups: int | float = 0.05,
                   seed: int = 0, group_depth: int = 1, official_split=None, group_pattern: str | None = None,
                   command: str | None = None, min_sync_conf: float | None = None,
                   max_offset: int | None = None) -> dict[str, list[str]]:
    """Write out_dir/{train,val,test}.txt and a README.md saying how they were made; returns {split: entries}.

    min_sync_conf / max_offset (either given): folders whose sync.json (score_sync.py) has a lower confidence or a
    larger |offset|, or that were never scored, are left out of their split (so the groups of each split do not
    depend on the filter) and listed with the reason in
    out_dir/dropped.txt (lipsync.data.curation.curate).

    Video folders are grouped (by default the first `group_depth` path parts, e.g. LRS2 `<source id>/<clip>`; or
    `group_pattern`, a regex searched in the relative path whose first group, else whole match, is the group) and
    whole groups are shuffled with random.Random(seed) (stable across Python versions and platforms), so no group
    is in two splits. val_groups / test_groups: a count of groups (int) or a fraction of them (float in [0, 1)).
    official_split: a folder with LRS2's own train.txt / val.txt / test.txt, used instead of a random split.
    """
    entries = find_video_folders(data_root)
    if not entries:
        raise UserError(f"no finished video folder ({META_FILE} and {LATENTS_FILE}) under {data_root}")
    notes = [f"- data root: `{data_root}` ({len(entries)} video folders found)"]
    if official_split is not None:
        splits, how = _official_splits(entries, Path(official_split))
    else:
        splits, how = _group_splits(entries, val_groups, test_groups, seed, group_depth, group_pattern)
    notes.append(how)
    if min_sync_conf is not None or max_offset is not None:  # after the split: it stays the split of the groups
        from lipsync.data.curation import curate

        dropped = []
        for split in SPLITS:
            splits[split], out = curate(data_root, splits[split], min_sync_conf, max_offset)
            dropped += out
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(out_dir) / DROPPED_FILE) as tmp:
            tmp.write_text("".join(f"{entry}\t{reason}\n" for entry, reason in sorted(dropped)))
        notes.append(f"- sync filter (after the split): confidence >= {min_sync_conf}, |offset| <= {max_offset}: "
                     f"{len(dropped)} folders dropped (`{DROPPED_FILE}`: folder and reason)")
        if not splits["train"]:
            raise UserError(f"the sync filter dropped every training folder ({Path(out_dir) / DROPPED_FILE} says why)")
    _write_filelists(Path(out_dir), splits, notes, command)
    return splits


def _group_splits(entries, val_groups, test_groups, seed, group_depth, group_pattern) -> tuple[dict, str]:
    try:
        pattern = group_pattern and re.compile(group_pattern)
    except re.error as err:
        raise UserError(f"bad group pattern {group_pattern!r}: {err}") from None
    groups: dict[str, list[str]] = {}
    unmatched = []
    for entry in entries:
        if pattern:
            match = pattern.search(entry)
            key = match and (match.group(1) if pattern.groups else match.group(0))
        else:
            key = "/".join(entry.split("/")[:group_depth])
        if key:
            groups.setdefault(key, []).append(entry)
        else:
            unmatched.append(entry)
    if unmatched:
        raise UserError(f"{len(unmatched)} folders do not match the group pattern {group_pattern!r} "
                        f"(first: {', '.join(unmatched[:3])})")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    n_val, n_test = _num_groups(val_groups, len(names), "val"), _num_groups(test_groups, len(names), "test")
    if n_val + n_test >= len(names):
        raise UserError(f"{len(names)} groups cannot give {n_val} val + {n_test} test groups and a train split")
    chosen = {"val": names[:n_val], "test": names[n_val:n_val + n_test], "train": names[n_val + n_test:]}
    splits = {split: sorted(e for group in chosen[split] for e in groups[group]) for split in SPLITS}
    grouping = f"regex `{group_pattern}`" if group_pattern else f"first {group_depth} path part(s)"
    how = (f"- split: by group ({grouping}; {len(names)} groups), groups shuffled with random.Random({seed}): "
           + ", ".join(f"{split} {len(chosen[split])} groups" for split in SPLITS))
    return splits, how


def _num_groups(size: int | float, total: int, what: str) -> int:
    """A count of groups, or a fraction of `total` (at least one group when the fraction is > 0)."""
    if isinstance(size, float):
        if not 0 <= size < 1:
            raise UserError(f"{what} size {size}: a fraction must be in [0, 1) (or give a count)")
        return max(1, round(size * total)) if size > 0 else 0
    if size < 0:
        raise UserError(f"{what} size must be >= 0, got {size}")
    return size


def _official_splits(entries, split_dir: Path) -> tuple[dict, str]:
    on_disk = set(entries)
    splits, not_found = {}, 0
    for split in SPLITS:
        path = split_dir / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"official split file {path} not found")
        listed = read_entries(path)  # `5535415699068794046/00001 [tag]`
        splits[split] = sorted(entry for entry in listed if entry in on_disk)
        not_found += len(listed) - len(splits[split])
    unlisted = len(on_disk - set().union(*splits.values()))
    if not_found:
        warnings.warn(f"{not_found} clips of the official lists in {split_dir} have no folder under the data root")
    how = (f"- split: LRS2's official lists in `{split_dir}`; {not_found} listed clips not found under the data "
           f"root; {unlisted} folders found but in no list, left out")
    return splits, how


def union_filelists(out_dir, parts, command: str | None = None) -> dict[str, list[str]]:
    """Write out_dir/{split}.txt = union of the same split of each filelist folder in `parts` (first occurrence
    order) and a README.md. All parts' entries must be relative to one data root (e.g. symlinks side by side)."""
    parts = [Path(part) for part in parts]
    splits = {}
    for split in SPLITS:
        entries = []
        for part in parts:
            path = part / f"{split}.txt"
            if not path.is_file():
                raise UserError(f"{path} not found: make the {part.name} filelists first")
            entries += read_entries(path)
        splits[split] = list(dict.fromkeys(entries))
    train, val, test = (set(splits[split]) for split in SPLITS)
    leaked = sorted((train & val) | (train & test) | (val & test))
    if leaked:
        raise UserError(f"{len(leaked)} entries are in two splits of the parts (first: {', '.join(leaked[:3])})")
    _write_filelists(Path(out_dir), splits, [f"- union of: {', '.join(f'`{part}`' for part in parts)}"], command)
    return splits


def _write_filelists(out_dir: Path, splits: dict[str, list[str]], how: list[str], command: str | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with atomic_path(out_dir / f"{split}.txt") as tmp:
            tmp.write_text("".join(f"{e}\n" for e in splits[split]))
    readme = ["# Filelists (generated)", "",
              "Made by `lipsync.data` (`make_filelists.py`). One video folder per line, relative to the data root.",
              "The data is not redistributable: regenerate these lists on your own copy.", ""]
    if command:
        readme += ["Command:", "", f"    {command}", ""]
    readme += [*how, "- folders: " + ", ".join(f"{split} {len(splits[split])}" for split in SPLITS), ""]
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text("\n".join(readme))
