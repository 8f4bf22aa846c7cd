#!/usr/bin/env python3
"""The process-level fault matrix of libmigrate (docs/RELIABILITY.md, "Fault matrix").

Each case runs two engines, A (source) and B (destination), as separate
fault_server processes, each behind a TCP proxy in this script: A migrates
the user to B's proxy and each engine advertises its own proxy, so every
peer connection, in either direction, goes through one. The user's client
(the <migrate/client.h> helper, a third process) attaches to A directly.

A case is (point, fault, kind):
  point  a step of the handoff where one process stops itself (SIGSTOP),
         from before BEGIN to the redirect of the client (POINTS below);
  fault  what happens there (FAULTS): SIGKILL of the source ("kill-src") or
         of the destination ("kill-dst"); a cut of the link ("cut": both
         proxies close every connection and refuse new ones for CUT_MS);
         "stop": the stopped process stays stopped for STOP_MS (longer than
         every timeout) before SIGCONT; "stop-peer": it goes on at once
         while its peer is stopped for STOP_MS;
  kind   "light" (light state only) or "files" (light state and a file domain).

Recovery: a killed process is restarted after DOWN_MS on the same port and
folder (memory lost, files kept); a stopped one gets SIGCONT; a cut link is
restored. The driver then waits (at most SETTLE_S) until neither engine has
a migration in flight and the user is ACTIVE or ABSENT on each, unchanged
for WATCH_S, and checks the invariants of docs/PROTOCOL.md:

  - never two active owners: at no time do both apps serve the user (their
    hook timelines, CLOCK_MONOTONIC, never overlap), and at the end exactly
    one engine has the user ACTIVE, with its app serving it;
  - never zero, except "lost with the process": no engine has the user only
    if the killed process was its only holder (the source, before the
    destination reached PREPARED; the destination, after the source
    released);
  - the state is the one at pause: the light digest and the file digests
    with which the winner activated (or resumed) equal the source's at pause.

Then, as a liveness check, the user migrates once more from the winner to
the other engine (which must commit with the state at that pause).

Outcomes: "B" (committed at the destination), "A" (stayed at the source),
"lost" (lost with the process), "VIOLATION". A case whose outcome differs
from what the protocol's failure table predicts is marked "unexpected"
(it fails the run too: the table in docs/PROTOCOL.md is a promise).

  fault_matrix.py --server PATH [--subset fast|all] [--case POINT/FAULT/KIND]...
                  [--jobs N] [--markdown FILE] [--keep DIR]
                  [--down-ms MS] [--cut-ms MS] [--stop-ms MS]
"""

import argparse
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PEER_TIMEOUT_MS = 500
DOWN_MS = 1000          # a killed process stays down this long (> peer timeout)
CUT_MS = 1500           # a cut link stays cut this long (> peer timeout)
STOP_MS = 2500          # a stopped process stays stopped this long (> parking)
SETTLE_S = 30.0
WATCH_S = 1.0
POINT_TIMEOUT_S = 15.0

# (name, owner, kinds, what the stopped process is doing)
POINTS = [
    ("begin", "A", "both", "source: about to send BEGIN (user still served)"),
    ("accept", "B", "both", "destination: BEGIN received, ACCEPT not sent"),
    ("accepted", "B", "both", "destination: ACCEPT sent"),
    ("precopy", "A", "files", "source: pre-copy round 1 streamed, its RoundEnd not sent (user served)"),
    ("paused", "A", "both", "source: in the pause hook"),
    ("final", "A", "files", "source: paused, about to end the final file round"),
    ("prepare", "A", "both", "source: state extracted, about to send PREPARE"),
    ("prepare-sent", "A", "both", "source: PREPARE sent"),
    ("prepared", "B", "both", "destination: prepared, about to send PREPARED"),
    ("prepared-sent", "B", "both", "destination: PREPARED sent"),
    ("commit", "A", "both", "source: COMMIT decided, about to send it"),
    ("commit-sent", "A", "both", "source: COMMIT sent"),
    ("committed", "B", "both", "destination: activated, about to send COMMITTED"),
    ("committed-sent", "B", "both", "destination: COMMITTED sent"),
    ("redirect", "A", "both", "source: COMMITTED received, Redirect sent to the client, not released"),
    ("released", "A", "both", "source: in the release hook"),
]
POINT_INDEX = {p[0]: i for i, p in enumerate(POINTS)}
FAULTS = ["kill-src", "kill-dst", "cut", "stop", "stop-peer"]
KINDS = ["light", "files"]

