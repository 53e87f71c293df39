"""Where the reference potential's calls of an active-learning run went: per exploration and path.

    python benchmarks/pd_co_o/teacher_calls.py [runs/pd-co-o-learn]

Reads the labelled frames of a ``nemp learn`` output folder (``data/train.extxyz`` and
``data/valid.extxyz``, frames with ``al_round``) and groups them by where they were found
(``al_source``: the exploration kind, and for bands and network relaxations the path or
structure). Prints a Markdown table of teacher calls and their seconds (``al_teacher_seconds``)
per group and round, largest first.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def group_of(source: str) -> str:
    """``neb:co_hcp+o_fcc@3.2 -> co2:image3:step20`` -> ``neb co_hcp+o_fcc@3.2 -> co2``;
    ``md:is.extxyz#0:600K:step40`` -> ``md is.extxyz#0 600K``; ``neb7:image4:step0`` -> ``neb7``."""
    parts = source.split(":")
    if parts[0] in ("neb", "relax") and len(parts) > 2:
        return f"{parts[0]} {parts[1]}"
    if parts[0] == "md":
        return " ".join(parts[:3])
    return parts[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=ROOT / "runs" / "pd-co-o-learn")
    args = parser.parse_args()

    from ase.io import read

    frames = []
    for name in ("train.extxyz", "valid.extxyz"):
        path = args.run / "data" / name
        if path.exists() and path.stat().st_size:
            frames += [a for a in read(path, ":") if "al_round" in a.info]
    if not frames:
        print(f"no labelled frames in {args.run / 'data'}")
        return 1
    rounds = sorted({int(a.info["al_round"]) for a in frames})
    calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seconds: collections.Counter = collections.Counter()
    for a in frames:
        group = group_of(str(a.info["al_source"]))
        calls[group][int(a.info["al_round"])] += 1
        seconds[group] += float(a.info.get("al_teacher_seconds", 0.0))
    print("| found in | " + " | ".join(f"round {k}" for k in rounds) + " | calls | teacher s |")
    print("|---" * (len(rounds) + 3) + "|")
    for group in sorted(calls, key=lambda g: -sum(calls[g].values())):
        row = " | ".join(str(calls[group][k] or "") for k in rounds)
        print(f"| {group} | {row} | {sum(calls[group].values())} | {seconds[group]:.1f} |")
    print(f"\n{len(frames)} teacher calls in {len(rounds)} round(s), {sum(seconds.values()):.0f} s of teacher time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
