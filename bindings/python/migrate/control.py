"""The control client (control.h): what an orchestrator uses to migrate users,
list them, read an engine's status, cancel, watch, and for failover start or
stop replication and promote a standby.

Its calls block until the engine answers (they release the GIL meanwhile). To
drive an engine that runs on the same asyncio loop, call them through
``await asyncio.to_thread(ctl.migrate, ...)``; use one Control from one
thread at a time.
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _lib
from ._common import (Error, Event, MigrateError, UserState, check_callable, check_int,
                      check_secret, check_str)


@dataclass(frozen=True)
class ControlMigration:
    """One migration in flight on the engine (mig_ctl_migration)."""
    mid: str
    user: str
    peer_url: str
    outgoing: bool
    phase: str
    rounds: int
    bytes_sent: int
    bytes_received: int
    started_us: int
    duration_us: int
    parked: bool


@dataclass(frozen=True)
class EngineStatus:
    """An engine's status (mig_ctl_engine_status)."""
    engine_id: str
    url: str
    protocol_version: int
    library_version: str
    users_by_state: Dict[UserState, int]
    users: int
    migrations: Tuple[ControlMigration, ...]
    committed_out: int
    aborted_out: int
    committed_in: int
    aborted_in: int
    bytes_sent: int
    bytes_received: int
    uptime_us: int


