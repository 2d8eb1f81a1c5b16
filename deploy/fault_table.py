#!/usr/bin/env python3
"""Prints the fault suite's table from the JSON lines the fault tests append
to $BACKBEAT_FAULT_REPORT (one `backbeat_tests::FaultRecord` per line).

Usage: fault_table.py REPORT.jsonl
A figure a fault does not measure is shown as "–". Exits 1 when the file
holds a line that is not a record (so a broken writer is not hidden)."""

import json
import sys

COLUMNS = [
    ("fault", "fault"),
    ("injected", "injected"),
    ("checked", "checked"),
    ("acked_lost", "acked lost"),
    ("duplicated", "duplicated"),
    ("differing_reports", "differing reports"),
    ("longest_unavailable_ms", "longest unavailable ms"),
    ("reference_unavailable_ms", "reference ms"),
    ("notes", "notes"),
]


def cell(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    rows, bad = [], 0
    try:
        with open(argv[1], encoding="utf-8") as report:
            for number, line in enumerate(report, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    rows.append([cell(record.get(key)) for key, _ in COLUMNS])
                except (json.JSONDecodeError, AttributeError):
                    print(f"{argv[1]}:{number}: not a fault record: {line.strip()[:200]}", file=sys.stderr)
                    bad += 1
    except FileNotFoundError:
        pass
    if not rows:
        print("no fault records")
        return 1 if bad else 0
    headers = [title for _, title in COLUMNS]
    # Every column but the last (notes) padded to its widest cell.
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(len(COLUMNS) - 1)]

    def line(cells):
        padded = [c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return " | ".join(padded + [cells[-1]]).rstrip()

    print(line(headers))
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * len(headers[-1]))
    for row in rows:
        print(line(row))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