# Every fault and both kinds, in about 70 s (scripts/test runs it).
FAST = [
    ("begin", "stop", "light"),
    ("paused", "kill-src", "light"),
    ("prepare-sent", "cut", "light"),
    ("prepared-sent", "kill-dst", "light"),
    ("commit", "kill-src", "light"),
    ("committed", "cut", "light"),
    ("committed-sent", "kill-dst", "light"),
    ("precopy", "kill-dst", "files"),
    ("final", "cut", "files"),
    ("prepared", "kill-src", "files"),
    ("commit-sent", "stop", "files"),
    ("redirect", "kill-src", "files"),
    ("prepared-sent", "cut", "files"),
    ("committed", "kill-dst", "files"),
    ("prepared", "stop-peer", "light"),
    ("commit", "stop-peer", "files"),
]


def expected(point, fault):
    """Outcomes the failure table of docs/PROTOCOL.md allows for the case."""
    i = POINT_INDEX[point]
    # At an "after" point the stopped process's peer keeps going for the
    # FLUSH_MS it takes the frame to leave, so it may be one step further
    # (accepted: the source may have sent PREPARE; commit-sent: the
    # destination may have activated and answered COMMITTED).
    if fault == "kill-src":
        # The source's copy dies with it; the destination's survives once
        # it reached PREPARED (prepare-sent: PREPARE was on the wire).
        if point == "accepted":
            return {"lost", "B"}
        return {"lost"} if i < POINT_INDEX["prepare-sent"] else {"B"}
    if fault == "kill-dst":
        # Before COMMITTED reached the source, the source keeps its copy and
        # resumes when the restarted destination says it holds none.
        if point == "commit-sent":
            return {"A", "lost"}
        return {"A"} if i < POINT_INDEX["committed-sent"] else {"lost"}
    if fault == "cut":
        # Decided once the source saw PREPARED. At prepare-sent the source
        # is stopped with PREPARE on the wire, and the destination's
        # PREPARED may reach the source's socket before the cut.
        if point == "prepare-sent":
            return {"A", "B"}
        return {"A"} if i < POINT_INDEX["prepared-sent"] else {"B"}
    if fault == "stop-peer":
        # The process at the point goes on while its peer is stopped: the
        # source times out unless it decided; around PREPARED it depends on
        # whether PREPARED or the source's own deadline comes first.
        # (accepted: the source may have sent PREPARE in the flush window.)
        if point in ("accepted", "prepare-sent", "prepared", "prepared-sent"):
            return {"A", "B"}
        return {"A"} if i < POINT_INDEX["prepare-sent"] else {"B"}
    # stop: the stopped side's peer times out, unless it already decided.
    if point == "begin":
        return {"A", "B"}  # the BEGIN deadline may pass while stopped
    if point == "prepare-sent":
        return {"A", "B"}  # PREPARED vs the source's own PREPARE deadline
    return {"A"} if i < POINT_INDEX["prepared-sent"] else {"B"}


def mono_us():
    return time.monotonic_ns() // 1000


_ports_lock = threading.Lock()
_ports_used = set()


