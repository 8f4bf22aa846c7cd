#!/usr/bin/python3
"""sandwich_server.py: the sandwich assistant server of examples/sandwich, in
Python on asyncio with the ``migrate`` binding (bindings/python).

It speaks the same app protocol (../sandwich.proto: 4-byte big-endian length,
then one ClientMsg or ServerMsg) as the C sandwich_server, and keeps each
user's state the same way, so users migrate between C and Python cloudlets
in both directions:

  - light state, the "progress" domain, version 1: a sandwich.Progress
    message, the same bytes the C server extracts and merges;
  - file state, the "frames" domain (append-only): STATE/<user>/frames.log
    and STATE/<user>/frames.idx, in the C server's record format.

    sandwich_server.py --id NAME --secret-file FILE --state DIR
                       [--port P] [--app-port P] [--listen ADDRESS]

Output is the C server's: "url <engine url>" and "app <app url>" first, then
"<wall clock> <cloudlet> <what> <user> key=value..." per event, and on
SIGTERM/SIGINT one "final" line per user it holds; exit status 0.

Needs the ``migrate`` package and the generated ``sandwich_pb2`` module on
PYTHONPATH (meson builds it into build/examples/sandwich/python/), and
python3-protobuf: run it with /usr/bin/python3.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import struct
import sys
import time
from typing import Dict, Optional

import migrate
import sandwich_pb2 as pb

MAX_MSG = 1 << 20  # largest message on the app connection (SW_MAX_MSG)
RETRY_MS = 100     # what a paused user's client is told to wait

# name, instruction, label seen once done, typical wrong item, its correction
STEPS = [
    ("bread", "Put a piece of bread on the table.", "bread", None, None),
    ("ham", "Now put a piece of ham on the bread.", "ham", None, None),
    ("lettuce", "Now put a piece of lettuce on the ham.", "lettuce", "cucumber",
     "That is cucumber, not lettuce: replace the cucumber with lettuce."),
    ("half", "Now put a piece of bread on the lettuce.", "half", None, None),
    ("tomato", "Now put a piece of tomato on the bread.", "tomato", "ham",
     "Too much ham: replace the ham with tomato."),
    ("full", "Now put the last piece of bread on top.", "full", None, None),
    ("done", "Done: enjoy your sandwich!", None, None, None),
]
STEP_DONE = len(STEPS) - 1

USER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LABEL_RE = re.compile(r"[a-z-]{1,31}")


def step_name(step: int) -> str:
    return STEPS[step][0] if 0 <= step < len(STEPS) else "?"


class User:
    """One user: its light state (the "progress" domain) and the app's view."""

    def __init__(self, uid: str):
        self.id = uid
        self.step = 0
        self.text = STEPS[0][1]
        self.frames_seen = 0
        self.last_frame_id = 0
        self.mistakes = 0
        self.last_label = ""
        self.serving = False  # frames advance it here
        self.conn: Optional[Conn] = None


