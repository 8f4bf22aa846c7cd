#!/usr/bin/env python3
"""Turns the logs of a sandwich run into a readable timeline and a summary,
and checks the run (used by scripts/demo).

    timeline.py DIR [--home A] [--away B] [--moved USER]... [--interval-ms 100]

DIR holds A.log and B.log (sandwich_server output), clients.log
(sandwich_client output) and the servers' state folders A/ and B/. Checks:
every user finished with the steps in order (none repeated or skipped);
every user's frames.log is at the home cloudlet, byte for byte what its
camera sent, and absent at the other; every --moved user was served by
home, away, home. Exit status 0 if all checks pass, 1 otherwise.
"""
import argparse
import os
import shlex
import sys

STEPS = ["bread", "ham", "lettuce", "half", "tomato", "full", "done"]


def fnv(data, h=0xCBF29CE484222325):
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def kib(n):
    n = int(n)
    if n < 1024:
        return "%d B" % n
    if n < 1024 * 1024:
        return "%.1f KiB" % (n / 1024)
    return "%.2f MiB" % (n / 1024 / 1024)


def ms(us):
    return "%.1f ms" % (int(us) / 1000)


def fields(rest):
    out = {}
    for tok in shlex.split(rest):
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def read_lines(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [l.rstrip("\n") for l in fh]
    except OSError:
        return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--home", default="A")
    ap.add_argument("--away", default="B")
    ap.add_argument("--moved", action="append", default=[])
    ap.add_argument("--interval-ms", type=int, default=100)
    a = ap.parse_args()
    cloudlets = [a.home, a.away]

    events = []  # (time, user, where, text)
    url_name = {}
    finals = {c: {} for c in cloudlets}
    commits = []
    paused_at = {}
    for c in cloudlets:
        for line in read_lines(os.path.join(a.dir, c + ".log")):
            if line.startswith("url "):
                url_name[line[4:]] = c
    for c in cloudlets:
        for line in read_lines(os.path.join(a.dir, c + ".log")):
            if line.startswith("url ") or line.startswith("app "):
                continue
            parts = line.split(" ", 4)
            if len(parts) < 4:
                continue
            t, name, what, user = float(parts[0]), parts[1], parts[2], parts[3]
            f = fields(parts[4]) if len(parts) > 4 else {}
            if what == "migrate":
                events.append((t, user, name, "migration to %s starts: its files are copied "
                               "while %s keeps going" % (url_name.get(f["to"], f["to"]), user)))
            elif what == "pause":
                paused_at[(name, user)] = t
                events.append((t, user, name, "paused at step %s after %s frames"
                               % (f["step"], f["frames"])))
            elif what == "committed":
                # The moment the source learnt COMMITTED: its pause + downtime (the line
                # itself is printed after the redirect and the release).
                if (name, user) in paused_at:
                    t = paused_at.pop((name, user)) + int(f["downtime_us"]) / 1e6
                dest = url_name.get(f["to"], f["to"])
                commits.append((t, user, name, dest, f))
                events.append((t, user, "%s->%s" % (name, dest),
                               "COMMITTED: %s moved in %s file round(s), downtime %s; "
                               "%s set its folder aside (departed-user cache)"
                               % (kib(f["bytes_sent"]), f["rounds"], ms(f["downtime_us"]),
                                  name)))
            elif what == "activate":
                events.append((t, user, name, "now served here, at step %s with %s frames"
                               % (f["step"], f["frames"])))
            elif what in ("aborted", "resume", "drop", "error"):
                events.append((t, user, name, "%s %s" % (what.upper(), parts[4] if len(parts) > 4 else "")))
            elif what == "final":
                finals[name][user] = f

    summaries = {}
    seen_first = set()
    for line in read_lines(os.path.join(a.dir, "clients.log")):
        if line.startswith("summary "):
            f = fields(line[8:])
            summaries[f["user"]] = f
            continue
        parts = line.split(" ", 4)
        if len(parts) < 4:
            continue
        t, user, where, what = float(parts[0]), parts[1], parts[2], parts[3]
        f = fields(parts[4]) if len(parts) > 4 else {}
        if what == "welcome":
            if user not in seen_first:
                seen_first.add(user)
                text = 'starts: "%s"' % f["text"]
            else:
                text = "the client reconnected here: continues at frame %s, step %s" % (
                    f["next_frame"], f["step"])
        elif what == "step":
            n = STEPS.index(f["step"]) + 1 if f["step"] in STEPS else 0
            text = 'step %d/%d %-7s "%s"' % (n, len(STEPS), f["step"], f["text"])
        elif what == "correction":
            text = 'correction     "%s"' % f["text"]
        elif what == "wait":
            text = "frame %s held back (%s); the client sends it again" % (
                f["frame"], f["reason"])
        elif what == "moved":
            text = "the app connection closed: %s" % f["reason"]
        elif what == "redirect":
            text = "the glasses' reconnect helper is redirected to %s (app at %s)" % (
                f["to"], f["app"])
        elif what == "resumed":
            text = "first answer here, %s ms after the previous one (frames go every %d ms)" % (
                f["gap_ms"], a.interval_ms)
        elif what in ("error", "stuck", "unfinished", "disconnected"):
            text = "%s: %s" % (what.upper(), parts[4] if len(parts) > 4 else "")
        else:
            continue  # session states, reported by the helper
        events.append((t, user, where, text))

    if not events:
        print("timeline: no events in %s" % a.dir)
        return 1
    # Same timestamp: the order in which these things cause each other.
    order = ["migration", "paused", "now served", "COMMITTED", "the app connection",
             "the glasses'", "the client reconnected", "first answer"]

    def rank(text):
        for i, prefix in enumerate(order):
            if text.startswith(prefix):
                return i
        return len(order)

    events.sort(key=lambda e: (round(e[0], 3), rank(e[3])))
    t0 = events[0][0]
    print("== timeline (seconds since the first client started)")
    print("   Each user's glasses send a camera frame every %d ms; the cloudlet answers each"
          % a.interval_ms)
    print("   with the next step, a correction, or nothing new. Moves are user-1's alone:")
    print("   the other users are never paused.")
    print("   %7s  %-7s %-8s %s" % ("time", "user", "cloudlet", "what happened"))
    for t, user, where, text in events:
        print("   %7.3f  %-7s %-8s %s" % (t - t0, user, where, text))

    # ------------------------------------------------------------ checks
    failures = []
    print("== summary")
    for user in sorted(summaries):
        s = summaries[user]
        steps = s["steps"].split(",")
        frames = int(s["frames"])
        ok_steps = steps == STEPS
        if s["done"] != "1":
            failures.append("%s did not finish (last step %s)" % (user, s["final_step"]))
        if not ok_steps:
            failures.append("%s: steps %s, want %s (a step repeated or skipped)"
                            % (user, " ".join(steps), " ".join(STEPS)))
        if s["consistent"] != "1":
            failures.append("%s: the server's frame count disagreed with the client's" % user)
        print("   %-7s %s: %s (%s correction%s)" % (
            user, "finished" if s["done"] == "1" else "NOT FINISHED", " > ".join(steps),
            s["corrections"], "" if s["corrections"] == "1" else "s"))
        print("   %-7s %d frames sent and answered; served by %s; %s redirect(s)"
              % ("", frames, s["cloudlets"].replace(",", ", "), s["redirects"]))

        log = os.path.join(a.dir, a.home, user, "frames.log")
        idx = os.path.join(a.dir, a.home, user, "frames.idx")
        try:
            with open(log, "rb") as fh:
                data = fh.read()
        except OSError:
            data = None
        if data is None:
            failures.append("%s: no frames.log at %s" % (user, a.home))
            print("   %-7s frames.log: MISSING at %s" % ("", a.home))
        else:
            intact = len(data) == int(s["log_bytes"]) and "%016x" % fnv(data) == s["log_fnv"]
            ids, origin = [], []
            for line in read_lines(idx):
                p = line.split()
                if len(p) == 5:
                    ids.append(int(p[0]))
                    if not origin or origin[-1][0] != p[4]:
                        origin.append([p[4], 0])
                    origin[-1][1] += 1
            if not intact:
                failures.append("%s: frames.log at %s is not what the camera sent (%d bytes, "
                                "want %s)" % (user, a.home, len(data), s["log_bytes"]))
            if ids != list(range(1, frames + 1)):
                failures.append("%s: frames.idx at %s lists %d frames, want 1..%d in order"
                                % (user, a.home, len(ids), frames))
            print("   %-7s frames.log at %s: %d frames, %s, %s; recorded on %s"
                  % ("", a.home, len(ids), kib(len(data)),
                     "byte for byte what the camera sent" if intact else "DIFFERENT",
                     ", ".join("%s %d" % (c, n) for c, n in origin)))
        for other in cloudlets[1:]:
            if os.path.exists(os.path.join(a.dir, other, user)):
                failures.append("%s: a folder is still at %s" % (user, other))
                print("   %-7s STILL has a folder at %s" % ("", other))
        final = finals[a.home].get(user)
        if not final or final.get("step") != "done":
            failures.append("%s: cloudlet %s does not hold it at step done at the end"
                            % (user, a.home))
        for other in cloudlets[1:]:
            if user in finals[other]:
                failures.append("%s: cloudlet %s still holds it" % (user, other))
    for user in a.moved:
        s = summaries.get(user)
        want = ",".join([a.home, a.away, a.home])
        if not s or s["cloudlets"] != want:
            failures.append("%s was served by %s, want %s"
                            % (user, s["cloudlets"] if s else "?", want))
    for t, user, src, dest, f in commits:
        print("   migration %s %s->%s: %s moved, %s round(s), %s total, %s downtime"
              % (user, src, dest, kib(f["bytes_sent"]), f["rounds"], ms(f["duration_us"]),
                 ms(f["downtime_us"])))
    if any(c[3] == a.home for c in commits):
        print("   (a move sends what the destination lacks: on the way back, %s still had the"
              % a.home)
        print("   frames recorded before the first move, in its departed-user cache)")
    if len(commits) != 2 * len(a.moved):
        failures.append("%d migrations committed, want %d" % (len(commits), 2 * len(a.moved)))
    if not summaries:
        failures.append("no client summary")

    if failures:
        for f in failures:
            print("demo: FAIL: %s" % f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
