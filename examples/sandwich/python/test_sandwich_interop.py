"""The Python sandwich server interoperates with the C one.

Real processes on loopback: the C sandwich_server and sandwich_server.py as
two cloudlets with separate state folders, the C sandwich_client simulating
the users' cameras, and the migrations asked through the control channel
(migrate.Control, what migratectl uses). Mid-assembly user-1 moves to the
other cloudlet and later back; user-2 stays where it started.

For every user: finished; steps bread..done in order, none repeated or
skipped (the client's summary and the servers' own step lines across both
logs); the server's frame count equal to the client's; frames.log at the
cloudlet that holds the user at the end byte for byte what its camera sent
(frames 1..N once each), frames.idx lists 1..N with the cloudlets that
recorded them in order, the other cloudlet has no folder, and only the
holding cloudlet prints a "final" line for it.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import migrate

SECRET = b"sandwich-python-interop-secret-0123456789"
WAIT_S = 30.0
STEPS = ["bread", "ham", "lettuce", "half", "tomato", "full", "done"]
FNV_INIT = 0xcbf29ce484222325


def fnv(data, h=FNV_INIT):
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def expected_frames(index, hold):
    """2 "nothing", each item held `hold` frames (the 6th finishing on its
    first), cucumber for users 0, 2 mod 3, extra ham for users 1, 2 mod 3."""
    return 2 + 5 * hold + 1 + (3 if index % 3 != 1 else 0) + (3 if index % 3 != 0 else 0)


class Cloudlet:
    def __init__(self, base, name, argv):
        self.name = name
        self.dir = os.path.join(base, name)
        self.log = os.path.join(base, name + ".log")
        self.err = os.path.join(base, name + ".err")
        os.mkdir(self.dir)
        with open(self.log, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv + ["--id", name, "--secret-file",
                                                 os.path.join(base, "secret"),
                                                 "--state", self.dir],
                                         stdout=out, stderr=err)
        wait_for(lambda: re.search(r"^app \S+\n", read(self.log), re.M),  # a whole line
                 f"cloudlet {name} to start", self)
        m = re.match(r"url (\S+)\napp (\S+)\n", read(self.log))
        self.url, self.app = m.group(1), m.group(2)

    def stop(self):
        """SIGTERM: the server prints its "final" lines and must exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if rc != 0:
            raise AssertionError(f"cloudlet {self.name} exited with {rc}:\n{read(self.err)}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def lines(self, what, user):
        """(time, fields) of the server's "<t> <name> <what> <user> k=v..." lines."""
        out = []
        for line in read(self.log).splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == what and parts[3] == user:
                fields = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
                out.append((float(parts[0]), fields))
        return out


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_for(pred, what, cloudlet=None):
    end = time.monotonic() + WAIT_S
    while not pred():
        if cloudlet is not None and cloudlet.proc.poll() is not None:
            raise AssertionError(f"{cloudlet.name} exited ({cloudlet.proc.returncode}) "
                                 f"waiting for {what}:\n{read(cloudlet.err)}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class InteropTest(unittest.TestCase):
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="mig-sandwich-py-")
        with open(os.path.join(self.base, "secret"), "wb") as f:
            f.write(SECRET + b"\n")
        self.c_server = [os.environ["MIG_SANDWICH_SERVER"]]
        self.py_server = [sys.executable, os.environ["MIG_SANDWICH_PY_SERVER"]]
        self.client_exe = os.environ["MIG_SANDWICH_CLIENT"]
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if isinstance(p, Cloudlet):
                p.kill()
            elif p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def migrate(self, user, src, dst):
        with migrate.Control(src.url, secret=SECRET) as ctl:
            final = ctl.migrate(user, dst.url, timeout_ms=60000)
        self.assertEqual(final.type, migrate.EventType.COMMITTED)
        print(f"# {user} {src.name}->{dst.name}: {final.bytes_sent} bytes, {final.rounds} "
              f"rounds, downtime {final.downtime_us / 1000:.3f} ms", file=sys.stderr)
        # The user's folder is where the user is, and only there.
        self.assertTrue(os.path.isdir(os.path.join(dst.dir, user)))
        self.assertFalse(os.path.exists(os.path.join(src.dir, user)))

    def run_scenario(self, first_argv, second_argv):
        a = Cloudlet(self.base, "A", first_argv)
        self.procs.append(a)
        b = Cloudlet(self.base, "B", second_argv)
        self.procs.append(b)
        clog = os.path.join(self.base, "clients.log")
        hold = [16, 6]
        with open(clog, "wb") as out, open(clog + ".err", "wb") as err:
            client = subprocess.Popen(
                [self.client_exe, "--server", a.app, "--users", "user-1,user-2",
                 "--interval-ms", "50", "--hold", ",".join(map(str, hold)),
                 "--image-bytes", "8192", "--timeout", "120"], stdout=out, stderr=err)
        self.procs.append(client)

        wait_for(lambda: " user-1 A step step=lettuce " in read(clog), "user-1 at lettuce", a)
        self.migrate("user-1", a, b)
        # Back while half-way through B's steps, well before it could finish.
        wait_for(lambda: " user-1 B step step=half " in read(clog), "user-1 at half on B", b)
        self.migrate("user-1", b, a)
        try:
            rc = client.wait(60)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        self.assertEqual(rc, 0, f"sandwich_client: {rc}\n{read(clog)}\n{read(clog + '.err')}")
        a.stop()
        b.stop()

        summaries = {}
        for line in read(clog).splitlines():
            if line.startswith("summary "):
                fields = dict(p.split("=", 1) for p in line.split()[1:])
                summaries[fields["user"]] = fields
        self.assertEqual(sorted(summaries), ["user-1", "user-2"])
        self.check_user(a, b, summaries["user-1"], 0, hold[0], "A,B,A", redirects=2)
        self.check_user(a, b, summaries["user-2"], 1, hold[1], "A", redirects=0)
        self.assertEqual(self.origins(a, "user-1"), "A,B,A")  # frames.idx: who recorded what
        self.assertEqual(self.origins(a, "user-2"), "A")

    def check_user(self, home, away, s, index, hold, cloudlets, redirects):
        user = s["user"]
        print(f"# {user}: steps {s['steps']}, {s['frames']} frames, {s['waits']} waits, "
              f"{s['redirects']} redirects, served by {s['cloudlets']}", file=sys.stderr)
        self.assertEqual(s["done"], "1")
        self.assertEqual(s["steps"], ",".join(STEPS))  # none repeated, none skipped
        self.assertEqual(s["consistent"], "1")
        self.assertEqual(int(s["frames"]), expected_frames(index, hold))
        self.assertEqual(s["cloudlets"], cloudlets)
        self.assertEqual(int(s["redirects"]), redirects)
        # The servers' step lines, both logs in time order: ham..done once each.
        steps = sorted(home.lines("step", user) + away.lines("step", user), key=lambda x: x[0])
        self.assertEqual([f["step"] for _, f in steps], STEPS[1:])
        # frames.log at the holding cloudlet: what the camera sent, in order.
        with open(os.path.join(home.dir, user, "frames.log"), "rb") as f:
            log = f.read()
        self.assertEqual(len(log), int(s["log_bytes"]))
        self.assertEqual(fnv(log), int(s["log_fnv"], 16))
        off, fid = 0, 0
        while off < len(log):
            nl = log.index(b"\n", off)
            m = re.fullmatch(rb"frame (\d+) ([a-z-]+) (\d+)", log[off:nl])
            self.assertIsNotNone(m, f"bad record header at {off}")
            self.assertEqual(int(m.group(1)), fid + 1)
            fid = int(m.group(1))
            off = nl + 1 + int(m.group(3)) + 1
        self.assertEqual((off, fid), (len(log), int(s["frames"])))
        self.assertFalse(os.path.exists(os.path.join(away.dir, user)))
        finals = home.lines("final", user)
        self.assertEqual([f["step"] for _, f in finals], ["done"])
        self.assertEqual(int(finals[0][1]["frames"]), int(s["frames"]))
        self.assertEqual(away.lines("final", user), [])

    def origins(self, home, user):
        order, want, offset = [], 1, 0
        with open(os.path.join(home.dir, user, "frames.idx")) as f:
            for line in f:
                fid, _label, off, n, where = line.split()
                self.assertEqual((int(fid), int(off)), (want, offset))
                want, offset = want + 1, offset + int(n)
                if not order or order[-1] != where:
                    order.append(where)
        return ",".join(order)

    def test_bad_input_to_the_python_server(self):
        """Malformed app messages close that connection only; the server
        records nothing for them and keeps serving."""
        import socket
        import struct

        import sandwich_pb2 as pb
        a = Cloudlet(self.base, "A", self.py_server)
        self.procs.append(a)
        host, port = a.app[len("tcp://"):].rsplit(":", 1)

        def exchange(*payloads):
            """Sends length-prefixed payloads; returns the decoded answers
            until the server closes the connection (or 5 s pass)."""
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                for p in payloads:
                    sock.sendall(struct.pack(">I", len(p)) + p)
                sock.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            answers = []
            while data:
                (n,) = struct.unpack(">I", data[:4])
                answers.append(pb.ServerMsg.FromString(data[4:4 + n]))
                data = data[4 + n:]
            return answers

        def hello(user, last=0):
            return pb.ClientMsg(hello=pb.Hello(user=user, last_frame_id=last)).SerializeToString()

        def frame(fid, label, user="ok-user"):
            return pb.ClientMsg(frame=pb.Frame(user=user, frame_id=fid, label=label,
                                               image=b"x" * 10)).SerializeToString()

        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(struct.pack(">I", (1 << 20) + 1))  # over the message cap
            self.assertEqual(sock.recv(10), b"")  # closed without an answer
        self.assertEqual(exchange(b"\xff\xff\xff not protobuf"), [])
        self.assertEqual(exchange(hello("../etc")), [])      # not a safe folder name
        self.assertEqual(exchange(frame(1, "bread")), [])    # a frame before Hello
        moved = exchange(hello("late-user", last=5))          # started elsewhere
        self.assertEqual([m.WhichOneof("body") for m in moved], ["moved"])
        answers = exchange(hello("ok-user"), frame(1, "Bread!"))  # bad label: closed
        self.assertEqual([m.WhichOneof("body") for m in answers], ["welcome"])
        w = answers[0].welcome
        self.assertEqual((w.cloudlet, w.next_frame_id, w.session_url), ("A", 1, a.url))
        self.assertTrue(w.session_token)
        self.assertFalse(os.path.exists(os.path.join(a.dir, "ok-user")))
        # Still serving: the next connection of the user records frame 1.
        answers = exchange(hello("ok-user"), frame(1, "nothing"))
        self.assertEqual([m.WhichOneof("body") for m in answers], ["welcome", "instruction"])
        self.assertEqual(answers[1].instruction.frames_seen, 1)
        with open(os.path.join(a.dir, "ok-user", "frames.log"), "rb") as f:
            self.assertEqual(f.read(), b"frame 1 nothing 10\n" + b"x" * 10 + b"\n")
        self.assertEqual(sorted(os.listdir(a.dir)), ["ok-user"])  # nothing for the others
        self.assertFalse(os.path.exists(os.path.join(self.base, "etc")))
        a.stop()
        self.assertEqual([f["frames"] for _, f in a.lines("final", "ok-user")], ["1"])

    def test_c_to_python_and_back(self):
        """A is the C server, B the Python one."""
        self.run_scenario(self.c_server, self.py_server)

    def test_python_to_c_and_back(self):
        """A is the Python server (new users start there), B the C one."""
        self.run_scenario(self.py_server, self.c_server)


if __name__ == "__main__":
    unittest.main()
