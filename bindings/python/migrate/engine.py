"""The engine (migrate.h, replicate.h) for Python servers, plugged into asyncio.

The engine's callbacks (hooks, extract, merge, events, log lines) run only
inside :meth:`Engine.dispatch`; once the engine is attached to an asyncio loop
(:meth:`Engine.attach`, done by :meth:`Engine.start` inside a running loop)
the loop calls dispatch whenever the engine's fd is readable, so every
callback runs on the event loop's thread, between other callbacks.

Application callbacks that raise: the exception is logged on the
``"migrate"`` logger and never crosses into C. A pause, incoming, extract or
merge callback that raises (or returns ``False``) reports failure to the
library, which aborts the migration cleanly (the source keeps the user). The
exception is attached to the migration's final event on this engine
(``Event.exception``: ABORTED at a source, DROPPED at a destination) and, at
a source, chained as ``__cause__`` of the :class:`MigrateError` that the
:class:`Migration` awaitable raises. ``KeyboardInterrupt`` and ``SystemExit``
are re-raised by :meth:`Engine.dispatch` once the library has returned.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, List, Optional, Union

from . import _lib
from ._common import (Compression, Error, Event, EventType, LogLevel, MigrateError, ReplicaEvent,
                      ReplicaInfo, UserState, check_callable, check_int, check_secret,
                      check_str, log)
from ._handle import LoopHandle, trampoline

ExtractFn = Callable[[str], Union[bytes, bytearray, memoryview]]
MergeFn = Callable[[str, int, bytes], Optional[bool]]
UserHook = Callable[[str], Any]

_TERMINAL = (EventType.COMMITTED, EventType.ABORTED, EventType.ACTIVATED, EventType.DROPPED)
_UINT_MAX = 2**32 - 1


@dataclass(frozen=True)
class MigrationStats:
    """Figures about one migration (mig_migration_stats)."""
    state: str  # "running", "committed" or "aborted"
    error: Error | int
    bytes_sent: int
    bytes_received: int
    duration_us: int
    downtime_us: int
    rounds: int
    round_bytes: tuple


class Migration:
    """One outgoing migration started by :meth:`Engine.migrate`.

    Await it: the result is the COMMITTED :class:`Event`; if the migration
    aborts, awaiting raises :class:`MigrateError` (``code`` is the abort
    reason, ``event`` the ABORTED event, ``__cause__`` the exception of a
    callback of this engine that made it fail, if any).
    """

    def __init__(self, engine: "Engine", handle: int, user: str, peer_url: str,
                 future: "asyncio.Future[Event]"):
        self._engine = engine
        self._handle: Optional[int] = handle
        self.mid: str = _lib.text(_lib.lib.mig_migration_id(handle))
        self.user = user
        self.peer_url = peer_url
        self.future = future
        self._final_stats: Optional[MigrationStats] = None

    def __await__(self) -> Generator[Any, None, Event]:
        return self.future.__await__()

    def __repr__(self) -> str:
        state = "done" if self.future.done() else "running"
        return f"<Migration {self.mid} {self.user} -> {self.peer_url} {state}>"

    def done(self) -> bool:
        """True once the migration committed or aborted."""
        return self.future.done()

    def cancel(self) -> bool:
        """Ask the migration to stop (mig_migration_cancel).

        Returns True if the cancel was requested (the awaitable then fails
        with ``MIG_ECANCELED`` and the user resumes here), False if it is
        past the commit decision or already over.
        """
        if self._handle is None:
            return False
        rc = _lib.lib.mig_migration_cancel(self._handle)
        if rc == Error.ESTATE:
            return False
        if rc:
            raise MigrateError(rc, "cannot cancel the migration")
        return True

    def stats(self) -> MigrationStats:
        """Current figures, or the final ones once it ended."""
        if self._handle is None:
            if self._final_stats is None:
                raise MigrateError(Error.ESTATE, "the engine was closed")
            return self._final_stats
        st = _lib.MigrationStats()
        rc = _lib.lib.mig_migration_info(self._handle, ctypes.byref(st))
        if rc:
            raise MigrateError(rc, "cannot read the migration's figures")
        states = {0: "running", 1: "committed", 2: "aborted"}
        try:
            err: Error | int = Error(st.error)
        except ValueError:
            err = st.error
        return MigrationStats(states.get(st.state, str(st.state)), err, st.bytes_sent,
                              st.bytes_received, st.duration_us, st.downtime_us, st.rounds,
                              tuple(st.round_bytes))

    def _release(self) -> None:
        if self._handle is not None:
            try:
                self._final_stats = self.stats()
            except MigrateError:
                pass
            _lib.lib.mig_migration_free(self._handle)
            self._handle = None


class Engine(LoopHandle):
    """A libmigrate engine: one listening port, many users, peers and orchestrators.

    Keyword arguments mirror ``mig_engine_options`` (0, None or False means
    the library's default). A cluster ``secret`` (bytes or str, at least 16
    bytes) is required unless ``allow_insecure=True``.

    ``on_event(event)`` receives every :class:`Event`; ``on_log(level, line)``
    receives the library's log lines up to ``log_level`` (without it, they go
    to the ``"migrate"`` logger); ``on_replica_event(event)`` receives every
    :class:`ReplicaEvent` (failover, see :meth:`replicate`; also settable
    with :meth:`set_replica_handler`).

    Register domains and hooks, then :meth:`start`. Close with
    :meth:`close` or use it as a (async) context manager. Thread: use an
    engine from the thread that runs its event loop.
    """

    def __init__(self, *, secret: Union[bytes, str, None] = None, allow_insecure: bool = False,
                 listen_address: Optional[str] = None, listen_port: int = 0,
                 advertised_url: Optional[str] = None, engine_id: Optional[str] = None,
                 app_url: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None, tls_ca_file: Optional[str] = None,
                 tls_require_client_cert: bool = False, max_frame_bytes: int = 0,
                 peer_timeout_ms: int = 0, precopy_alpha_ms: int = 0,
                 precopy_max_rounds: int = 0, precopy_rate_limit: int = 0,
                 compression: Compression = Compression.AUTO,
                 file_cache_bytes: int = 0, file_cache_off: bool = False,
                 worker_threads: int = 0, worker_nice: int = 0,
                 metrics_off: bool = False,
                 orchestrator_url: Optional[str] = None, heartbeat_ms: int = 0,
                 session_token_ttl_s: int = 0,
                 on_event: Optional[Callable[[Event], Any]] = None,
                 on_log: Optional[Callable[[LogLevel, str], Any]] = None,
                 on_replica_event: Optional[Callable[[ReplicaEvent], Any]] = None,
                 log_level: LogLevel = LogLevel.ERROR):
        self._init_handle()  # first: __del__ may run if __init__ raises
        check_callable("on_event", on_event)
        check_callable("on_log", on_log)
        check_callable("on_replica_event", on_replica_event)
        o = _lib.EngineOptions()
        secret_bytes = check_secret(secret)
        if secret_bytes is not None:
            # The library copies the secret; the buffer only has to live through the call.
            secret_buf = ctypes.create_string_buffer(secret_bytes, len(secret_bytes))
            o.secret = ctypes.cast(secret_buf, ctypes.c_void_p)
            o.secret_len = len(secret_bytes)
        o.allow_insecure = 1 if allow_insecure else 0
        o.listen_address = check_str("listen_address", listen_address, optional=True)
        o.listen_port = check_int("listen_port", listen_port, 0, 65535)
        o.advertised_url = check_str("advertised_url", advertised_url, optional=True)
        o.engine_id = check_str("engine_id", engine_id, optional=True)
        o.app_url = check_str("app_url", app_url, optional=True)
        o.tls_cert_file = check_str("tls_cert_file", tls_cert_file, optional=True)
        o.tls_key_file = check_str("tls_key_file", tls_key_file, optional=True)
        o.tls_ca_file = check_str("tls_ca_file", tls_ca_file, optional=True)
        o.tls_require_client_cert = 1 if tls_require_client_cert else 0
        o.max_frame_bytes = check_int("max_frame_bytes", max_frame_bytes, 0, 2**63)
        o.peer_timeout_ms = check_int("peer_timeout_ms", peer_timeout_ms, 0, _UINT_MAX)
        o.precopy_alpha_ms = check_int("precopy_alpha_ms", precopy_alpha_ms, 0, _UINT_MAX)
        o.precopy_max_rounds = check_int("precopy_max_rounds", precopy_max_rounds, 0,
                                         _UINT_MAX)
        o.precopy_rate_limit = check_int("precopy_rate_limit", precopy_rate_limit, 0,
                                         2**64 - 1)
        o.compression = check_int("compression", int(compression), -2**31, 2**31 - 1)
        o.file_cache_bytes = check_int("file_cache_bytes", file_cache_bytes, 0, 2**64 - 1)
        o.file_cache_off = 1 if file_cache_off else 0
        o.worker_threads = check_int("worker_threads", worker_threads, 0, _UINT_MAX)
        o.worker_nice = check_int("worker_nice", worker_nice, -1, 19)
        o.metrics_off = 1 if metrics_off else 0
        o.orchestrator_url = check_str("orchestrator_url", orchestrator_url, optional=True)
        o.heartbeat_ms = check_int("heartbeat_ms", heartbeat_ms, 0, _UINT_MAX)
        o.session_token_ttl_s = check_int("session_token_ttl_s", session_token_ttl_s, 0,
                                          _UINT_MAX)
        o.log_level = check_int("log_level", int(log_level), 0, 3)

        self._on_event = on_event
        self._on_log = on_log
        self._callback_errors: Dict[str, BaseException] = {}
        self._migrations: Dict[str, Migration] = {}
        # ctypes callback objects must outlive every call the library may
        # make through them: kept here until after mig_engine_free().
        self._keep: List[Any] = []
        ref = weakref.ref(self)
        self._cb_event = _lib.EVENT_FN(lambda _e, ev, _u: trampoline(ref, "_c_event", ev))
        self._cb_log = _lib.LOG_FN(lambda _e, lv, line, _u: trampoline(ref, "_c_log", lv, line))
        o.on_event = self._cb_event
        o.on_log = self._cb_log

        out = ctypes.c_void_p()
        rc = _lib.lib.mig_engine_new(ctypes.byref(out), ctypes.byref(o))
        if rc:
            raise MigrateError(rc, "mig_engine_new rejected the options (see the limits in "
                               "mig_engine_options: secret of 16+ bytes, port 0..65535, "
                               "engine_id like a user id, parseable URLs)")
        self._ptr = out.value
        self._fd = _lib.lib.mig_engine_fd(self._ptr)
        self._on_replica_event: Optional[Callable[[ReplicaEvent], Any]] = None
        self._cb_replica = _lib.REPLICA_EVENT_FN(
            lambda _e, ev, _u: trampoline(ref, "_c_replica_event", ev))
        if on_replica_event is not None:
            self.set_replica_handler(on_replica_event)

    # ------------------------------------------------------------ lifetime

    _kind = "engine"

    def close(self) -> None:
        """Stop and free the engine (mig_engine_free).

        Connections close; migrations in flight end as if the process had
        stopped, and their awaitables fail with ``MIG_ECLOSED``. No callback
        runs after this. Called from inside one of this engine's callbacks,
        the engine is freed as soon as the current dispatch returns.
        Closing twice is harmless.
        """
        super().close()

    def _free(self) -> None:
        ptr, self._ptr = self._ptr, None
        migrations = list(self._migrations.values())
        self._migrations.clear()
        for m in migrations:
            m._release()
        _lib.lib.mig_engine_free(ptr)
        for m in migrations:
            _fail(m.future, MigrateError(Error.ECLOSED,
                                         "the engine was closed before the migration ended"))
        self._keep.clear()

    def _raise(self, rc: int, what: str) -> None:
        detail = _lib.text(_lib.lib.mig_engine_last_error(self._ptr)) if self._ptr else ""
        raise MigrateError(rc, detail or what)

    # ------------------------------------------------------------ set-up

    def register_light(self, name: str, version: int, extract: ExtractFn, merge: MergeFn,
                       *, type_name: Optional[str] = None) -> None:
        """Register a light state domain (mig_light_domain_register).

        ``extract(user) -> bytes`` serialises a paused user's state at the
        source; ``merge(user, version, data)`` loads it into the inactive
        arriving user at the destination. Either fails by raising (or merge
        by returning ``False``): the migration then aborts and the source
        keeps the user. Before :meth:`start` only.
        """
        ptr = self._check()
        bname = check_str("name", name)
        check_int("version", version, 0, _UINT_MAX)
        check_callable("extract", extract, optional=False)
        check_callable("merge", merge, optional=False)
        ref = weakref.ref(self)
        d = _lib.LightDomain()
        d.name = bname
        d.type_name = check_str("type_name", type_name, optional=True)
        d.version = version
        d.extract = _lib.EXTRACT_FN(
            lambda _e, user, buf, _u: trampoline(ref, "_c_extract", extract, user, buf, rc=-1))
        d.merge = _lib.MERGE_FN(
            lambda _e, user, ver, data, n, _u: trampoline(ref, "_c_merge", merge, user, ver,
                                                           data, n, rc=-1))
        rc = _lib.lib.mig_light_domain_register(ptr, ctypes.byref(d), None)
        if rc:
            self._raise(rc, f"cannot register light domain {name!r}")
        self._keep.append((d.extract, d.merge))

    def register_files(self, name: str, root: Union[str, os.PathLike], *, version: int = 1,
                       append_only: bool = False) -> None:
        """Register a file state domain (mig_file_domain_register): each
        user's files live in ``root/<user>/`` and move as librsync deltas.
        ``append_only`` for files that only grow (logs, recorded frames).
        Before :meth:`start` only."""
        ptr = self._check()
        d = _lib.FileDomain()
        d.name = check_str("name", name)
        d.version = check_int("version", version, 0, _UINT_MAX)
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be str or os.PathLike, not {type(root).__name__}")
        d.root = os.fsencode(root)
        d.append_only = 1 if append_only else 0
        rc = _lib.lib.mig_file_domain_register(ptr, ctypes.byref(d))
        if rc:
            self._raise(rc, f"cannot register file domain {name!r}")

    def set_hooks(self, *, pause: Optional[UserHook] = None, resume: Optional[UserHook] = None,
                  release: Optional[UserHook] = None, incoming: Optional[UserHook] = None,
                  activate: Optional[UserHook] = None, drop: Optional[UserHook] = None) -> None:
        """Install the application hooks (mig_engine_set_hooks); each takes
        the user id. ``pause`` and ``incoming`` refuse by raising or
        returning ``False`` (the migration aborts, the user stays where it
        was). A hook left out is a no-op. Before :meth:`start` only."""
        ptr = self._check()
        given = dict(pause=pause, resume=resume, release=release, incoming=incoming,
                     activate=activate, drop=drop)
        for what, fn in given.items():
            check_callable(what, fn)
        ref = weakref.ref(self)
        h = _lib.Hooks()
        for what, fn in given.items():
            if fn is None:
                continue
            if what in ("pause", "incoming"):
                cb = _lib.INT_HOOK_FN(
                    lambda _e, user, _u, fn=fn, what=what: trampoline(ref, "_c_int_hook", what,
                                                                       fn, user, rc=-1))
            else:
                cb = _lib.VOID_HOOK_FN(
                    lambda _e, user, _u, fn=fn, what=what: trampoline(ref, "_c_void_hook",
                                                                       what, fn, user))
            setattr(h, what, cb)
        rc = _lib.lib.mig_engine_set_hooks(ptr, ctypes.byref(h), None)
        if rc:
            self._raise(rc, "cannot install the hooks")
        self._keep.append(h)

    def start(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Start listening and serving (mig_engine_start), then attach to
        ``loop``, or to the running loop if there is one."""
        ptr = self._check()
        rc = _lib.lib.mig_engine_start(ptr)
        if rc:
            self._raise(rc, "cannot start the engine")
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        self.attach(loop)

    # ------------------------------------------------------------ the event loop

    def attach(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Dispatch from ``loop`` (default: the running loop) whenever the
        engine's fd is readable (``loop.add_reader``)."""
        self._attach_loop(loop)

    def detach(self) -> None:
        """Stop dispatching from the loop (the engine keeps running)."""
        self._detach_loop()

    def dispatch(self) -> None:
        """Do all pending work and run the callbacks (mig_engine_dispatch).
        Never blocks; not re-entrant. Raises :class:`MigrateError` if the
        engine is broken (then close it)."""
        super().dispatch()

    def _dispatch_c(self, ptr: int) -> int:
        return _lib.lib.mig_engine_dispatch(ptr)

    def _dispatch_failed(self, rc: int) -> None:
        self._raise(rc, "the engine is broken")

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The TCP port the engine listens on."""
        rc = _lib.lib.mig_engine_port(self._check())
        if rc < 0:
            self._raise(rc, "the engine is not started")
        return rc

    @property
    def url(self) -> str:
        """The URL peers and clients use for this engine ("" before start
        when derived from the port)."""
        return _lib.text(_lib.lib.mig_engine_url(self._check()))

    @property
    def id(self) -> str:
        """This engine's id."""
        return _lib.text(_lib.lib.mig_engine_id(self._check()))

    @property
    def last_error(self) -> str:
        """Detail of the last failure on this engine ("" if none)."""
        return _lib.text(_lib.lib.mig_engine_last_error(self._check()))

    # ------------------------------------------------------------ users

    def add_user(self, user: str) -> None:
        """Add a user served here (ACTIVE)."""
        rc = _lib.lib.mig_user_add(self._check(), check_str("user", user))
        if rc:
            self._raise(rc, f"cannot add user {user!r}")

    def remove_user(self, user: str) -> None:
        """Forget an ACTIVE user."""
        rc = _lib.lib.mig_user_remove(self._check(), check_str("user", user))
        if rc:
            self._raise(rc, f"cannot remove user {user!r}")

    def user_state(self, user: str) -> UserState:
        """The user's state here (ABSENT if unknown)."""
        st = _lib.lib.mig_user_get_state(self._check(), check_str("user", user))
        return UserState(st)

    def users(self) -> Dict[str, UserState]:
        """Every user here and its state (a snapshot)."""
        ptr = self._check()
        found: Dict[str, UserState] = {}

        def visit(user: bytes, state: int, _u: object) -> int:
            found[_lib.text(user)] = UserState(state)
            return 0

        fn = _lib.FOREACH_FN(visit)
        rc = _lib.lib.mig_user_foreach(ptr, fn, None)
        if rc < 0:
            self._raise(rc, "cannot list the users")
        return found

    def __len__(self) -> int:
        return int(_lib.lib.mig_user_count(self._check()))

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self.user_state(user) != UserState.ABSENT

    def session_token(self, user: str) -> str:
        """Mint a single-use session token for a client of ``user``, for the
        reconnect helper (:class:`migrate.Client`) at :attr:`url`."""
        ptr = self._check()
        buf = ctypes.create_string_buffer(_lib.SESSION_TOKEN_MAX)
        rc = _lib.lib.mig_session_token(ptr, check_str("user", user), buf, len(buf))
        if rc:
            self._raise(rc, f"cannot mint a session token for {user!r}")
        return _lib.text(buf.value)

    # ------------------------------------------------------------ migrations

    def migrate(self, user: str, peer_url: str) -> Migration:
        """Move ``user`` to the engine at ``peer_url`` (mig_migrate).

        Returns at once with an awaitable :class:`Migration`, resolved from
        the engine's events on the attached loop. Raises
        :class:`MigrateError` at once if the migration cannot start (unknown
        user, user busy, bad URL, engine not started)."""
        ptr = self._check()
        buser = check_str("user", user)
        burl = check_str("peer_url", peer_url)
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("Engine.migrate() needs an event loop: start the engine "
                                   "inside a running loop or call Engine.attach(loop)") from None
        out = ctypes.c_void_p()
        rc = _lib.lib.mig_migrate(ptr, buser, burl, ctypes.byref(out))
        if rc:
            self._raise(rc, f"cannot migrate {user!r} to {peer_url}")
        m = Migration(self, out.value, user, peer_url, loop.create_future())
        self._migrations[m.mid] = m
        return m

    # ------------------------------------------------------------ failover (replicate.h)

    def set_replica_handler(self, fn: Optional[Callable[[ReplicaEvent], Any]]) -> None:
        """Deliver every :class:`ReplicaEvent` of this engine to ``fn(event)``
        (mig_replica_set_handler), inside :meth:`dispatch` like the other
        callbacks; ``None`` removes it. An exception from ``fn`` is logged."""
        ptr = self._check()
        check_callable("on_replica_event", fn)
        rc = _lib.lib.mig_replica_set_handler(ptr, self._cb_replica if fn is not None else
                                              _lib.REPLICA_EVENT_FN(), None)
        if rc:
            self._raise(rc, "cannot install the replication event handler")
        self._on_replica_event = fn

    def replicate(self, user: str, standby_url: str, interval_ms: int = 0) -> None:
        """Primary: keep the engine at ``standby_url`` (a peer URL) up to
        date with ``user``'s light and file state (mig_replicate). Every
        ``interval_ms`` (0: 1000 ms; else 10..3600000) the light domains'
        extract callbacks run while the user is served, and a changed state
        goes out; the standby's answers arrive as :class:`ReplicaEvent`
        (ACKED, REFUSED, SUPERSEDED, STOPPED). Needs the engine started.
        Raises :class:`MigrateError`: MIG_ENOUSER (not ACTIVE here),
        MIG_EEXIST (already replicated), MIG_EINVAL, MIG_ESTATE."""
        ptr = self._check()
        buser = check_str("user", user)
        burl = check_str("standby_url", standby_url)
        o = _lib.ReplicateOptions()
        o.interval_ms = check_int("interval_ms", interval_ms, 0, _UINT_MAX)
        rc = _lib.lib.mig_replicate(ptr, buser, burl, ctypes.byref(o))
        if rc:
            self._raise(rc, f"cannot replicate {user!r} to {standby_url}")

    def replicate_now(self, user: str) -> None:
        """Primary: ``user``'s state changed, send it as soon as no update is
        in flight (mig_replicate_now). MIG_ENOUSER if not replicated."""
        rc = _lib.lib.mig_replicate_now(self._check(), check_str("user", user))
        if rc:
            self._raise(rc, f"cannot replicate {user!r} now")

    def replicate_stop(self, user: str) -> None:
        """Primary: stop replicating ``user`` (a STOPPED event follows; the
        standby keeps its last replica). MIG_ENOUSER if not replicated."""
        rc = _lib.lib.mig_replicate_stop(self._check(), check_str("user", user))
        if rc:
            self._raise(rc, f"cannot stop replicating {user!r}")

    def promote(self, user: str) -> None:
        """Standby: make the replica of ``user`` the active user here
        (mig_replica_promote). Queued for the next dispatch: the incoming
        hook, the replica's files, every merge, then activate run there, and
        a PROMOTED (or PROMOTE_FAILED) :class:`ReplicaEvent` reports the
        outcome. Raises MIG_ENOUSER (no replica of the user here) or
        MIG_EEXIST (the user is already here) at once."""
        rc = _lib.lib.mig_replica_promote(self._check(), check_str("user", user))
        if rc:
            self._raise(rc, f"cannot promote {user!r}")

    def set_auto_promote(self, ms: int) -> None:
        """Standby, opt-in: promote a replica by itself when its primary was
        silent for ``ms`` milliseconds (0: off, the default). Beware split
        brain: see docs/FAILOVER.md (mig_replica_set_auto_promote)."""
        rc = _lib.lib.mig_replica_set_auto_promote(self._check(),
                                                   check_int("ms", ms, 0, _UINT_MAX))
        if rc:
            self._raise(rc, "cannot set automatic promotion")

    def failover_token(self, user: str) -> str:
        """Primary: a session token for a client of ``user`` that the
        STANDBY accepts once it has promoted the user; hand it to the client
        with the standby's URL (:meth:`migrate.Client.set_standby`). Raises
        MIG_ESTATE while the standby has not answered yet
        (mig_replica_failover_token)."""
        ptr = self._check()
        buf = ctypes.create_string_buffer(_lib.SESSION_TOKEN_MAX)
        rc = _lib.lib.mig_replica_failover_token(ptr, check_str("user", user), buf, len(buf))
        if rc:
            self._raise(rc, f"cannot mint a failover token for {user!r}")
        return _lib.text(buf.value)

    def replica_info(self, user: str) -> ReplicaInfo:
        """``user``'s replication figures on this engine
        (mig_replica_info_get). MIG_ENOUSER if it is neither replicated nor
        a replica here."""
        ptr = self._check()
        info = _lib.ReplicaInfo()
        rc = _lib.lib.mig_replica_info_get(ptr, check_str("user", user), ctypes.byref(info))
        if rc:
            self._raise(rc, f"no replication figures for {user!r}")
        return ReplicaInfo(primary=bool(info.primary), standby=bool(info.standby),
                           epoch=info.epoch, seq=info.seq, acked_seq=info.acked_seq,
                           updates=info.updates, bytes=info.bytes, last_us=info.last_us)

    def user_epoch(self, user: str) -> int:
        """``user``'s epoch here: 1 if it never failed over, the promoted
        epoch after a promotion here, 0 if this engine has no record of it
        (mig_user_epoch)."""
        return int(_lib.lib.mig_user_epoch(self._check(), check_str("user", user)))

    # ------------------------------------------------------------ callbacks from C

    def _app_failed(self, what: str, user: str, exc: BaseException) -> None:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: after dispatch
            self._fatal = self._fatal or exc
        log.error("%s callback for user %s raised %s: %s", what, user, type(exc).__name__, exc,
                  exc_info=exc)
        self._callback_errors.setdefault(user, exc)

    def _c_int_hook(self, what: str, fn: UserHook, user_b: bytes) -> int:
        user = _lib.text(user_b)
        try:
            return -1 if fn(user) is False else 0
        except BaseException as exc:
            self._app_failed(what, user, exc)
            return -1

    def _c_void_hook(self, what: str, fn: UserHook, user_b: bytes) -> None:
        user = _lib.text(user_b)
        try:
            fn(user)
        except BaseException as exc:
            self._app_failed(what, user, exc)

    def _c_extract(self, fn: ExtractFn, user_b: bytes, buf: int) -> int:
        user = _lib.text(user_b)
        try:
            data = fn(user)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"extract must return bytes, not {type(data).__name__}")
            data = bytes(data)
        except BaseException as exc:
            self._app_failed("extract", user, exc)
            return -1
        return _lib.lib.mig_buf_append(buf, data, len(data))

    def _c_merge(self, fn: MergeFn, user_b: bytes, version: int, data: int, n: int) -> int:
        user = _lib.text(user_b)
        try:
            return -1 if fn(user, version, ctypes.string_at(data, n)) is False else 0
        except BaseException as exc:
            self._app_failed("merge", user, exc)
            return -1

    def _c_event(self, ev_p: Any) -> None:
        ev = ev_p.contents
        etype = ev.type
        user = _lib.text(ev.user)
        exc = self._callback_errors.pop(user, None) if etype in _TERMINAL else None
        event = Event._from_c(ev, exc)
        if etype in (EventType.COMMITTED, EventType.ABORTED):
            m = self._migrations.pop(event.mid, None)
            if m is not None:
                m._release()
                if etype == EventType.COMMITTED:
                    if not m.future.done():
                        m.future.set_result(event)
                else:
                    err = MigrateError(event.error, event.reason, event=event)
                    err.__cause__ = exc
                    _fail(m.future, err)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except BaseException as e:
                if not isinstance(e, Exception):
                    self._fatal = self._fatal or e
                log.error("on_event callback raised %s: %s", type(e).__name__, e, exc_info=e)

    def _c_replica_event(self, ev_p: Any) -> None:
        if self._on_replica_event is None:
            return
        event = ReplicaEvent._from_c(ev_p.contents)
        try:
            self._on_replica_event(event)
        except BaseException as e:
            if not isinstance(e, Exception):
                self._fatal = self._fatal or e
            log.error("on_replica_event callback raised %s: %s", type(e).__name__, e,
                      exc_info=e)

    def _c_log(self, level: int, line: bytes) -> None:
        text = _lib.text(line)
        try:
            lv = LogLevel(level)
        except ValueError:
            lv = LogLevel.DEBUG
        if self._on_log is None:
            py_level = {LogLevel.ERROR: 40, LogLevel.WARN: 30, LogLevel.INFO: 20}.get(lv, 10)
            log.log(py_level, "%s", text)
            return
        try:
            self._on_log(lv, text)
        except Exception as e:
            log.error("on_log callback raised %s: %s", type(e).__name__, e, exc_info=e)


def _fail(fut: "asyncio.Future[Any]", exc: BaseException) -> None:
    if not fut.done() and not fut.get_loop().is_closed():
        fut.set_exception(exc)
