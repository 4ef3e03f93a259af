"""compare_manifest.py COMMITTED BUILT: how many built files have the committed pixels
(the ``file`` and ``pixels_sha256`` columns of two MANIFEST.tsv files); used by both
recipes (here and benchmarks/data/photos2/)."""

import csv
import sys


def rows(path: str) -> dict[str, str]:
    try:
        with open(path, newline="") as f:
            return {r["file"]: r["pixels_sha256"] for r in csv.DictReader(f, delimiter="\t")}
    except FileNotFoundError:
        return {}


if __name__ == "__main__":
    ref, new = rows(sys.argv[1]), rows(sys.argv[2])
    if not ref:
        sys.exit(print("no committed MANIFEST.tsv to compare with"))
    same = sum(ref.get(k) == v for k, v in new.items())
    print(
        f"pixels identical to the committed manifest: {same} of {len(ref)} "
        f"(new files {len(set(new) - set(ref))}, missing {len(set(ref) - set(new))})"
    )
