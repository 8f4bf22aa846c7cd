"""Failover through the binding (replicate.h, mig_client_set_standby,
mig_ctl_promote/replicate): two real engines on loopback in one asyncio
loop. A primary replicates a user's light state to a standby, the standby
promotes its replica (the app's merge gets the replicated bytes), the old
primary's next update is answered "superseded" and it stops serving the
user. Bad input raises MigrateError with the library's code and message."""

import asyncio
import unittest

import migrate
from migrate import Error, MigrateError, ReplicaEventType, UserState

SECRET = b"python-binding-failover-secret-0123"
DEADLINE = 8.0
QUIET_MS = 60000  # the interval: updates in these tests go only on replicate_now()


async def until(pred, what, timeout=DEADLINE):
    """Waits (on the loop, so the engines keep dispatching) until pred()."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Server:
    """A server app with one light domain ("notes": bytes per user), a
    record of its hooks and merges, and its engine's replication events."""

    def __init__(self, name):
        self.name = name
        self.notes = {}
        self.calls = []
        self.replica_events = []
        self.engine = migrate.Engine(secret=SECRET, engine_id=name,
                                     on_replica_event=self.replica_events.append)
        self.engine.register_light("notes", 1, self.extract, self.merge)
        self.engine.set_hooks(**{h: self.hook(h) for h in
                                 ("pause", "resume", "release", "incoming", "activate",
                                  "drop")})
        self.engine.start()

    def extract(self, user):
        return self.notes[user]

    def merge(self, user, version, data):
        self.calls.append(("merge", user, version, data))
        self.notes[user] = data

    def hook(self, what):
        def fn(user):
            self.calls.append((what, user))
            if what in ("release", "drop"):
                self.notes.pop(user, None)
        return fn

    def events(self, etype):
        return [e for e in self.replica_events if e.type == etype]


class FailoverTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.primary = Server("primary")
        self.standby = Server("standby")

    async def asyncTearDown(self):
        self.primary.engine.close()
        self.standby.engine.close()

    async def replicated(self, user, note):
        """alice served at the primary with `note`, replicated to the standby
        and acknowledged; returns the ACKED event."""
        p, s = self.primary, self.standby
        p.engine.add_user(user)
        p.notes[user] = note
        p.engine.replicate(user, s.engine.url, interval_ms=QUIET_MS)
        await until(lambda: p.events(ReplicaEventType.ACKED), "ACKED at the primary")
        await until(lambda: s.events(ReplicaEventType.INSTALLED), "INSTALLED at the standby")
        return p.events(ReplicaEventType.ACKED)[-1]

    async def test_replicate_promote_and_supersede_the_old_primary(self):
        p, s = self.primary, self.standby
        acked = await self.replicated("alice", b"step 3 of 6")
        self.assertEqual((acked.user, acked.peer_url, acked.error), ("alice", s.engine.url, 0))
        self.assertGreaterEqual(acked.seq, 1)
        self.assertGreater(acked.bytes, len(b"step 3 of 6"))
        self.assertGreaterEqual(acked.total_bytes, acked.bytes)
        installed = s.events(ReplicaEventType.INSTALLED)[-1]
        self.assertEqual((installed.user, installed.seq, installed.error),
                         ("alice", acked.seq, 0))

        # A change, sent at once rather than at the (long) interval.
        p.notes["alice"] = b"step 4 of 6"
        p.engine.replicate_now("alice")
        await until(lambda: p.events(ReplicaEventType.ACKED)[-1].seq > acked.seq,
                    "the second update acknowledged")
        acked = p.events(ReplicaEventType.ACKED)[-1]

        pi = p.engine.replica_info("alice")
        self.assertIsInstance(pi, migrate.ReplicaInfo)
        self.assertEqual((pi.primary, pi.standby, pi.epoch), (True, False, 1))
        self.assertEqual((pi.seq, pi.acked_seq), (acked.seq, acked.seq))
        self.assertGreaterEqual(pi.updates, 2)
        self.assertGreaterEqual(pi.bytes, acked.bytes)
        self.assertGreater(pi.last_us, 0)
        await until(lambda: s.engine.replica_info("alice").seq == acked.seq,
                    "the standby at the second update")
        si = s.engine.replica_info("alice")
        self.assertEqual((si.primary, si.standby, si.epoch), (False, True, 1))
        self.assertGreaterEqual(si.updates, 2)
        self.assertGreater(si.bytes, 0)
        self.assertEqual(p.engine.user_epoch("alice"), 1)
        # The replica is not a user at the standby: the app has seen nothing.
        self.assertEqual(s.engine.user_state("alice"), UserState.ABSENT)
        self.assertNotIn("alice", s.notes)
        token = p.engine.failover_token("alice")
        self.assertIsInstance(token, str)
        self.assertGreater(len(token), 20)

        # The primary is "lost": the standby promotes its replica.
        s.engine.promote("alice")
        await until(lambda: s.events(ReplicaEventType.PROMOTED), "PROMOTED at the standby")
        promoted = s.events(ReplicaEventType.PROMOTED)[0]
        self.assertEqual((promoted.user, promoted.error, promoted.epoch), ("alice", 0, 2))
        self.assertEqual([c for c in s.calls if c[1] == "alice"],
                         [("incoming", "alice"), ("merge", "alice", 1, b"step 4 of 6"),
                          ("activate", "alice")])
        self.assertEqual(s.notes["alice"], b"step 4 of 6")
        self.assertEqual(s.engine.user_state("alice"), UserState.ACTIVE)
        self.assertEqual(s.engine.user_epoch("alice"), 2)
        self.assertEqual(s.engine.replica_info("alice").standby, False)

        # The old primary comes back: its next update is refused as superseded.
        p.notes["alice"] = b"step 5 of 6 (lost)"
        p.engine.replicate_now("alice")
        await until(lambda: p.events(ReplicaEventType.SUPERSEDED), "SUPERSEDED at the primary")
        superseded = p.events(ReplicaEventType.SUPERSEDED)[0]
        self.assertEqual(superseded.user, "alice")
        self.assertEqual(superseded.epoch, 2)
        self.assertEqual(p.engine.user_state("alice"), UserState.ABSENT)
        self.assertIn(("pause", "alice"), p.calls)
        self.assertIn(("release", "alice"), p.calls)
        self.assertNotIn("alice", p.notes)
        # The standby kept what it promoted.
        self.assertEqual(s.notes["alice"], b"step 4 of 6")
        self.assertEqual(s.engine.user_state("alice"), UserState.ACTIVE)
        with self.assertRaises(MigrateError) as caught:
            p.engine.replicate_now("alice")
        self.assertEqual(caught.exception.code, Error.ENOUSER)

    async def test_client_follows_its_user_to_the_promoted_standby(self):
        p, s = self.primary, self.standby
        p.engine.add_user("dora")
        p.notes["dora"] = b"rye, no crust"
        states = []
        async with migrate.Client(p.engine.url, p.engine.session_token("dora"), user="dora",
                                  backoff_initial_ms=20, backoff_max_ms=100,
                                  on_state=lambda st, err, detail: states.append(st)) as client:
            await client.wait_for(migrate.ClientState.ATTACHED, DEADLINE)
            self.assertEqual(client.engine_id, "primary")
            p.engine.replicate("dora", s.engine.url, interval_ms=QUIET_MS)
            await until(lambda: p.events(ReplicaEventType.ACKED), "ACKED at the primary")
            client.set_standby(s.engine.url, p.engine.failover_token("dora"), after_ms=100)

            p.engine.close()  # the primary is lost
            await until(lambda: client.state != migrate.ClientState.ATTACHED,
                        "the client to notice")
            # The standby refuses the token until it promoted dora (the
            # helper keeps trying); then the client is attached there.
            await asyncio.sleep(0.3)
            self.assertNotEqual(client.state, migrate.ClientState.ATTACHED)
            s.engine.promote("dora")
            await until(lambda: client.engine_id == "standby" and
                        client.state == migrate.ClientState.ATTACHED, "attached at the standby")
        self.assertEqual(s.notes["dora"], b"rye, no crust")
        self.assertEqual(states.count(migrate.ClientState.ATTACHED), 2)

    async def test_bad_input_raises_the_library_error(self):
        p, s = self.primary, self.standby
        with self.assertRaises(MigrateError) as caught:
            s.engine.promote("nobody")
        err = caught.exception
        self.assertEqual(err.code, Error.ENOUSER)
        self.assertEqual(err.name, "MIG_ENOUSER")
        self.assertEqual(err.strerror, migrate.strerror(Error.ENOUSER))
        self.assertTrue(err.detail)
        self.assertEqual(err.detail, s.engine.last_error)
        self.assertTrue(str(err).startswith("MIG_ENOUSER: " + err.strerror))

        with self.assertRaises(MigrateError) as caught:
            p.engine.replicate("nobody", s.engine.url)
        self.assertEqual(caught.exception.code, Error.ENOUSER)
        p.engine.add_user("bob")
        p.notes["bob"] = b"x"
        with self.assertRaises(MigrateError) as caught:
            p.engine.replicate("bob", s.engine.url, interval_ms=5)  # below 10 ms
        self.assertEqual(caught.exception.code, Error.EINVAL)
        with self.assertRaises(MigrateError) as caught:
            p.engine.replicate("bob", "not a url")
        self.assertEqual(caught.exception.code, Error.EINVAL)
        for call in (p.engine.replicate_now, p.engine.replicate_stop):
            with self.assertRaises(MigrateError) as caught:
                call("bob")  # not replicated
            self.assertEqual(caught.exception.code, Error.ENOUSER)
        with self.assertRaises(MigrateError) as caught:
            p.engine.replica_info("bob")
        self.assertEqual(caught.exception.code, Error.ENOUSER)
        self.assertEqual(p.engine.user_epoch("nobody"), 0)
        with self.assertRaises(TypeError):
            p.engine.replicate(b"bob", s.engine.url)
        with self.assertRaises(ValueError):
            p.engine.set_auto_promote(-1)
        with self.assertRaises(TypeError):
            p.engine.set_replica_handler(42)

        p.engine.replicate("bob", s.engine.url, interval_ms=QUIET_MS)
        with self.assertRaises(MigrateError) as caught:
            p.engine.replicate("bob", s.engine.url)
        self.assertEqual(caught.exception.code, Error.EEXIST)
        await until(lambda: s.events(ReplicaEventType.INSTALLED), "INSTALLED at the standby")
        with self.assertRaises(MigrateError) as caught:
            p.engine.promote("bob")  # bob is served there, not a replica
        self.assertIn(caught.exception.code, (Error.ENOUSER, Error.EEXIST))
        # Nothing was lost by the failed calls: bob is still served and replicated.
        self.assertEqual(p.engine.user_state("bob"), UserState.ACTIVE)
        self.assertEqual(p.notes["bob"], b"x")
        p.engine.replicate_stop("bob")
        await until(lambda: p.events(ReplicaEventType.STOPPED), "STOPPED at the primary")
        self.assertEqual(s.engine.replica_info("bob").standby, True)  # the standby keeps it

        # Without a handler, the events are not delivered (and nothing breaks).
        p.engine.set_replica_handler(None)
        seen = len(p.replica_events)
        p.engine.add_user("eve")
        p.notes["eve"] = b"y"
        p.engine.replicate("eve", s.engine.url, interval_ms=QUIET_MS)
        await until(lambda: [e for e in s.events(ReplicaEventType.INSTALLED) if e.user == "eve"],
                    "eve INSTALLED at the standby")
        await until(lambda: p.engine.replica_info("eve").acked_seq > 0, "the ack")
        self.assertEqual(len(p.replica_events), seen)
        p.engine.set_replica_handler(p.replica_events.append)
        p.engine.replicate_stop("eve")
        await until(lambda: len(p.replica_events) > seen, "STOPPED with the handler back")
        self.assertEqual(p.replica_events[-1].type, ReplicaEventType.STOPPED)

        s.engine.set_auto_promote(0)
        with migrate.Client(s.engine.url, "not-a-token-but-long-enough") as client:
            with self.assertRaises(MigrateError) as caught:
                client.set_standby("http://not-a-session-url", "token")
            self.assertEqual(caught.exception.code, Error.EINVAL)
            client.set_standby(s.engine.url, "another-token")
            client.set_standby(None)

    async def test_a_raising_replica_handler_is_logged_and_changes_nothing(self):
        s = self.standby

        def broken(event):
            s.replica_events.append(event)
            raise RuntimeError("handler bug")

        s.engine.set_replica_handler(broken)
        with self.assertLogs("migrate", level="ERROR") as logs:
            await self.replicated("fred", b"egg salad")
        self.assertTrue(any("handler bug" in line for line in logs.output))
        self.assertEqual(s.engine.replica_info("fred").standby, True)
        s.engine.promote("fred")
        await until(lambda: s.engine.user_state("fred") == UserState.ACTIVE, "fred promoted")
        self.assertEqual(s.notes["fred"], b"egg salad")

    async def test_control_replicate_and_promote(self):
        p, s = self.primary, self.standby
        p.engine.add_user("carol")
        p.notes["carol"] = b"ham and cheese"
        with migrate.Control(p.engine.url, secret=SECRET) as ctl_p, \
                migrate.Control(s.engine.url, secret=SECRET) as ctl_s:
            # Blocking calls: through a thread, so that this loop keeps
            # dispatching the engines that answer them.
            await asyncio.to_thread(ctl_p.replicate, "carol", s.engine.url,
                                    interval_ms=QUIET_MS)
            await until(lambda: s.events(ReplicaEventType.INSTALLED), "INSTALLED at the standby")
            with self.assertRaises(MigrateError) as caught:
                await asyncio.to_thread(ctl_s.promote, "nobody")
            self.assertEqual(caught.exception.code, Error.ENOUSER)
            self.assertTrue(caught.exception.detail)
            await asyncio.to_thread(ctl_p.replicate, "carol", None)
            await until(lambda: p.events(ReplicaEventType.STOPPED), "STOPPED at the primary")
            with self.assertRaises(MigrateError) as caught:
                await asyncio.to_thread(ctl_p.replicate, "carol", None)
            self.assertEqual(caught.exception.code, Error.ENOUSER)
            # With the primary gone quiet, the orchestrator promotes the standby.
            p.engine.remove_user("carol")
            await asyncio.to_thread(ctl_s.promote, "carol")
        self.assertEqual(s.engine.user_state("carol"), UserState.ACTIVE)
        self.assertEqual(s.notes["carol"], b"ham and cheese")
        self.assertEqual(s.engine.user_epoch("carol"), 2)


if __name__ == "__main__":
    unittest.main()