def engine_port():
    """A port for an engine: it must stay the same across restarts, so it
    is taken below the kernel's ephemeral range (where binds to port 0, such
    as the proxies', never land) and reserved here against parallel cases."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    lo, hi = max(1024, low - 12000), low - 1
    with _ports_lock:
        for _ in range(1000):
            p = random.randrange(lo, hi)
            if p in _ports_used:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            finally:
                s.close()
            _ports_used.add(p)
            return p
    raise RuntimeError("no free port")


def release_port(p):
    with _ports_lock:
        _ports_used.discard(p)


# --------------------------------------------------------------------- proxy

class Proxy:
    """A TCP relay to 127.0.0.1:target that can cut every connection and
    refuse new ones until restored."""

    HIGH = 1 << 20

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, "accept")
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.peer = {}
        self.outbuf = {}
        self.refusing = False
        self.cut_done = None
        self.stopping = False
        self.connections = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _wake(self):
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def cut(self):
        ev = threading.Event()
        self.refusing = True
        self.cut_done = ev
        self._wake()
        ev.wait(5)

    def restore(self):
        self.refusing = False

    def close(self):
        self.stopping = True
        self._wake()
        self.thread.join(5)
        for s in list(self.peer):
            s.close()
        self.lsock.close()
        self.wake_r.close()
        self.wake_w.close()

    def _interest(self, s):
        if s not in self.peer:
            return
        ev = 0
        p = self.peer[s]
        if len(self.outbuf.get(p, b"")) < self.HIGH:
            ev |= selectors.EVENT_READ
        if self.outbuf.get(s):
            ev |= selectors.EVENT_WRITE
        self.sel.modify(s, ev or selectors.EVENT_READ, "data")

    def _drop(self, s):
        for x in (s, self.peer.get(s)):
            if x is None or x not in self.peer:
                continue
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            del self.peer[x]
            self.outbuf.pop(x, None)
            try:
                x.close()
            except OSError:
                pass

    def _flush_then_drop(self, s):
        p = self.peer.get(s)
        if p is not None and self.outbuf.get(p):
            try:
                p.setblocking(True)
                p.settimeout(0.2)
                p.sendall(bytes(self.outbuf[p]))
            except OSError:
                pass
        self._drop(s)

    def _loop(self):
        while not self.stopping:
            for key, mask in self.sel.select(0.1):
                if key.data == "wake":
                    try:
                        self.wake_r.recv(4096)
                    except OSError:
                        pass
                    if self.cut_done is not None:
                        for s in list(self.peer):
                            self._drop(s)
                        self.cut_done.set()
                        self.cut_done = None
                    continue
                if key.data == "accept":
                    try:
                        c, _ = self.lsock.accept()
                    except OSError:
                        continue
                    if self.refusing:
                        c.close()
                        continue
                    try:
                        u = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                    except OSError:
                        c.close()
                        continue
                    self.connections += 1
                    for x in (c, u):
                        x.setblocking(False)
                        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.peer[c] = u
                    self.peer[u] = c
                    self.outbuf[c] = bytearray()
                    self.outbuf[u] = bytearray()
                    self.sel.register(c, selectors.EVENT_READ, "data")
                    self.sel.register(u, selectors.EVENT_READ, "data")
                    continue
                s = key.fileobj
                if s not in self.peer:
                    continue
                if mask & selectors.EVENT_WRITE and self.outbuf.get(s):
                    try:
                        n = s.send(self.outbuf[s])
                        del self.outbuf[s][:n]
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._drop(s)
                        continue
                    self._interest(s)
                    self._interest(self.peer[s])
                if mask & selectors.EVENT_READ:
                    try:
                        d = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        d = b""
                    if not d:
                        self._flush_then_drop(s)
                        continue
                    p = self.peer[s]
                    self.outbuf[p] += d
                    self._interest(p)
                    self._interest(s)


# --------------------------------------------------------------------- processes

class Proc:
    """One fault_server process (restartable: instances share the log)."""

    def __init__(self, case, name, args):
        self.case = case
        self.name = name
        self.args = args
        self.proc = None
        self.instance = -1
        self.lines = []       # (instance, t_recv_us, line)
        self.cv = threading.Condition()
        self.ended = []       # (instance, t_us) when an instance ended (killed or quit)
        self.killed_at = None
        self.stderr = None

    def start(self, extra):
        self.instance += 1
        inst = self.instance
        self.stderr = open(os.path.join(self.case.dir, "%s.%d.log" % (self.name, inst)), "w")
        self.proc = subprocess.Popen(
            [self.case.server] + self.args + extra,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, bufsize=1)
        proc = self.proc
        threading.Thread(target=self._reader, args=(proc, inst), daemon=True).start()

    def _reader(self, proc, inst):
        for line in proc.stdout:
            with self.cv:
                self.lines.append((inst, mono_us(), line.rstrip("\n")))
                self.cv.notify_all()
        with self.cv:
            self.lines.append((inst, mono_us(), "EOF"))
            self.cv.notify_all()

    def wait_line(self, prefix, since=0, timeout=10.0, inst=None):
        """The first line starting with prefix at index >= since."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for i in range(since, len(self.lines)):
                    li, _, line = self.lines[i]
                    if (inst is None or li == inst) and line.startswith(prefix):
                        return i, line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, None
                self.cv.wait(left)

    def mark(self):
        with self.cv:
            return len(self.lines)

    def send(self, cmd):
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def query(self, cmd, prefix, timeout=3.0):
        m = self.mark()
        if not self.send(cmd):
            return None
        _, line = self.wait_line(prefix, m, timeout, inst=self.instance)
        return line

    def status(self):
        line = self.query("status", "STATUS", 3.0)
        if not line:
            return None
        return dict(kv.split("=", 1) for kv in line.split()[1:])

    def stopped(self):
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "T"
        except OSError:
            return False

    def kill(self):
        # The app stops serving when the signal is sent: its peer can only
        # react once the process is gone, which is later.
        self.killed_at = mono_us()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.ended.append((self.instance, self.killed_at))
        self.stderr.close()

    def cont(self):
        self.proc.send_signal(signal.SIGCONT)

    def quit(self):
        """Ends the current instance; returns a problem to report, or None."""
        problem = None
        if self.proc.poll() is None:
            self.cont()
            self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                problem = "%s did not quit" % self.name
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode != 0 and problem is None:
            problem = "%s exited with status %d" % (self.name, self.proc.returncode)
        self.ended.append((self.instance, mono_us()))
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.stderr.close()
        return problem

    def sanitizer_reports(self):
        """Logs of this process (every instance) with a sanitizer report."""
        bad = []
        for inst in range(self.instance + 1):
            path = os.path.join(self.case.dir, "%s.%d.log" % (self.name, inst))
            try:
                with open(path, errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            if "Sanitizer" in text or "runtime error:" in text:
                bad.append(os.path.basename(path))
        return bad

    def events(self, upto_us=None):
        """EV lines as (instance, t_us, what, fields)."""
        out = []
        with self.cv:
            lines = list(self.lines)
        for inst, _, line in lines:
            if not line.startswith("EV "):
                continue
            parts = line.split(" ", 3)
            t = int(parts[1])
            if upto_us is not None and t > upto_us:
                continue
            what = parts[2]
            fields = {}
            for kv in (parts[3].split() if len(parts) > 3 else []):
                if "=" in kv:
                    k, v = kv.split("=", 1)
                    fields[k] = v
            out.append((inst, t, what, fields))
        return out


# --------------------------------------------------------------------- one case

class Case:
    def __init__(self, server, point, fault, kind, workdir):
        self.server = server
        self.point, self.fault, self.kind = point, fault, kind
        self.owner = dict((p[0], p[1]) for p in POINTS)[point]
        self.name = "%s/%s/%s" % (point, fault, kind)
        self.dir = os.path.join(workdir, self.name.replace("/", "_"))
        os.makedirs(self.dir)
        self.errors = []       # process failures (crash, sanitizer): fail the case
        self.violations = []

    def violation(self, why):
        self.violations.append(why)

    def run(self):
        t_start = time.monotonic()
        files = ["--files"] if self.kind == "files" else []
        pa, pb = engine_port(), engine_port()
        self.ports = (pa, pb)
        self.port_a = pa
        self.proxy_a, self.proxy_b = Proxy(pa), Proxy(pb)
        url_a = "ws://127.0.0.1:%d" % self.proxy_a.port  # what B uses for A
        url_b = "ws://127.0.0.1:%d" % self.proxy_b.port  # what A uses for B
        common = ["--user", "u1", "--peer-timeout", str(PEER_TIMEOUT_MS)] + files
        self.a = Proc(self, "A", ["--name", "A", "--port", str(pa), "--advertise", url_a,
                                  "--root", os.path.join(self.dir, "rootA")] + common)
        self.b = Proc(self, "B", ["--name", "B", "--port", str(pb), "--advertise", url_b,
                                  "--root", os.path.join(self.dir, "rootB")] + common)
        self.client = None
        self.procs = {"A": self.a, "B": self.b}
        self.url = {"A": url_a, "B": url_b}
        try:
            return self._run(t_start)
        finally:
            for p in (self.a, self.b, self.client):
                if p is not None and p.proc is not None:
                    problem = p.quit()
                    if problem:
                        self.errors.append(problem)
                    for log in p.sanitizer_reports():
                        self.errors.append("sanitizer report in %s" % log)
            self.proxy_a.close()
            self.proxy_b.close()
            for p in self.ports:
                release_port(p)

    def _run(self, t_start):
        stop = ["--stop-at", self.point]
        self.a.start(["--serve"] + (stop if self.owner == "A" else []))
        self.b.start(stop if self.owner == "B" else [])
        for p in (self.a, self.b):
            if p.wait_line("READY", timeout=10)[1] is None:
                return self.finish("setup", "engine %s did not start" % p.name, t_start)
        tok = self.a.query("token", "TOKEN")
        if not tok or tok.split()[1] == "-":
            return self.finish("setup", "no session token", t_start)
        self.client = Proc(self, "client", ["--client", "--user", "u1", "--url",
                                            "ws://127.0.0.1:%d" % self.port_a,
                                            "--token", tok.split()[1]])
        self.client.start([])
        if self.client.wait_line("CLIENT", timeout=5)[1] is None:
            return self.finish("setup", "client did not start", t_start)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.client.cv:
                if any(" ATTACHED " in l for _, _, l in self.client.lines):
                    break
            time.sleep(0.02)
        else:
            return self.finish("setup", "client did not attach", t_start)
        time.sleep(0.15)  # the user is served for a while: its state moves

        owner = self.procs[self.owner]
        m = owner.mark()
        if self.a.query("migrate " + self.url["B"], "MIGRATE") != "MIGRATE rc=0":
            return self.finish("setup", "mig_migrate failed", t_start)
        _, at = owner.wait_line("AT ", m, POINT_TIMEOUT_S)
        if at is None:
            return self.finish("not-reached", "point %s not reached" % self.point, t_start)
        deadline = time.monotonic() + 5
        while not owner.stopped() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not owner.stopped():
            return self.finish("not-reached", "the process did not stop", t_start)
        self.t_point = int(at.split()[2])
        self.t_point_wall = time.monotonic()

        # The fault, then recovery.
        self.killed = None
        if self.fault in ("kill-src", "kill-dst"):
            victim = self.a if self.fault == "kill-src" else self.b
            self.killed = victim.name
            victim.kill()
            for p in (self.a, self.b):
                if p is not victim and p.stopped():
                    p.cont()
            time.sleep(DOWN_MS / 1000)
            victim.start([])
            if victim.wait_line("READY", 0, 10, inst=victim.instance)[1] is None:
                return self.finish("setup", "%s did not restart" % victim.name, t_start)
        elif self.fault == "cut":
            self.proxy_a.cut()
            self.proxy_b.cut()
            owner.cont()
            time.sleep(CUT_MS / 1000)
            self.proxy_a.restore()
            self.proxy_b.restore()
        elif self.fault == "stop":
            time.sleep(STOP_MS / 1000)
            owner.cont()
        else:  # stop-peer
            peer = self.b if owner is self.a else self.a
            peer.proc.send_signal(signal.SIGSTOP)
            while not peer.stopped():
                time.sleep(0.002)
            owner.cont()
            time.sleep(STOP_MS / 1000)
            peer.cont()
        t_recovered = time.monotonic()

        # Settle: no migration in flight and the user ACTIVE or ABSENT on
        # each engine, unchanged for WATCH_S (frames a stopped process
        # had queued are handled right after SIGCONT, so one poll is not
        # enough; any unsettled poll starts the stretch again).
        st, first = self.settle()
        if st is None:
            desc = ", ".join("%s %s %s" % (n, s["state"], s["phases"]) if s else "%s -" % n
                             for n, s in (self.last_status or {}).items())
            self.violation("not settled after %.0f s (%s)" % (SETTLE_S, desc))
            return self.finish("VIOLATION", None, t_start)
        self.settle_s = first - t_recovered
        self.from_fault_s = self.settle_s + (t_recovered - self.t_point_wall)
        self.t_settled = mono_us()
        self.client_at = self.client_state()
        outcome = self.check(st)
        if outcome in ("A", "B"):
            self.follow_up(outcome)
        return self.finish(outcome, None, t_start)

    def settle(self):
        """Polls both engines until they are settled for WATCH_S. Returns
        (statuses, monotonic time the stable stretch began), or (None,
        None) at the deadline. Two active owners at any poll is a
        violation (the hook timeline checks every instant, too)."""
        deadline = time.monotonic() + SETTLE_S
        since, key = None, None
        self.last_status = None
        while time.monotonic() < deadline:
            st = {n: p.status() for n, p in self.procs.items()}
            self.last_status = st
            ok = all(s is not None and s["inflight"] == "0" and s["state"] in ("ACTIVE", "ABSENT")
                     for s in st.values())
            if ok and sum(s["state"] == "ACTIVE" for s in st.values()) > 1 and \
                    "two engines report the user ACTIVE" not in self.violations:
                self.violation("two engines report the user ACTIVE")
            now = time.monotonic()
            k = tuple(sorted((n, s["state"]) for n, s in st.items())) if ok else None
            if k is None:
                since, key = None, None
            elif k != key:
                since, key = now, k
            elif now - since >= WATCH_S:
                return st, since
            time.sleep(0.05)
        return None, None

    # ----------------------------------------------------------------- checks

    def check(self, st):
        upto = self.t_settled
        ea, eb = self.a.events(upto), self.b.events(upto)
        self.check_timeline(ea, eb)
        for n, s in st.items():
            if (s["state"] == "ACTIVE") != (s["present"] == "1" and s["serving"] == "1"):
                self.violation("%s: engine says %s but the app has present=%s serving=%s" %
                               (n, s["state"], s["present"], s["serving"]))
        active = [n for n, s in st.items() if s["state"] == "ACTIVE"]
        pauses = [e for e in ea if e[2] == "pause"]
        pause = pauses[-1] if pauses else None
        if len(active) > 1:
            self.violation("two active owners at the end")
            return "VIOLATION"
        if not active:
            b_prepared = any(e[2] == "reached-prepared" for e in eb)
            a_released = any(e[2] == "release" for e in ea)
            if self.killed == "A" and not b_prepared:
                return "lost"
            if self.killed == "B" and a_released:
                return "lost"
            self.violation("no owner (killed %s, destination prepared %s, source released %s)"
                           % (self.killed, b_prepared, a_released))
            return "VIOLATION"
        w = active[0]
        if w == "A":
            if self.a.instance != 0:
                self.violation("the restarted source serves the user")
                return "VIOLATION"
            if pause:
                resumes = [e for e in ea if e[2] == "resume" and e[1] > pause[1]]
                if not resumes:
                    self.violation("the source serves again without a resume")
                    return "VIOLATION"
                self.same_state(pause, resumes[0], "resumed at A")
            if any(e[2] == "release" for e in ea):
                self.violation("the source released the user yet serves it")
        else:
            acts = [e for e in eb if e[2] == "activate" and e[0] == self.b.instance]
            if not acts:
                self.violation("B has the user active without an activate hook")
                return "VIOLATION"
            if not pause:
                self.violation("B activated a user the source never paused")
                return "VIOLATION"
            self.same_state(pause, acts[-1], "activated at B")
        return "VIOLATION" if self.violations else w

    def same_state(self, pause, got, what):
        for k in ("light", "files"):
            if pause[3].get(k) != got[3].get(k):
                self.violation("%s with %s %s, at pause it was %s" % (
                    what, k, got[3].get(k), pause[3].get(k)))

    def check_timeline(self, ea, eb):
        """Serving intervals of the two apps never overlap."""
        now = mono_us()

        def intervals(evs, proc):
            out, start, cur_inst = [], None, None
            ends = dict(proc.ended)
            for inst, t, what, _ in evs:
                if inst != cur_inst:
                    if start is not None:
                        out.append((start, ends.get(cur_inst, now)))
                    start, cur_inst = None, inst
                if what in ("serve", "resume", "activate"):
                    if start is None:
                        start = t
                elif what in ("pause", "release") and start is not None:
                    out.append((start, t))
                    start = None
            if start is not None:
                out.append((start, ends.get(cur_inst, now)))
            return out
        ia, ib = intervals(ea, self.a), intervals(eb, self.b)
        for s1, e1 in ia:
            for s2, e2 in ib:
                if s1 < e2 and s2 < e1:
                    self.violation("both apps served the user for %.1f ms" %
                                   ((min(e1, e2) - max(s1, s2)) / 1000))
                    return

    def follow_up(self, winner):
        """Liveness: the winner can move the user to the other engine."""
        other = "B" if winner == "A" else "A"
        pw, po = self.procs[winner], self.procs[other]
        mw = pw.mark()
        r = pw.query("migrate " + self.url[other], "MIGRATE")
        if r != "MIGRATE rc=0":
            self.next = "refused (%s)" % r
            return
        st, _ = self.settle()
        if st is None:
            self.next = "stuck"
            return
        if st[other]["state"] != "ACTIVE" or st[winner]["state"] != "ABSENT":
            self.next = "failed (%s %s, %s %s)" % (winner, st[winner]["state"], other,
                                                   st[other]["state"])
            return
        t0 = pw.lines[mw][1] if mw < len(pw.lines) else 0
        pause = [e for e in pw.events() if e[2] == "pause" and e[1] >= t0 - 1000000]
        act = [e for e in po.events() if e[2] == "activate" and e[0] == po.instance]
        if not pause or not act:
            self.next = "failed (no pause/activate)"
            return
        for k in ("light", "files"):
            if pause[-1][3].get(k) != act[-1][3].get(k):
                self.next = "failed (%s differs)" % k
                return
        self.next = "ok"

    def finish(self, outcome, setup_error, t_start):
        self.outcome = outcome
        self.setup_error = setup_error
        self.total_s = time.monotonic() - t_start
        if not hasattr(self, "settle_s"):
            self.settle_s = None
        if not hasattr(self, "from_fault_s"):
            self.from_fault_s = None
        if not hasattr(self, "next"):
            self.next = "-"
        exp = expected(self.point, self.fault)
        self.unexpected = outcome in ("A", "B", "lost") and outcome not in exp
        self.expected = "|".join(sorted(exp))
        if not hasattr(self, "client_at"):
            self.client_at = self.client_state()
        return self

    def client_state(self):
        """Where the user's client is (informational): its last state."""
        if self.client is None:
            return "-"
        with self.client.cv:
            states = [l for _, _, l in self.client.lines if l.startswith("CLIENT ")]
        if not states:
            return "-"
        parts = states[-1].split()
        if parts[2] == "ATTACHED" and len(parts) > 4:
            return "attached to " + parts[4]
        return parts[2].lower()

    def problems(self):
        out = list(self.violations) + list(self.errors)
        if self.setup_error:
            out.append(self.setup_error)
        if self.unexpected:
            out.append("outcome %s, the protocol's table allows %s" % (self.outcome, self.expected))
        if self.next not in ("ok", "-"):
            out.append("follow-up migration %s" % self.next)
        if not out and self.outcome not in ("A", "B", "lost"):
            out.append("outcome %s" % self.outcome)
        return out

    @property
    def failed(self):
        return (self.outcome not in ("A", "B", "lost") or bool(self.violations) or
                bool(self.errors) or self.unexpected or self.next not in ("ok", "-"))


# --------------------------------------------------------------------- main

OUTCOME_TEXT = {"A": "stayed at A", "B": "committed at B", "lost": "lost with the process"}


def row(c):
    out = OUTCOME_TEXT.get(c.outcome, c.outcome)
    if c.unexpected:
        out += " (unexpected: %s)" % c.expected
    settle = "%.2f s" % c.settle_s if c.settle_s is not None else "-"
    total = "%.2f s" % c.from_fault_s if c.from_fault_s is not None else "-"
    return [c.point, c.fault, c.kind, out, total, settle, c.next, c.client_at]


HEADER = ["point", "fault", "state", "outcome", "settled after the fault", "after recovery",
          "next migration", "client"]


def table(cases, md):
    rows = [row(c) for c in cases]
    if md:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    w = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    fmt = "  ".join("%%-%ds" % n for n in w)
    return "\n".join([fmt % tuple(HEADER), fmt % tuple("-" * n for n in w)] +
                     [fmt % tuple(r) for r in rows])


SHORT = {"A": "A", "B": "B", "lost": "lost"}


def grid(cases):
    """Markdown: a row per point, a column per fault and state kind; each
    cell is the outcome and the time from the fault to settled."""
    by = {(c.point, c.fault, c.kind): c for c in cases}
    cols = [(f, k) for f in FAULTS for k in KINDS if any((p, f, k) in by for p, *_ in POINTS)]
    lines = ["| point | " + " | ".join("%s, %s" % (f, k) for f, k in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for p, *_ in POINTS:
        if not any((p, f, k) in by for f, k in cols):
            continue
        cells = []
        for f, k in cols:
            c = by.get((p, f, k))
            if c is None:
                cells.append("")
                continue
            o = SHORT.get(c.outcome, "**%s**" % c.outcome)
            if c.failed:
                o = "**%s (fail)**" % o
            cells.append(o + (" %.1f s" % c.from_fault_s if c.from_fault_s is not None else ""))
        lines.append("| %s | %s |" % (p, " | ".join(cells)))
    return "\n".join(lines)


def main():
    global DOWN_MS, CUT_MS, STOP_MS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True, help="the fault_server binary")
    ap.add_argument("--subset", choices=["fast", "all"], default="all")
    ap.add_argument("--case", action="append", default=[],
                    help="POINT/FAULT/KIND (repeatable; overrides --subset)")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once")
    ap.add_argument("--markdown", help="also write the table (markdown) to this file")
    ap.add_argument("--keep", help="keep every case's logs in this folder")
    ap.add_argument("--down-ms", type=int, default=DOWN_MS,
                    help="how long a killed process stays down (default %(default)s)")
    ap.add_argument("--cut-ms", type=int, default=CUT_MS,
                    help="how long a cut link stays cut (default %(default)s)")
    ap.add_argument("--stop-ms", type=int, default=STOP_MS,
                    help="how long a stopped process stays stopped (default %(default)s)")
    args = ap.parse_args()
    DOWN_MS, CUT_MS, STOP_MS = args.down_ms, args.cut_ms, args.stop_ms

    if args.case:
        todo = [tuple(c.split("/")) for c in args.case]
    elif args.subset == "fast":
        todo = FAST
    else:
        todo = [(p, f, k) for (p, _, kinds, _) in POINTS for k in KINDS
                if kinds in ("both", k) for f in FAULTS]
    for p, f, k in todo:
        if p not in POINT_INDEX or f not in FAULTS or k not in KINDS:
            sys.exit("unknown case %s/%s/%s" % (p, f, k))

    work = args.keep or tempfile.mkdtemp(prefix="mig-fault-")
    os.makedirs(work, exist_ok=True)
    print("fault matrix: %d cases, logs in %s" % (len(todo), work), flush=True)
    results = [None] * len(todo)
    lock = threading.Lock()
    nxt = [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(todo):
                return
            p, f, k = todo[i]
            try:
                c = Case(args.server, p, f, k, work).run()
            except Exception as ex:  # a driver bug must not pass silently
                c = Case.__new__(Case)
                c.point, c.fault, c.kind = p, f, k
                c.name = "%s/%s/%s" % (p, f, k)
                c.violations, c.errors = [], ["driver error: %r" % ex]
                c.outcome, c.setup_error = "ERROR", None
                c.settle_s, c.from_fault_s, c.next, c.client_at = None, None, "-", "-"
                c.unexpected, c.expected = False, ""
            results[i] = c
            with lock:
                r = row(c)
                print("%-40s %-30s settled %-8s (%-8s after recovery) next %-6s %s" % (
                    c.name, r[3], r[4], r[5], c.next,
                    ("FAIL: " + "; ".join(c.problems())) if c.failed else ""), flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    print()
    print(table(results, False))
    counts = {}
    for c in results:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    violations = sum(1 for c in results if c.violations or c.outcome == "VIOLATION")
    unexpected = sum(1 for c in results if c.unexpected)
    nextfail = sum(1 for c in results if c.next not in ("ok", "-"))
    other = sum(1 for c in results if c.outcome not in ("A", "B", "lost", "VIOLATION"))
    print()
    print("%d cases: %d committed at B, %d stayed at A, %d lost with the process; "
          "%d invariant violations, %d unexpected outcomes, %d failed follow-up migrations, "
          "%d not run (setup / point not reached)" % (
              len(results), counts.get("B", 0), counts.get("A", 0), counts.get("lost", 0),
              violations, unexpected, nextfail, other))
    errors = sum(1 for c in results if c.errors)
    if errors:
        print("%d cases with a process failure (crash, sanitizer report, exit status)" % errors)
    for c in results:
        if c.failed:
            print("FAILED %s: %s" % (c.name, "; ".join(c.problems())))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(grid(results) + "\n\n" + table(results, True) + "\n")
    failed = any(c.failed for c in results)
    if not failed and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
