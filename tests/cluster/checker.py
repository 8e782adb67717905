"""Judges a fault-injection run from the workload's files, in the spirit of Jepsen's
queue checker. It knows nothing of weir: only what producers were told and what
consumers read.

    checker.py DIR [--exactly-once]
                           prints a JSON report; exits 1 if any guarantee was broken
    checker.py --self-test checks the checker on runs with known faults

Guarantees checked:
- lost: a value whose write was acknowledged is not in the final read;
- moved: an acknowledged value is not read at the offset it was acknowledged at (a
  reused or rewritten offset);
- duplicated: a value is read more than once. Reported always; a violation with
  --exactly-once. (librdkafka's idempotent producer resends messages it could not learn
  the fate of under new sequence numbers after an epoch bump, so a broker that is
  killed can end up with two copies; the exactly-once issue removes that.)
- unknown: a value is read that no producer attempted;
- nonmonotonic: the final read or the live reader saw a partition's offsets go backwards
  or repeat;
- inconsistent: the live reader and the final read saw different values at one offset.
"""

import glob
import json
import os
import sys


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip() and not line.startswith("#")]


MALFORMED = []


def records(path):
    """(value, partition, offset) per line; lines that are not (a torn last line of a
    file being written when its writer stopped) are set aside in MALFORMED."""
    parsed = []
    for fields in read_lines(path):
        try:
            value, partition, offset = fields
            # librdkafka acknowledges without an offset the messages of a request whose
            # answer it lost once a later request of the producer succeeds (the
            # broker's sequence check proves them written): acknowledged, offset
            # unknown.
            parsed.append((value, int(partition), None if offset == "None" else int(offset)))
        except ValueError:
            MALFORMED.append(f"{os.path.basename(path)}: {' '.join(fields)!r}")
    return parsed


def check(attempted, acked, final, live, exactly_once=True):
    report = {"attempted": len(attempted), "acknowledged": len(acked), "read": len(final)}
    violations = {}

    def note(kind, what):
        violations.setdefault(kind, []).append(what)

    at = {}
    for value, partition, offset in final:
        at.setdefault(value, []).append((partition, offset))
    duplicated = []
    for value, positions in at.items():
        if len(positions) > 1:
            duplicated.append(value)
            if exactly_once:
                note("duplicated", value)
        if value not in attempted:
            note("unknown", value)
    report["duplicated"] = {"count": len(duplicated), "first": duplicated[:5]}
    for value, (partition, offset) in acked.items():
        if value not in at:
            note("lost", f"{value}@{partition}:{offset}")
        elif offset is not None and (partition, offset) not in at[value]:
            where = ", ".join(f"{p}:{o}" for p, o in at[value])
            note("moved", f"{value} acknowledged at {partition}:{offset}, read at {where}")
    final_at = {}
    for name, stream in (("final", final), ("live", live)):
        last = {}
        for value, partition, offset in stream:
            if partition in last and offset <= last[partition]:
                note("nonmonotonic", f"{name} read {partition}:{offset} after {partition}:{last[partition]}")
            last[partition] = offset
            if name == "final":
                final_at[(partition, offset)] = value
            elif (partition, offset) in final_at and final_at[(partition, offset)] != value:
                note("inconsistent", f"{partition}:{offset} held {value} live, {final_at[(partition, offset)]} at the end")
    report["violations"] = {kind: {"count": len(items), "first": items[:5]} for kind, items in violations.items()}
    report["ok"] = not violations
    return report


def check_dir(directory, exactly_once):
    attempted = set()
    acked = {}
    for path in glob.glob(os.path.join(directory, "attempted-*.txt")):
        attempted.update(v for v, *_ in read_lines(path))
    for path in glob.glob(os.path.join(directory, "acked-*.txt")):
        for value, partition, offset in records(path):
            acked[value] = (partition, offset)
    final = records(os.path.join(directory, "final.txt"))
    live = records(os.path.join(directory, "live.txt"))
    report = check(attempted, acked, final, live, exactly_once)
    errors = sum(len(read_lines(p)) for p in glob.glob(os.path.join(directory, "errors-*.txt")))
    report["producer_errors"] = errors
    report["malformed_lines"] = MALFORMED[:5]
    return report


def self_test():
    attempted = {"a", "b", "c", "d"}
    good = check(attempted, {"a": (0, 0), "b": (0, 1)}, [("a", 0, 0), ("b", 0, 1), ("c", 0, 2)], [("a", 0, 0)])
    assert good["ok"], good
    cases = {
        "lost": (attempted, {"a": (0, 0), "b": (0, 1)}, [("a", 0, 0)], []),
        "moved": (attempted, {"a": (0, 0)}, [("x", 0, 0), ("a", 0, 1)], []),
        "duplicated": (attempted, {}, [("a", 0, 0), ("a", 0, 1)], []),
    }
    for kind, arguments in cases.items():
        report = check(*arguments)
        assert not report["ok"] and kind in report["violations"], (kind, report)
    # A second copy is no violation without --exactly-once, a copy elsewhere than
    # acknowledged is.
    copies = [("a", 0, 0), ("a", 0, 1)]
    assert check(attempted, {"a": (0, 1)}, copies, [], exactly_once=False)["ok"]
    moved = check(attempted, {"a": (0, 2)}, copies, [], exactly_once=False)
    assert "moved" in moved["violations"] and moved["duplicated"]["count"] == 1, moved
    assert check(attempted, {"a": (0, None)}, copies[:1], [])["ok"]
    assert "lost" in check(attempted, {"a": (0, None)}, [], [])["violations"]
    cases = {
        "unknown": (attempted, {}, [("z", 0, 0)], []),
        "nonmonotonic": (attempted, {}, [("a", 0, 1), ("b", 0, 1)], []),
        "inconsistent": (attempted, {}, [("a", 0, 0)], [("b", 0, 0)]),
    }
    for kind, arguments in cases.items():
        report = check(*arguments)
        assert not report["ok"] and kind in report["violations"], (kind, report)
    print("checker self-test passed")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        sys.exit(0)
    result = check_dir(sys.argv[1], "--exactly-once" in sys.argv[2:])
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)
