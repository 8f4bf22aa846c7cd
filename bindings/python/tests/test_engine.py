"""The binding end to end: real engines on loopback in one asyncio loop,
light and file state, hooks, events, the reconnect helper, the control
client, and every error path the binding promises (library errors as
MigrateError with the library's message, a raising merge callback aborting
the migration with the source keeping the user, argument checks, closing)."""

import asyncio
import gc
import os
import shutil
import socket
import tempfile
import unittest
import weakref

import migrate
from migrate import Error, EventType, MigrateError, UserState

SECRET = b"python-binding-test-secret-0123456789"
DEADLINE = 15.0


async def until(pred, what, timeout=DEADLINE):
    """Waits (on the loop, so the engines keep dispatching) until pred()."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def closed_port():
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """A toy server app: per-user light state (a counter and a note, as
    "n|note" bytes), files in ROOT/<user>/, and a record of hooks and events."""

    def __init__(self, name, root):
        self.name = name
        self.root = root
        self.state = {}
        self.serving = set()
        self.calls = []
        self.events = []
        self.merge_error = None  # an exception for merge to raise
        self.extract_error = None  # and for extract
        self.pause_error = None  # and for the pause hook

    def extract(self, user):
        if self.extract_error is not None:
            raise self.extract_error
        n, note = self.state[user]
        return f"{n}|{note}".encode()

    def merge(self, user, version, data):
        self.calls.append(("merge", user, version))
        if self.merge_error is not None:
            raise self.merge_error
        n, note = data.decode().split("|", 1)
        self.state[user] = (int(n), note)

    def hook(self, what):
        def fn(user):
            self.calls.append((what, user))
            if what == "pause":
                if self.pause_error is not None:
                    raise self.pause_error
                self.serving.discard(user)
            elif what in ("resume", "activate"):
                self.serving.add(user)
            elif what in ("release", "drop"):
                self.state.pop(user, None)
        return fn

    def make_engine(self, **kw):
        e = migrate.Engine(secret=SECRET, engine_id=self.name, on_event=self.events.append,
                           **kw)
        e.register_light("counter", 1, self.extract, self.merge, type_name="test.Counter")
        e.register_files("files", self.root, append_only=False)
        e.set_hooks(**{h: self.hook(h) for h in
                       ("pause", "resume", "release", "incoming", "activate", "drop")})
        return e

    def add(self, engine, user, n, note, files):
        engine.add_user(user)
        self.state[user] = (n, note)
        self.serving.add(user)
        os.makedirs(os.path.join(self.root, user), exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(self.root, user, name), "wb") as f:
                f.write(data)

    def files(self, user):
        folder = os.path.join(self.root, user)
        if not os.path.isdir(folder):
            return None
        out = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = f.read()
        return out

    def types(self):
        return [e.type for e in self.events]


class EngineTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mig-py-")
        self.apps = []
        self.engines = []

    async def asyncTearDown(self):
        for e in self.engines:
            e.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cloudlet(self, name, **kw):
        root = os.path.join(self.tmp, name)
        os.mkdir(root)
        app = App(name, root)
        engine = app.make_engine(**kw)
        engine.start()
        self.engines.append(engine)
        return app, engine

    async def test_migrate_light_and_file_state_there_and_back(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        files = {"log.txt": b"line\n" * 1000, "blob.bin": os.urandom(50000)}
        a.add(ea, "alice", 41, "half a sandwich", files)
        self.assertEqual(ea.users(), {"alice": UserState.ACTIVE})

        m = ea.migrate("alice", eb.url)
        self.assertEqual(len(m.mid), 32)
        ev = await asyncio.wait_for(m, DEADLINE)
        self.assertEqual(ev.type, EventType.COMMITTED)
        self.assertEqual((ev.user, ev.peer_url, ev.error, ev.phase), ("alice", eb.url, 0, "done"))
        self.assertGreater(ev.bytes_sent, 50000)
        self.assertEqual(m.stats().state, "committed")
        await until(lambda: EventType.ACTIVATED in b.types(), "ACTIVATED at B")
        await until(lambda: ("release", "alice") in a.calls, "release at A")
        self.assertEqual(ea.user_state("alice"), UserState.ABSENT)
        self.assertEqual(eb.user_state("alice"), UserState.ACTIVE)
        self.assertEqual(b.state["alice"], (41, "half a sandwich"))
        self.assertNotIn("alice", a.state)  # released at the source
        self.assertEqual(b.files("alice"), files)
        self.assertIsNone(a.files("alice"))
        self.assertIn(("pause", "alice"), a.calls)
        self.assertIn(("release", "alice"), a.calls)
        self.assertEqual([c for c in b.calls if c[1] == "alice"][-3:],
                         [("incoming", "alice"), ("merge", "alice", 1), ("activate", "alice")])
        self.assertIn(EventType.STARTED, a.types())
        self.assertIn(EventType.INCOMING, b.types())

        b.state["alice"] = (42, "whole sandwich")
        with open(os.path.join(b.root, "alice", "log.txt"), "ab") as f:
            f.write(b"more\n")
        files["log.txt"] += b"more\n"
        ev = await asyncio.wait_for(eb.migrate("alice", ea.url), DEADLINE)
        self.assertEqual(ev.type, EventType.COMMITTED)
        await until(lambda: ea.user_state("alice") == UserState.ACTIVE, "alice back at A")
        await until(lambda: eb.user_state("alice") == UserState.ABSENT, "alice gone from B")
        self.assertEqual(a.state["alice"], (42, "whole sandwich"))
        self.assertEqual(a.files("alice"), files)
        self.assertIsNone(b.files("alice"))

    async def test_raising_merge_aborts_and_the_source_keeps_the_user(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        files = {"frames.log": b"frame 1\n" * 500}
        a.add(ea, "bob", 7, "ham on bread", files)
        b.merge_error = RuntimeError("merge refused: corrupt counter")
        with self.assertLogs("migrate", level="ERROR") as logs:
            m = ea.migrate("bob", eb.url)
            with self.assertRaises(MigrateError) as caught:
                await asyncio.wait_for(m, DEADLINE)
            await until(lambda: EventType.DROPPED in b.types(), "DROPPED at B")
        err = caught.exception
        self.assertLess(err.code, 0)
        self.assertEqual(err.event.type, EventType.ABORTED)
        self.assertTrue(err.name.startswith("MIG_E"))
        self.assertIn(err.name, str(err))
        self.assertTrue(any("merge refused: corrupt counter" in line for line in logs.output))
        dropped = [e for e in b.events if e.type == EventType.DROPPED][0]
        self.assertIsInstance(dropped.exception, RuntimeError)
        self.assertEqual(str(dropped.exception), "merge refused: corrupt counter")
        # The source keeps the user, served, with its state and files intact.
        await until(lambda: ("resume", "bob") in a.calls, "resume at A")
        self.assertEqual(ea.user_state("bob"), UserState.ACTIVE)
        self.assertEqual(eb.user_state("bob"), UserState.ABSENT)
        self.assertIn("bob", a.serving)
        self.assertEqual(a.state["bob"], (7, "ham on bread"))
        self.assertEqual(a.files("bob"), files)
        self.assertNotIn("bob", b.state)
        self.assertIsNone(b.files("bob"))
        self.assertEqual(m.stats().state, "aborted")

        # Nothing was lost: once merge works, the same state moves.
        b.merge_error = None
        ev = await asyncio.wait_for(ea.migrate("bob", eb.url), DEADLINE)
        self.assertEqual(ev.type, EventType.COMMITTED)
        await until(lambda: eb.user_state("bob") == UserState.ACTIVE, "bob at B")
        self.assertEqual(b.state["bob"], (7, "ham on bread"))
        self.assertEqual(b.files("bob"), files)

    async def test_raising_extract_is_chained_to_the_awaitable(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        a.add(ea, "carol", 1, "bread", {})
        boom = KeyError("no such slot")
        a.extract_error = boom
        with self.assertLogs("migrate", level="ERROR"):
            with self.assertRaises(MigrateError) as caught:
                await asyncio.wait_for(ea.migrate("carol", eb.url), DEADLINE)
        self.assertIs(caught.exception.__cause__, boom)
        self.assertIs(caught.exception.event.exception, boom)
        self.assertEqual(ea.user_state("carol"), UserState.ACTIVE)
        await until(lambda: eb.user_state("carol") == UserState.ABSENT, "carol dropped at B")
        self.assertIn("carol", a.serving)

    async def test_keyboard_interrupt_in_a_callback_reaches_the_dispatcher(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        a.add(ea, "kim", 4, "half", {})
        a.pause_error = KeyboardInterrupt()
        ea.detach()  # dispatched by hand here, to catch what dispatch raises
        m = ea.migrate("kim", eb.url)
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        with self.assertLogs("migrate", level="ERROR"):
            while True:
                try:
                    ea.dispatch()
                except KeyboardInterrupt as exc:
                    self.assertIs(exc, a.pause_error)
                    break
                self.assertLess(loop.time(), end, "no KeyboardInterrupt from dispatch")
                await asyncio.sleep(0.005)
        ea.attach()
        with self.assertRaises(MigrateError) as c:  # the pause was refused
            await asyncio.wait_for(m, DEADLINE)
        self.assertIs(c.exception.__cause__, a.pause_error)
        self.assertEqual(ea.user_state("kim"), UserState.ACTIVE)
        self.assertEqual(a.state["kim"], (4, "half"))

    async def test_library_errors_carry_the_library_message(self):
        with self.assertRaises(MigrateError) as c:
            migrate.Engine(secret=b"too short")  # under 16 bytes
        self.assertEqual(c.exception.code, Error.EINVAL)
        self.assertEqual(c.exception.name, "MIG_EINVAL")
        self.assertEqual(c.exception.strerror, migrate.strerror(Error.EINVAL))

        e = migrate.Engine()  # no secret: start says why
        self.engines.append(e)
        with self.assertRaises(MigrateError) as c:
            e.start()
        self.assertEqual(c.exception.code, Error.EINVAL)
        self.assertIn("no cluster secret", str(c.exception))
        self.assertEqual(c.exception.detail, e.last_error)

        a, ea = self.cloudlet("A")
        with self.assertRaises(MigrateError) as c:
            ea.migrate("nobody", "ws://127.0.0.1:1")
        self.assertEqual(c.exception.code, Error.ENOUSER)
        self.assertIn("nobody", c.exception.detail)  # the library's text names the user
        with self.assertRaises(MigrateError) as c:
            ea.register_light("late", 1, a.extract, a.merge)  # after start
        self.assertEqual(c.exception.code, Error.ESTATE)
        a.add(ea, "dave", 1, "x", {})
        with self.assertRaises(MigrateError) as c:
            ea.add_user("dave")
        self.assertEqual(c.exception.code, Error.EEXIST)
        with self.assertRaises(MigrateError) as c:
            ea.migrate("dave", "not a url")
        self.assertEqual(c.exception.code, Error.EINVAL)

        # A closed port: the migration starts, then aborts; dave stays.
        port = closed_port()
        with self.assertRaises(MigrateError) as c:
            await asyncio.wait_for(ea.migrate("dave", f"ws://127.0.0.1:{port}"), DEADLINE)
        self.assertEqual(c.exception.code, Error.ECONNECT)
        self.assertEqual(ea.user_state("dave"), UserState.ACTIVE)

        # The control client to a closed port, and with a wrong secret.
        with self.assertRaises(MigrateError) as c:
            await asyncio.to_thread(migrate.Control, f"ws://127.0.0.1:{port}", secret=SECRET,
                                    timeout_ms=3000)
        self.assertEqual(c.exception.code, Error.ECONNECT)
        self.assertTrue(c.exception.detail)
        with self.assertRaises(MigrateError) as c:
            await asyncio.to_thread(migrate.Control, ea.url, secret=b"x" * 32, timeout_ms=3000)
        self.assertEqual(c.exception.code, Error.EAUTH)

    async def test_argument_checks(self):
        with self.assertRaisesRegex(TypeError, "secret must be bytes or str, not int"):
            migrate.Engine(secret=12345)
        with self.assertRaisesRegex(ValueError, "listen_port must be in 0..65535"):
            migrate.Engine(secret=SECRET, listen_port=70000)
        with self.assertRaisesRegex(TypeError, "on_event must be callable"):
            migrate.Engine(secret=SECRET, on_event="print")
        e = migrate.Engine(secret=SECRET)
        self.engines.append(e)
        with self.assertRaisesRegex(TypeError, "name must be str, not int"):
            e.register_light(5, 1, bytes, print)
        with self.assertRaisesRegex(TypeError, "extract must be callable"):
            e.register_light("x", 1, b"bytes", print)
        with self.assertRaisesRegex(TypeError, "user must be str, not bytes"):
            e.add_user(b"alice")
        with self.assertRaisesRegex(ValueError, "NUL"):
            e.add_user("al\0ice")
        with self.assertRaisesRegex(TypeError, "root must be str or os.PathLike"):
            e.register_files("f", 42)
        with self.assertRaises(MigrateError) as c:
            e.register_files("f", os.path.join(self.tmp, "missing"))
        self.assertEqual(c.exception.code, Error.EINVAL)
        with self.assertRaisesRegex(TypeError, "fallback_urls must be a sequence"):
            migrate.Client("ws://127.0.0.1:1", "token", fallback_urls="ws://x")

    async def test_cancel_keeps_the_user(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        a.add(ea, "ivan", 2, "ham", {"f": b"y" * 5000})
        m = ea.migrate("ivan", eb.url)
        self.assertTrue(m.cancel())  # before any dispatch: surely before COMMIT
        with self.assertRaises(MigrateError) as c:
            await asyncio.wait_for(m, DEADLINE)
        self.assertEqual(c.exception.code, Error.ECANCELED)
        self.assertFalse(m.cancel())  # over
        await until(lambda: eb.user_state("ivan") == UserState.ABSENT, "nothing left at B")
        self.assertEqual(ea.user_state("ivan"), UserState.ACTIVE)
        self.assertEqual(a.state["ivan"], (2, "ham"))
        self.assertEqual(a.files("ivan"), {"f": b"y" * 5000})

    async def test_close_with_callbacks_registered_and_migrations_in_flight(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        a.add(ea, "erin", 3, "lettuce", {"f": b"x" * 1000})
        m = ea.migrate("erin", eb.url)
        ea.close()  # before any dispatch: the awaitable fails, nothing runs after
        with self.assertRaises(MigrateError) as c:
            await m
        self.assertEqual(c.exception.code, Error.ECLOSED)
        ea.close()  # twice is harmless
        with self.assertRaisesRegex(MigrateError, "the engine is closed"):
            ea.add_user("x")
        with self.assertRaisesRegex(MigrateError, "the engine is closed"):
            ea.fileno()

        # Closing from inside a callback happens after that dispatch.
        root = os.path.join(self.tmp, "C")
        os.mkdir(root)
        c_app = App("C", root)
        ec = c_app.make_engine()
        closed_in = []

        def close_on_incoming(user):
            ec.close()
            closed_in.append(ec.closed)  # still open inside the callback
            return False
        ec.set_hooks(incoming=close_on_incoming)
        ec.start()
        b.add(eb, "fred", 1, "x", {})
        with self.assertRaises(MigrateError):
            await asyncio.wait_for(eb.migrate("fred", ec.url), DEADLINE)
        self.assertEqual(closed_in, [False])
        self.assertTrue(ec.closed)
        self.assertEqual(eb.user_state("fred"), UserState.ACTIVE)

        # An engine dropped with callbacks registered and attached to the
        # loop is freed by the collector (no leak, no call into freed code).
        d = App("D", root).make_engine()
        d.start()
        ref = weakref.ref(d)
        del d
        gc.collect()
        self.assertIsNone(ref())
        await asyncio.sleep(0.05)  # the loop keeps running without it

    async def test_no_leak_of_engines_clients_or_control_clients(self):
        """Creating and closing handles, or dropping them unclosed, returns
        every fd and OS thread: 20 rounds leave the process as they found it."""
        from concurrent.futures import ThreadPoolExecutor
        loop = asyncio.get_running_loop()
        blocking = ThreadPoolExecutor(1)  # for the control client; one thread, made once

        def fds():
            return len(os.listdir("/proc/self/fd"))

        def threads():  # the library's I/O threads included
            return len(os.listdir("/proc/self/task"))

        async def round_trip(close):
            a = migrate.Engine(secret=SECRET, on_event=lambda ev: None)
            a.register_light("x", 1, lambda u: b"", lambda u, v, d: None)
            a.set_hooks(pause=lambda u: None)
            a.start()
            a.add_user("u")
            client = migrate.Client(a.url, a.session_token("u"), user="u")
            await client.wait_for(migrate.ClientState.ATTACHED, DEADLINE)
            url = a.url
            ctl = await loop.run_in_executor(blocking, lambda: migrate.Control(url, secret=SECRET))
            self.assertEqual(await loop.run_in_executor(blocking, ctl.users),
                             {"u": UserState.ACTIVE})
            if close:
                ctl.close()
                client.close()
                a.close()
            del a, client, ctl
            # The executor's worker drops its reference to the last work item
            # (holding ctl) only when it takes the next one.
            await loop.run_in_executor(blocking, int)
            gc.collect()

        try:
            await round_trip(True)  # warm up: lazily created process-wide state
            before = (fds(), threads())
            for i in range(20):
                await round_trip(close=i % 2 == 0)
            self.assertEqual((fds(), threads()), before)
        finally:
            blocking.shutdown()

    async def test_client_follows_the_user(self):
        a, ea = self.cloudlet("A", app_url="tcp://127.0.0.1:9001")
        b, eb = self.cloudlet("B", app_url="tcp://127.0.0.1:9002")
        a.add(ea, "gina", 5, "tomato", {})
        states, redirects = [], []
        token = ea.session_token("gina")
        async with migrate.Client(ea.url, token, user="gina",
                                  on_state=lambda s, e, d: states.append((s, e, d)),
                                  on_redirect=redirects.append) as client:
            await client.wait_for(migrate.ClientState.ATTACHED, DEADLINE)
            self.assertEqual(client.engine_id, "A")
            self.assertEqual(client.app_url, "tcp://127.0.0.1:9001")
            await asyncio.wait_for(ea.migrate("gina", eb.url), DEADLINE)
            await until(lambda: redirects, "the redirect")
            r = redirects[0]
            self.assertEqual((r.user, r.app_url, r.engine_id), ("gina", "tcp://127.0.0.1:9002", "B"))
            await until(lambda: client.engine_id == "B" and
                        client.state == migrate.ClientState.ATTACHED, "attached at B")
            names = [s for s, _, _ in states]
            self.assertIn(migrate.ClientState.REDIRECTED, names)
            self.assertEqual(migrate.state_name(names[-1]), "ATTACHED")
        self.assertTrue(client.closed)

        # A used token is refused with the library's reason.
        failed = []
        c2 = migrate.Client(ea.url, token, max_attempts=1,
                            on_state=lambda s, e, d: failed.append((s, e, d)))
        try:
            await c2.wait_for(migrate.ClientState.FAILED, DEADLINE)
        finally:
            c2.close()
        self.assertTrue(failed[-1][2])

    async def test_control_channel(self):
        a, ea = self.cloudlet("A")
        b, eb = self.cloudlet("B")
        a.add(ea, "hank", 9, "full", {"x": b"1" * 100})
        with await asyncio.to_thread(migrate.Control, ea.url, secret=SECRET) as ctl:
            users = await asyncio.to_thread(ctl.users)
            self.assertEqual(users, {"hank": UserState.ACTIVE})
            st = await asyncio.to_thread(ctl.status)
            self.assertEqual((st.engine_id, st.url, st.users), ("A", ea.url, 1))
            self.assertEqual(st.library_version, migrate.library_version())
            seen = []
            final = await asyncio.to_thread(ctl.migrate, "hank", eb.url, on_event=seen.append)
            self.assertEqual(final.type, EventType.COMMITTED)
            self.assertIn(EventType.STARTED, [e.type for e in seen])
            with self.assertRaises(MigrateError) as c:
                await asyncio.to_thread(ctl.migrate, "nobody", eb.url)
            self.assertEqual(c.exception.code, Error.ENOUSER)
            self.assertTrue(c.exception.detail)
            with self.assertRaises(MigrateError) as c:
                await asyncio.to_thread(ctl.cancel, "nobody")
            self.assertIn(c.exception.code, (Error.ENOUSER, Error.EUNKNOWN, Error.ESTATE))
        with self.assertRaisesRegex(MigrateError, "the control client is closed"):
            ctl.users()
        await until(lambda: eb.user_state("hank") == UserState.ACTIVE, "hank at B")
        self.assertEqual(b.state["hank"], (9, "full"))

        # A watcher on B sees hank's migrations (B is in every one). It sees
        # only events after it subscribed, and nothing says when that is: move
        # hank back and forth until it has seen one.
        watched = []

        def watch_fn(ev):
            watched.append(ev)
            return ev.user == "hank" and ev.type in (EventType.COMMITTED, EventType.ACTIVATED)
        watcher = await asyncio.to_thread(migrate.Control, eb.url, secret=SECRET)
        watching = asyncio.create_task(asyncio.to_thread(watcher.watch, watch_fn,
                                                         timeout_ms=int(DEADLINE * 1000)))
        src, dst = eb, ea
        for _ in range(20):
            with await asyncio.to_thread(migrate.Control, src.url, secret=SECRET) as c2:
                await asyncio.to_thread(c2.migrate, "hank", dst.url)
            src, dst = dst, src
            await asyncio.wait({watching}, timeout=0.5)
            if watching.done():
                break
        await watching  # raises if the watch failed
        watcher.close()
        self.assertIn(watched[-1].type, (EventType.COMMITTED, EventType.ACTIVATED))
        self.assertEqual(watched[-1].user, "hank")


if __name__ == "__main__":
    unittest.main()
