r"""Make a dataset's train/val/test filelists (seeded splits of whole speaker / source groups), or a union of them.

    python make_filelists.py --data_root /data/lrs2_latents --name lrs2 --lrs2_split_dir /data/lrs2
    python make_filelists.py --data_root /data/hdtf_latents --name hdtf --val 20 --test 20 --group_pattern '(.+)_\d+$'
    python make_filelists.py --union 3300_and_hdtf --parts 3300 hdtf
    python make_filelists.py --data_root D --name curated --min_sync_conf 3 --max_offset 6   # after score_sync.py
    python make_filelists.py --union all            # parts default to lrs2 3300 hdtf

Lists go to filelists_<name>/ (of the current directory if it has one, else of the project root) with a README.md
saying how they were made. Each filelists_<name>/README.md shipped with the code gives the command for that dataset.
"""
import argparse
import shlex
import sys

from lipsync.arguments import int_or_fraction
from lipsync.data import filelists
from lipsync.errors import UserError, cli_entry


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", help="folder whose subfolders (any depth) hold latents.safetensors")
    parser.add_argument("--name", help="dataset whose lists to make: filelists_<name>/ (shipped: "
                                       + ", ".join(filelists.DATASET_NAMES) + "; any other name is made in the "
                                       "current directory)")
    parser.add_argument("--val", type=int_or_fraction, default=0.05,
                        help="val groups: a count (20) or a fraction of the groups (0.05)")
    parser.add_argument("--test", type=int_or_fraction, default=0.05, help="test groups, like --val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the group shuffle")
    parser.add_argument("--group_depth", type=int, default=1,
                        help="a folder's group is its first N path parts (LRS2 <source id>/<clip>: 1)")
    parser.add_argument("--group_pattern",
                        help=r"regex searched in the folder's relative path; its first group (else the whole match) "
                             r"is the group, e.g. '(.+)_\d+$' = the path without its trailing clip number")
    parser.add_argument("--lrs2_split_dir", help="folder with LRS2's official train.txt, val.txt, test.txt: "
                                                 "used instead of a random split")
    parser.add_argument("--min_sync_conf", type=float,
                        help="leave out folders whose sync confidence (score_sync.py's sync.json) is below this, "
                             "or that were not scored; listed with the reason in filelists_<name>/dropped.txt")
    parser.add_argument("--max_offset", type=int,
                        help="leave out folders whose |AV offset| (frames) is above this (training shifts the audio "
                             "of the others by their offset)")
    parser.add_argument("--union", choices=tuple(filelists.UNION_PARTS), help="write the union of --parts' lists")
    parser.add_argument("--parts", nargs="+",
                        help="datasets to join (default for --union: "
                             + "; ".join(f"{name} = {' + '.join(parts)}"
                                         for name, parts in filelists.UNION_PARTS.items()) + ")")
    args = parser.parse_args(argv)
    if (args.union is None) == (args.name is None):
        parser.error("give either --name (with --data_root) or --union")
    if args.name and not args.data_root:
        parser.error("--name needs --data_root")
    return args


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "make_filelists.py", *argv])
    if args.union:
        out_dir = filelists.filelist_dir(args.union)
        parts = args.parts or filelists.UNION_PARTS[args.union]
        if args.union in parts:
            raise UserError(f"--union {args.union} cannot be one of its own parts")
        splits = filelists.union_filelists(out_dir, [filelists.filelist_dir(part) for part in parts], command)
    else:
        out_dir = filelists.filelist_dir(args.name, new=True)
        splits = filelists.make_filelists(args.data_root, out_dir, args.val, args.test, args.seed, args.group_depth,
                                          args.lrs2_split_dir, args.group_pattern, command, args.min_sync_conf,
                                          args.max_offset)
    print(f"wrote {out_dir}: " + ", ".join(f"{split} {len(entries)}" for split, entries in splits.items()))


if __name__ == "__main__":
    main()
