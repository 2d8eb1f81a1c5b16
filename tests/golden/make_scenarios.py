#!/usr/bin/env python3
"""Writes the golden scenarios' input logs (events.jsonl) and fold flags (args).

Each scenario exercises one rule of SPEC §5-§6. The expected reports
(bar_reports.jsonl) are made by the fold with UPDATE_GOLDEN=1 and then read by
a person against the rule named in the scenario's `about` line; they are not
made by this script. Run: python3 tests/golden/make_scenarios.py
"""
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def window_id(cluster, L, w):
    return hashlib.sha256(f"backbeat/v1/{cluster}/{L}/{w}".encode()).hexdigest()[:32]


def phase(i, L):
    p, q = i % L, L // 4
    return "plan" if p < q else ("review" if p >= L - q else "execution")


def iso(ms):
    import datetime
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Log:
    def __init__(self, L):
        self.L, self.lines, self.seq = L, [], 0

    def raw(self, subject, payload):
        self.seq += 1
        key = "payload"
        if isinstance(payload, bytes):
            import base64
            key, payload = "payload_b64", base64.b64encode(payload).decode()
        self.lines.append(json.dumps({"seq": self.seq, "subject": subject, key: payload},
                                     separators=(",", ":"), ensure_ascii=False))

    def beat(self, cluster, i, ms, bpm=120, node=1, **override):
        L = self.L
        doc = {"type": "backbeat.beatframe.v1", "cluster_id": cluster, "beat_index": i,
               "downbeat": i % L == 0, "phase": phase(i, L), "hlc": f"{ms:x}:0000:{node:04x}",
               "deadline_at": iso(ms + 60000 // bpm), "tempo_bpm": bpm,
               "window_id": window_id(cluster, L, i // L)}
        doc.update(override)
        doc = {k: v for k, v in doc.items() if v is not DROP}
        self.raw(f"backbeat.{cluster}.beat", compact(doc))

    def claim(self, cluster, agent, i, state="executing", task=None, left=0, progress=0.5, **extra):
        doc = {"type": "backbeat.statusclaim.v1", "agent_id": agent}
        if task is not None:
            doc["task_id"] = task
        doc.update({"beat_index": i, "state": state, "beats_left": left, "progress": progress,
                    "hlc": f"{1000000 + int(i):x}:0000:00a1"})
        doc.update(extra)
        doc = {k: v for k, v in doc.items() if v is not DROP}
        self.raw(f"backbeat.{cluster}.claim", compact(doc))

    def beats(self, cluster, start, end, ms0=None, bpm=120, step=None):
        # By default beat i is at 1_000_000 ms + i intervals, so separate calls join up.
        step = step or 60000 // bpm
        ms0 = 1_000_000 + start * step if ms0 is None else ms0
        for i in range(start, end):
            self.beat(cluster, i, ms0 + (i - start) * step, bpm)


DROP = object()


def compact(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def write(name, about, args, log):
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "events.jsonl"), "w") as f:
        f.write("\n".join(log.lines) + "\n")
    with open(os.path.join(d, "args"), "w") as f:
        f.write(args + "\n")
    with open(os.path.join(d, "about"), "w") as f:
        f.write(about.strip() + "\n")


def scenarios():
    # validation: every reason of SPEC §5 counted in the right report, in order met.
    log = Log(4)
    log.claim("v", "early", 0, progress=2)                        # invalid_field:progress before any beat
    log.beat("v", 0, 1_000_000, bpm=120, window_id="0" * 32)       # bar_mismatch before first beat
    log.beats("v", 0, 2)
    log.raw("backbeat.v.claim", "x" * 8193)                       # too_large
    log.raw("backbeat.v.claim", "[1]")                            # invalid_json (not an object)
    log.raw("backbeat.v.claim", '{"type":"backbeat.statusclaim.v1","type":"x"}')  # duplicate key
    log.raw("backbeat.v.claim", b"\xff\xfe")                      # not UTF-8 -> invalid_json
    log.claim("v", "a", 1, type="backbeat.statusclaim.v2")        # wrong_type
    log.claim("v", "a", 1, agent_id=DROP, progress=7)             # first failing field wins
    log.claim("v", "a", 1, task_id="t" * 129)                     # invalid_field:task_id
    log.claim("v", "a", 1.0)                                      # invalid_field:beat_index (1.0)
    log.claim("v", "a", 1, state="sleeping")                      # invalid_field:state
    log.claim("v", "a", 1, left=-1)                               # invalid_field:beats_left
    log.claim("v", "a", 1, notes="n" * 1025)                      # invalid_field:notes
    log.claim("v", "a", 1, hlc="F:0000:0001")                     # invalid_field:hlc
    log.claim("v", "ok", 1, task_id=None, notes=None)             # nulls are absent: applied
    log.beat("v", 2, 1_001_000, cluster_id="w")                   # cluster_mismatch
    log.beat("v", 2, 1_001_000, phase="review")                   # bar_mismatch
    log.beat("v", 2, 1_001_000, downbeat=True)                    # bar_mismatch
    log.beat("v", 2, 1_001_000, tempo_bpm=1001)                   # invalid_field:tempo_bpm
    log.beat("v", 2, 1_001_000, deadline_at="2023-02-29T00:00:00Z")  # invalid_field:deadline_at
    log.beat("v", 2, 1_001_000, type="backbeat.statusclaim.v1")   # wrong_type
    log.beats("v", 2, 9)
    write("validation", "Every validation reason (SPEC §5), counted in next_to_close; before the first beat in the first report.",
          "--bar-length 4", log)

    # stale and missing beats, and a jump refused by J.
    log = Log(4)
    log.beats("s", 0, 3)
    log.beat("s", 2, 1_001_000)          # duplicate: stale
    log.beat("s", 1, 1_000_500)          # older: stale
    log.beat("s", 6, 1_003_000)          # 3, 4, 5 missing (3 in w0, 4-5 in w1); closes w0
    log.beat("s", 40, 1_020_000)         # 40 - 6 > J=30: beat_jump
    log.beat("s", 13, 1_006_500)         # 7..12 missing across w1, w2, w3
    log.beat("s", 16, 1_008_000)
    write("stale_missing_jump", "Stale beats, missing beats across windows, beat_jump beyond J.", "--bar-length 4 --max-jump 30", log)

    # late, future and before-the-first-beat claims.
    log = Log(4)
    log.claim("c", "x", 0)                      # no_beat_yet
    log.beat("c", 9, 1_004_500)                 # first beat at 9: window 2 is first, 8 not missing
    log.claim("c", "old", 3)                    # window 0 < next_to_close 2: late
    log.claim("c", "fut", 12)                   # 12 > 9 + 2: future_beat
    log.claim("c", "near", 11)                  # within F: applied to w2
    log.beats("c", 10, 13)                      # 12 closes w2
    log.claim("c", "late2", 11)                 # late, counted in w3
    log.claim("c", "late2", 10)                 # late again: count 2, sample once
    log.beats("c", 13, 17)
    write("late_future_first", "Claims before the first beat, before the first window, late, and too far in the future.", "--bar-length 4", log)

    # tasks: deadlines, delivery, overdue ordering, failed tasks.
    log = Log(4)
    log.beat("t", 0, 1_000_000)
    log.claim("t", "b", 0, "planning", "deploy:1", left=2)     # deadline 2
    log.claim("t", "a", 0, "planning", "z", left=1)            # deadline 1, never delivered: overdue
    log.claim("t", "a", 0, "planning", "y", left=3)            # deadline 3, failed: overdue
    log.claim("t", "_", 0, "planning", "q", left=0)            # deadline 0, reviewing at 0: on time
    log.claim("t", "_", 0, "reviewing", "q", left=0)
    log.beats("t", 1, 3)
    log.claim("t", "b", 2, "reviewing", "deploy:1")            # on time at deadline
    log.claim("t", "b", 2, "done", "deploy:1")                 # second delivery counts nothing
    log.claim("t", "a", 2, "failed", "y")
    log.claim("t", "c", 2, "executing", "far", left=100)       # deadline far away: not in w0/w1
    log.beats("t", 3, 6)
    log.claim("t", "a", 5, "done", "z")                        # delivered after its deadline: not on time
    log.beats("t", 6, 13)
    log.claim("t", "a", 5, "done", "z")                        # window 1 is closed: late
    write("tasks", "Task deadlines, on-time delivery, overdue order, failed tasks overdue, only the first delivery counts.", "--bar-length 4", log)

    # help promises.
    log = Log(4)
    log.beat("h", 0, 1_000_000)
    log.claim("h", "p", 0, "helping", "x", left=2)             # help by 2
    log.claim("h", "q", 0, "helping", "y", left=1)             # help by 1
    log.claim("h", "r", 0, "executing", "z", left=3)
    log.beats("h", 1, 3)
    log.claim("h", "p", 2, "done", "x")                        # fulfilled
    log.claim("h", "q", 2, "done", "y")                        # 2 > 1: not fulfilled
    log.claim("h", "r", 2, "helping", "z", left=5)             # help promised after the first claim
    log.claim("h", "r", 3, "helping", "z", left=0)             # only the first helping sets it
    log.claim("h", "r", 3, "done", "z")                        # 3 <= 7: fulfilled
    log.beats("h", 3, 9)
    write("help_promises", "Help promises: first helping claim sets help_deadline; first done fulfils it on time.", "--bar-length 4", log)

    # secret rotations.
    log = Log(4)
    log.beats("r", 0, 2)
    log.claim("r", "a", 1, "failed", "secret-rotation:db", left=5)
    log.claim("r", "a", 1, "failed", "secret-rotation:db", left=5)   # counted again (occurrences)
    log.claim("r", "b", 1, "failed", "secret-rotation")
    log.claim("r", "c", 1, "failed", "secret-rotations:x")          # another kind
    log.claim("r", "d", 1, "failed")                                 # no task
    log.beats("r", 2, 5)
    log.claim("r", "e", 5, "done", "secret-rotation:k")             # w1 ok
    log.beats("r", 5, 9)
    write("secret_rotations", "secret_rotations_ok and secret_rotation_failed by task kind.", "--bar-length 4", log)

    # task time-to-live.
    log = Log(4)
    log.beat("l", 0, 1_000_000)
    log.claim("l", "a", 0, "executing", "t", left=20)    # deadline 20 (w5)
    log.claim("l", "b", 0, "executing", "u", left=20)    # kept alive by claims
    log.beats("l", 1, 9)
    log.claim("l", "b", 9, "executing", "u", left=0)
    log.beats("l", 9, 17)
    log.claim("l", "b", 17, "executing", "u", left=0)
    log.beats("l", 17, 25)
    log.claim("l", "a", 25, "executing", "t", left=1)    # a/t dropped: afresh, deadline 26 (w6)
    log.beats("l", 25, 29)
    write("task_ttl", "T = 1: an entry two windows without a claim is dropped and not reported overdue; a new claim starts afresh.", "--bar-length 4 --task-ttl 1", log)

    # tempo drift and tempo changes.
    log = Log(8)
    ms = 1_000_000
    for i in range(0, 8):
        log.beat("d", i, ms, bpm=120); ms += 503
    for i in range(8, 16):
        bpm = 120 if i < 12 else 60
        log.beat("d", i, ms, bpm=bpm); ms += 60000 // bpm - 3
    log.beat("d", 16, ms, bpm=60); ms += 2000
    log.beat("d", 18, ms, bpm=90)
    for i in range(19, 26):
        ms += 666
        log.beat("d", i, ms, bpm=90)
    log.beat("d", 25, ms + 5, bpm=90)  # stale
    write("tempo_drift", "Drift within and across tempo changes, with a missing beat, truncated toward zero.", "--bar-length 8", log)

    # issues: samples keep five distinct ids in order met; count counts occurrences.
    log = Log(4)
    log.beats("i", 0, 3)
    log.beat("i", 12, 1_006_000)    # 3..11 missing: samples of w0 ["3"], w1 ["4".."7"], w2 ["8".."11"]
    for a in ["g", "f", "e", "f", "d", "c", "b", "a"]:
        log.claim("i", a, 1)        # late: 8 occurrences, 7 distinct, sample first five
    log.beats("i", 13, 17, ms0=1_006_500)
    write("issue_samples", "Issue samples: first five distinct ids in the order met; counts are occurrences.", "--bar-length 4", log)

    # lateness A = 2 with interleaved clusters and ignored subjects.
    log = Log(4)
    log.raw("backbeat.bad.cluster.beat", "{}")
    log.raw("backbeat.b@d.claim", "{}")
    log.raw("backbeat.x.bar", "{}")
    log.raw("other.x.beat", "{}")
    for i in range(0, 16):
        log.beat("x", i, 1_000_000 + 500 * i)
        if i % 2 == 0:
            log.beat("y", i // 2, 2_000_000 + 1000 * (i // 2), bpm=60)
        if i == 5:
            log.claim("y", "yy", 2)        # y's window 0 is open: applied there
        if i in (4, 5):
            log.claim("x", f"lag{i}", 3)   # w0 still open until beat 6 with A=2
        if i == 7:
            log.claim("x", "lag7", 3)      # late: w0 closed at 6
    write("lateness_clusters", "Lateness A = 2 keeps windows open; clusters fold independently; other subjects are ignored.", "--bar-length 4 --lateness 2", log)


if __name__ == "__main__":
    scenarios()