class Control:
    """A connection to one engine's control channel (mig_ctl_*).

    Connects and authenticates with the cluster ``secret`` at once; raises
    :class:`MigrateError` with the library's reason if it cannot.
    """

    def __init__(self, url: str, *, secret: Union[bytes, str, None] = None,
                 allow_insecure: bool = False, tls_ca_file: Optional[str] = None,
                 tls_cert_file: Optional[str] = None, tls_key_file: Optional[str] = None,
                 timeout_ms: int = 0):
        self._ptr: Optional[int] = None
        o = _lib.CtlOptions()
        o.url = check_str("url", url)
        sec = check_secret(secret)
        if sec is not None:
            buf = ctypes.create_string_buffer(sec, len(sec))
            o.secret = ctypes.cast(buf, ctypes.c_void_p)
            o.secret_len = len(sec)
        o.allow_insecure = 1 if allow_insecure else 0
        o.tls_ca_file = check_str("tls_ca_file", tls_ca_file, optional=True)
        o.tls_cert_file = check_str("tls_cert_file", tls_cert_file, optional=True)
        o.tls_key_file = check_str("tls_key_file", tls_key_file, optional=True)
        o.timeout_ms = check_int("timeout_ms", timeout_ms, 0, 2**32 - 1)
        out = ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        rc = _lib.lib.mig_ctl_new(ctypes.byref(out), ctypes.byref(o), err, len(err))
        if rc:
            raise MigrateError(rc, _lib.text(err.value) or f"cannot connect to {url}")
        self._ptr = out.value

    def close(self) -> None:
        """Close and free (mig_ctl_free). Closing twice is harmless."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            _lib.lib.mig_ctl_free(ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "Control":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> int:
        if self._ptr is None:
            raise MigrateError(Error.ESTATE, "the control client is closed")
        return self._ptr

    def _raise(self, rc: int, what: str, cause: Optional[BaseException] = None) -> None:
        detail = _lib.text(_lib.lib.mig_ctl_last_error(self._ptr)) if self._ptr else ""
        raise MigrateError(rc, detail or what) from cause

    @property
    def last_error(self) -> str:
        return _lib.text(_lib.lib.mig_ctl_last_error(self._check()))

    def users(self) -> Dict[str, UserState]:
        """The engine's users and their states."""
        ptr = self._check()
        found: Dict[str, UserState] = {}

        def visit(user: bytes, state: int, _u: object) -> None:
            found[_lib.text(user)] = UserState(state)

        fn = _lib.CTL_USERS_FN(visit)
        rc = _lib.lib.mig_ctl_users(ptr, fn, None)
        if rc < 0:
            self._raise(rc, "cannot list the users")
        return found

    def status(self) -> EngineStatus:
        """The engine's identity, users by state, migrations in flight and totals."""
        ptr = self._check()
        got: List[EngineStatus] = []

        def visit(st_p: Any, _u: object) -> None:
            s = st_p.contents
            migs = tuple(
                ControlMigration(_lib.text(m.mid), _lib.text(m.user), _lib.text(m.peer_url),
                                 bool(m.outgoing), _lib.text(m.phase), m.rounds, m.bytes_sent,
                                 m.bytes_received, m.started_us, m.duration_us, bool(m.parked))
                for m in (s.migrations[i] for i in range(s.nmigrations)))
            by_state = {UserState(i): int(s.users_by_state[i]) for i in range(len(UserState))}
            got.append(EngineStatus(_lib.text(s.engine_id), _lib.text(s.url),
                                    s.protocol_version, _lib.text(s.library_version), by_state,
                                    s.users, migs, s.committed_out, s.aborted_out,
                                    s.committed_in, s.aborted_in, s.bytes_sent,
                                    s.bytes_received, s.uptime_us))

        fn = _lib.CTL_STATUS_FN(visit)
        rc = _lib.lib.mig_ctl_status(ptr, fn, None)
        if rc < 0 or not got:
            self._raise(rc or Error.EPROTO, "cannot read the status")
        return got[0]

    def cancel(self, mid_or_user: str) -> None:
        """Cancel a migration at its source, by migration id or user."""
        rc = _lib.lib.mig_ctl_cancel(self._check(), check_str("mid_or_user", mid_or_user))
        if rc:
            self._raise(rc, f"cannot cancel {mid_or_user!r}")

    def promote(self, user: str) -> None:
        """On a standby engine: make its replica of ``user`` the active user
        there (mig_ctl_promote); returns once promoted. Raises
        :class:`MigrateError`: MIG_ENOUSER (no replica there), MIG_EEXIST
        (the user is already there), MIG_EBUSY (an update's files are being
        installed: try again), MIG_ECALLBACK (a hook or merge refused, the
        replica is kept), with the engine's reason."""
        rc = _lib.lib.mig_ctl_promote(self._check(), check_str("user", user))
        if rc:
            self._raise(rc, f"cannot promote {user!r}")

    def replicate(self, user: str, standby_url: Optional[str], *,
                  interval_ms: int = 0) -> None:
        """On a primary engine: start replicating ``user`` to the engine at
        ``standby_url`` every ``interval_ms`` (0: 1000), or with
        ``standby_url=None`` stop replicating it (mig_ctl_replicate)."""
        rc = _lib.lib.mig_ctl_replicate(self._check(), check_str("user", user),
                                        check_str("standby_url", standby_url, optional=True),
                                        check_int("interval_ms", interval_ms, 0, 2**32 - 1))
        if rc:
            what = (f"cannot replicate {user!r} to {standby_url}" if standby_url is not None
                    else f"cannot stop replicating {user!r}")
            self._raise(rc, what)

    def migrate(self, user: str, destination_url: str, *, timeout_ms: int = 0,
                on_event: Optional[Callable[[Event], Any]] = None) -> Event:
        """Ask the engine to migrate ``user`` and wait until it ends.

        Returns the final event's figures (an :class:`Event` whose strings
        are those of the request: the library does not keep them). Raises
        :class:`MigrateError` with the abort reason otherwise. An exception
        from ``on_event`` is re-raised after the call returns."""
        ptr = self._check()
        buser = check_str("user", user)
        burl = check_str("destination_url", destination_url)
        check_int("timeout_ms", timeout_ms, 0, 2**32 - 1)
        check_callable("on_event", on_event)
        errors: List[BaseException] = []

        def visit(ev_p: Any, _u: object) -> None:
            if on_event is None or errors:
                return
            try:
                on_event(Event._from_c(ev_p.contents))
            except BaseException as exc:
                errors.append(exc)

        fn = _lib.CTL_EVENT_FN(visit)
        final = _lib.Event()
        rc = _lib.lib.mig_ctl_migrate(ptr, buser, burl, timeout_ms, fn, None,
                                      ctypes.byref(final))
        if errors:
            raise errors[0]
        if rc:
            self._raise(rc, f"migrating {user!r} to {destination_url} failed")
        ev = Event._from_c(final)
        return dataclasses.replace(ev, user=user, peer_url=destination_url)

    def watch(self, fn: Callable[[Event], Any], *, timeout_ms: int = -1) -> None:
        """Deliver every event of the engine to ``fn`` until it returns a
        true value (then this returns), the connection closes or
        ``timeout_ms`` passes (MigrateError MIG_ETIMEDOUT / MIG_ECLOSED).
        An exception from ``fn`` stops the watch and is re-raised."""
        ptr = self._check()
        check_callable("fn", fn, optional=False)
        check_int("timeout_ms", timeout_ms, -2**31, 2**31 - 1)
        errors: List[BaseException] = []

        def visit(ev_p: Any, _u: object) -> int:
            try:
                return 1 if fn(Event._from_c(ev_p.contents)) else 0
            except BaseException as exc:
                errors.append(exc)
                return 1

        cb = _lib.CTL_WATCH_FN(visit)
        rc = _lib.lib.mig_ctl_watch(ptr, timeout_ms, cb, None)
        if errors:
            raise errors[0]
        if rc:
            self._raise(rc, "watch ended")