class Conn:
    """One client connection of the app protocol."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.user = ""        # "" until Hello
        self.closing = False  # Moved sent: only wait for the close
        self.dead = False

    def send(self, msg: pb.ServerMsg) -> None:
        if self.dead:
            return
        body = msg.SerializeToString()
        self.writer.write(struct.pack(">I", len(body)) + body)

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            self.writer.close()


class Server:
    def __init__(self, name: str, root: str):
        self.name = name
        self.root = root
        self.users: Dict[str, User] = {}
        self.engine: Optional[migrate.Engine] = None

    def say(self, what: str, user: str, rest: str = "") -> None:
        line = f"{time.time():.6f} {self.name} {what} {user}"
        print(f"{line} {rest}" if rest else line, flush=True)

    # ------------------------------------------------------------ the app protocol

    def send_wait(self, c: Conn, frame_id: int, reason: str, next_frame_id: int = 0) -> None:
        c.send(pb.ServerMsg(wait=pb.Wait(frame_id=frame_id, reason=reason, retry_ms=RETRY_MS,
                                         next_frame_id=next_frame_id)))

    def send_moved(self, c: Conn, user: str, reason: str) -> None:
        """The user is not (or no longer) served here: say so and close; the
        client follows the redirect its reconnect helper receives."""
        c.send(pb.ServerMsg(moved=pb.Moved(user=user, reason=reason)))
        c.closing = True
        if not c.dead and c.writer.can_write_eof():
            c.writer.write_eof()

    def record_frame(self, u: User, f: pb.Frame) -> Optional[str]:
        """File state: append the frame to ROOT/<user>/frames.log and a line to
        frames.idx, opening and closing them each time so nothing stays open
        when the library moves the folder. A failed append is cut off again.
        Returns None or the error."""
        folder = os.path.join(self.root, u.id)
        header = f"frame {f.frame_id} {f.label} {len(f.image)}\n".encode()
        record = header + f.image + b"\n"
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(os.path.join(folder, "frames.log"),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            return exc.strerror or str(exc)
        try:
            offset = os.fstat(fd).st_size
            view = memoryview(record)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError as exc:
                try:
                    os.ftruncate(fd, offset)
                except OSError as cut:
                    self.say("error", u.id, f"frames.log: cannot cut off a failed append: {cut}")
                return exc.strerror or str(exc)
        finally:
            os.close(fd)
        try:
            with open(os.path.join(folder, "frames.idx"), "a") as idx:
                idx.write(f"{f.frame_id} {f.label} {offset} {len(record)} {self.name}\n")
        except OSError as exc:  # only an aid: logged, not fatal
            self.say("error", u.id, f"frames.idx: {exc}")
        return None

    def assist(self, u: User, label: str) -> "tuple[int, str]":
        """The assistant: what the label means at the user's step."""
        _, _, want, mistake, correction = STEPS[u.step]
        kind, text = pb.KIND_SAME, u.text
        if want is not None and label == want:
            u.step += 1
            text = STEPS[u.step][1]
            kind = pb.KIND_STEP
        elif mistake is not None and label == mistake and u.last_label != label:
            u.mistakes += 1
            text = correction  # once per run of the same wrong item
            kind = pb.KIND_CORRECTION
        if kind != pb.KIND_SAME:
            u.text = text
        u.last_label = label
        return kind, text

    def on_hello(self, c: Conn, h: pb.Hello) -> None:
        if not USER_RE.fullmatch(h.user) or h.user.startswith(".") or \
                (c.user and c.user != h.user):
            c.kill()
            return
        u = self.users.get(h.user)
        if u is None:
            if self.engine.user_state(h.user) != migrate.UserState.ABSENT:
                self.send_wait(c, 0, "arriving")  # the app slot is not there yet
                return
            if h.last_frame_id > 0:  # started elsewhere: never start over
                self.send_moved(c, h.user, "user not served here")
                return
            try:
                self.engine.add_user(h.user)  # a new user: served here from now on
            except migrate.MigrateError as exc:
                self.send_moved(c, h.user, exc.strerror)
                return
            u = self.users[h.user] = User(h.user)
            u.serving = True
            self.say("new", u.id, f"step={step_name(u.step)}")
        if not u.serving:  # paused (leaving) or not yet activated (arriving)
            self.send_wait(c, 0, "moving between cloudlets")
            return
        if u.conn is not None and u.conn is not c:
            u.conn.kill()  # the newest connection of a user wins
        u.conn = c
        c.user = u.id
        # The session token lets the client's reconnect helper attach to this
        # engine's session channel; it is redirected when the user moves.
        try:
            token = self.engine.session_token(u.id)
        except migrate.MigrateError:
            token = ""
        w = pb.Welcome(user=u.id, step=u.step, text=u.text, next_frame_id=u.last_frame_id + 1,
                       cloudlet=self.name, session_url=self.engine.url, session_token=token)
        self.say("hello", u.id, f"step={step_name(u.step)} next_frame={w.next_frame_id}")
        c.send(pb.ServerMsg(welcome=w))

    def on_frame(self, c: Conn, f: pb.Frame) -> None:
        if not c.user or (f.user and f.user != c.user) or not LABEL_RE.fullmatch(f.label):
            c.kill()
            return
        u = self.users.get(c.user)
        if u is None:
            self.send_moved(c, c.user, "user not served here")
            return
        if not u.serving:  # paused for a migration: the client sends it again
            self.send_wait(c, f.frame_id, "moving between cloudlets")
            return
        kind, text = pb.KIND_SAME, u.text
        if f.frame_id != u.last_frame_id + 1:
            if f.frame_id > u.last_frame_id:  # a gap: ask for the one expected
                self.send_wait(c, f.frame_id, "out of order", u.last_frame_id + 1)
                return
            # a frame processed already: answer again, change nothing
        else:
            err = self.record_frame(u, f)
            if err:
                self.say("error", u.id, f"cannot record frame {f.frame_id}: {err}")
                self.send_wait(c, f.frame_id, "cannot record the frame")
                return
            kind, text = self.assist(u, f.label)
            u.frames_seen += 1
            u.last_frame_id = f.frame_id
            if kind == pb.KIND_STEP:
                self.say("step", u.id, f"step={step_name(u.step)} frame={f.frame_id}")
            elif kind == pb.KIND_CORRECTION:
                self.say("correction", u.id, f"step={step_name(u.step)} frame={f.frame_id}")
        c.send(pb.ServerMsg(instruction=pb.Instruction(
            step=u.step, text=text, frame_id=f.frame_id, kind=kind, cloudlet=self.name,
            frames_seen=u.frames_seen)))

    async def serve_conn(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        c = Conn(writer)
        try:
            while not c.dead:
                head = await reader.readexactly(4)
                (n,) = struct.unpack(">I", head)
                if n > MAX_MSG:
                    break
                body = await reader.readexactly(n)
                if c.closing:
                    continue  # Moved was said: only wait for the close
                try:
                    m = pb.ClientMsg.FromString(body)
                except Exception:
                    break
                which = m.WhichOneof("body")
                if which == "hello":
                    self.on_hello(c, m.hello)
                elif which == "frame":
                    self.on_frame(c, m.frame)
                else:
                    break
                if not c.dead:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            u = self.users.get(c.user) if c.user else None
            if u is not None and u.conn is c:
                u.conn = None
            c.kill()

    # ------------------------------------------------------------ libmigrate: light state

    def extract_progress(self, user: str) -> bytes:
        """Source, after pause(): the user's progress as a sandwich.Progress."""
        u = self.users[user]
        return pb.Progress(step=u.step, last_instruction=u.text, frames_seen=u.frames_seen,
                           mistakes=u.mistakes, last_frame_id=u.last_frame_id,
                           last_label=u.last_label).SerializeToString()

    def merge_progress(self, user: str, version: int, data: bytes) -> None:
        """Destination: load it into the inactive arriving user."""
        if version != 1:
            raise ValueError(f"progress version {version}: there is no older format")
        p = pb.Progress.FromString(data)
        if not 0 <= p.step <= STEP_DONE or p.frames_seen > p.last_frame_id:
            raise ValueError(f"inconsistent progress for {user}: step {p.step}, "
                             f"{p.frames_seen} frames seen, last frame {p.last_frame_id}")
        u = self.users.setdefault(user, User(user))
        u.step, u.text = p.step, p.last_instruction
        u.frames_seen, u.mistakes = p.frames_seen, p.mistakes
        u.last_frame_id, u.last_label = p.last_frame_id, p.last_label
        u.serving = False  # inactive until activate()

    # ------------------------------------------------------------ libmigrate: hooks

    def on_pause(self, user: str) -> None:
        u = self.users[user]
        u.serving = False  # its frames get "wait" from now on; others go on
        self.say("pause", user, f"step={step_name(u.step)} frames={u.frames_seen}")

    def on_resume(self, user: str) -> None:
        if user in self.users:
            self.users[user].serving = True
        self.say("resume", user, "(migration aborted)")

    def on_release(self, user: str) -> None:
        u = self.users.pop(user, None)
        if u is None:
            return
        self.say("release", user, f"step={step_name(u.step)} frames={u.frames_seen}")
        if u.conn is not None:
            self.send_moved(u.conn, user, "the user moved to another cloudlet")

    def on_incoming(self, user: str) -> bool:
        if not USER_RE.fullmatch(user) or user.startswith(".") or user in self.users:
            return False
        self.users[user] = User(user)  # inactive: serving is False
        return True

    def on_activate(self, user: str) -> None:
        u = self.users.get(user)
        if u is None:
            return
        u.serving = True
        self.say("activate", user, f"step={step_name(u.step)} frames={u.frames_seen}")

    def on_drop(self, user: str) -> None:
        u = self.users.get(user)
        if u is not None and not u.serving:
            del self.users[user]
        self.say("drop", user, "(incoming copy discarded)")

    def on_event(self, ev: migrate.Event) -> None:
        if ev.type == migrate.EventType.STARTED:
            self.say("migrate", ev.user, f"to={ev.peer_url}")
        elif ev.type == migrate.EventType.COMMITTED:
            self.say("committed", ev.user,
                     f"to={ev.peer_url} bytes_sent={ev.bytes_sent} "
                     f"bytes_received={ev.bytes_received} rounds={ev.rounds} "
                     f"duration_us={ev.duration_us} downtime_us={ev.downtime_us}")
        elif ev.type == migrate.EventType.ABORTED:
            self.say("aborted", ev.user,
                     f"error={migrate.err_name(ev.error)} reason=\"{ev.reason}\"")

    def on_log(self, level: migrate.LogLevel, line: str) -> None:
        print(f"{self.name} libmigrate[{int(level)}]: {line}", file=sys.stderr, flush=True)


async def main() -> int:
    ap = argparse.ArgumentParser(description="the sandwich assistant server, in Python")
    ap.add_argument("--id", required=True, help="the cloudlet's name, also its engine id")
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--state", required=True, help="file domain root: STATE/<user>/frames.log")
    ap.add_argument("--port", type=int, default=0, help="the engine's port")
    ap.add_argument("--app-port", type=int, default=0, help="the app protocol's port")
    ap.add_argument("--listen", default="127.0.0.1")
    args = ap.parse_args()
    try:
        with open(args.secret_file, "rb") as f:
            secret = f.read().rstrip(b"\r\n")
    except OSError as exc:
        print(f"sandwich_server.py: cannot read a secret from {args.secret_file}: {exc}",
              file=sys.stderr)
        return 2
    os.makedirs(args.state, exist_ok=True)

    s = Server(args.id, args.state)
    # The app's own endpoint first: its URL goes into the engine options, so
    # that redirects tell clients where to reconnect.
    app = await asyncio.start_server(s.serve_conn, args.listen, args.app_port)
    app_url = f"tcp://{args.listen}:{app.sockets[0].getsockname()[1]}"

    # 1. The engine: options, light and file domains, hooks, start (which
    #    plugs its fd into this loop: every callback runs here).
    try:
        engine = migrate.Engine(secret=secret, listen_address=args.listen,
                                listen_port=args.port, engine_id=args.id, app_url=app_url,
                                on_event=s.on_event, on_log=s.on_log,
                                log_level=migrate.LogLevel.WARN)
        s.engine = engine
        engine.register_light("progress", 1, s.extract_progress, s.merge_progress,
                              type_name="sandwich.Progress")
        engine.register_files("frames", args.state, version=1, append_only=True)
        engine.set_hooks(pause=s.on_pause, resume=s.on_resume, release=s.on_release,
                         incoming=s.on_incoming, activate=s.on_activate, drop=s.on_drop)
        engine.start()
    except migrate.MigrateError as exc:
        print(f"sandwich_server.py: {exc}", file=sys.stderr)
        return 1
    print(f"url {engine.url}\napp {app_url}", flush=True)

    # 2. Serve until SIGTERM/SIGINT.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    engine.close()  # no callback runs after this
    app.close()
    for u in list(s.users.values()):
        s.say("final", u.id, f"step={step_name(u.step)} frames={u.frames_seen} "
                             f"mistakes={u.mistakes} last_frame={u.last_frame_id}")
        if u.conn is not None:
            u.conn.kill()
    s.users.clear()
    await app.wait_closed()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
