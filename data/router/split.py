"""Split the project's own router questions into train.jsonl and test.jsonl.

This ran once, before any router rule or classifier existed (see README.md). Running
it again with ``--check`` rebuilds the split from the union of the two files and
confirms it is unchanged; without ``--check`` it reads ``--source`` and writes both
files.

    python data/router/split.py --check
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20250611
TEST_FRACTION = 0.3


def split(rows: list[dict], *, seed: int = SEED, test_fraction: float = TEST_FRACTION):
    """Stratified by label: each label's rows, in id order, shuffled by one seeded RNG."""
    rng = random.Random(seed)
    train: list[dict] = []
    test: list[dict] = []
    for label in sorted({r["label"] for r in rows}):
        group = sorted((r for r in rows if r["label"] == label), key=lambda r: r["id"])
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        test.extend(group[:n_test])
        train.extend(group[n_test:])
    return sorted(train, key=lambda r: r["id"]), sorted(test, key=lambda r: r["id"])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="all own questions, one JSON object a line")
    parser.add_argument("--check", action="store_true", help="verify the committed split")
    args = parser.parse_args()
    train_path, test_path = HERE / "train.jsonl", HERE / "test.jsonl"
    if args.check:
        train, test = read(train_path), read(test_path)
        again = split(train + test)
        ok = again == (train, test)
        print("split unchanged" if ok else "split differs from split.py's output")
        return 0 if ok else 1
    if args.source is None:
        parser.error("give --source or --check")
    train, test = split(read(args.source))
    write(train_path, train)
    write(test_path, test)
    print(f"train: {len(train)} rows, test: {len(test)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
