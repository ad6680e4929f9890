"""Summarise an ncu per-SASS export (benchmarks/profile.sh's sass.csv): where the
warps stall, which opcodes are executed, and how the executed instructions split by execution
count (each count is one code region: a loop body, a per-block path, a prologue).

    python benchmarks/sass_summary.py sass.csv [--regions 8]
"""

import argparse
import csv
from collections import Counter, defaultdict


def opcode(source):
    words = source.split()
    if not words:
        return "?"
    op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return op.split(".")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--regions", type=int, default=8)
    args = ap.parse_args()
    with open(args.csv) as fh:
        rows = list(csv.reader(fh))
    header = next(i for i, r in enumerate(rows) if "Address" in r and "Source" in r)
    ix = {name: i for i, name in enumerate(rows[header])}
    data = [r for r in rows[header + 1:] if len(r) == len(rows[header])]

    def num(r, col):
        return int(r[ix[col]] or 0) if col in ix else 0

    stalls = [c for c in rows[header] if c.startswith("stall_") and "Not Issued" not in c]
    totals = {c: sum(num(r, c) for r in data) for c in stalls}
    samples = sum(totals.values()) or 1
    print("stall reasons (share of samples):")
    for c, v in sorted(totals.items(), key=lambda x: -x[1])[:10]:
        print(f"  {c:24s} {v / samples:6.1%}")

    executed = Counter()
    regions = defaultdict(lambda: [0, 0])  # execution count -> [lines, instructions]
    for r in data:
        n = num(r, "Instructions Executed")
        executed[opcode(r[ix["Source"]])] += n
        regions[n][0] += 1
        regions[n][1] += n
    total = sum(executed.values()) or 1
    print(f"executed warp instructions: {total:,}")
    for op, v in executed.most_common(12):
        print(f"  {op:10s} {v / total:6.1%}")
    print("regions (lines executed the same number of times):")
    for n, (lines, insts) in sorted(regions.items(), key=lambda x: -x[1][1])[:args.regions]:
        print(f"  x{n:<9d} {lines:5d} lines  {insts / total:6.1%} of instructions")


if __name__ == "__main__":
    main()
