"""Errors, enums and event objects shared by the engine, client and control
modules of the binding."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Optional

from . import _lib

log = logging.getLogger("migrate")


class Error(enum.IntEnum):
    """libmigrate's error codes (MIG_E*), stable values shared on the wire."""
    OK = 0
    EINVAL = -1
    ENOMEM = -2
    ENOUSER = -3
    EEXIST = -4
    EBUSY = -5
    ESTATE = -6
    ECONNECT = -7
    ECLOSED = -8
    ETIMEDOUT = -9
    EAUTH = -10
    EPROTO = -11
    ETOOBIG = -12
    EREJECTED = -13
    ECALLBACK = -14
    ECANCELED = -15
    EVERSION = -16
    ENODOMAIN = -17
    ETLS = -18
    EIO = -19
    ESYSTEM = -20
    EUNKNOWN = -21
    EPARKED = -22


def _error(code: int) -> Error | int:
    try:
        return Error(code)
    except ValueError:
        return code


def strerror(code: int) -> str:
    """The library's sentence for an error code (mig_strerror)."""
    return _lib.text(_lib.lib.mig_strerror(int(code)))


def err_name(code: int) -> str:
    """The error code's name, e.g. "MIG_ENOUSER" (mig_err_name)."""
    return _lib.text(_lib.lib.mig_err_name(int(code)))


class MigrateError(Exception):
    """A libmigrate call failed, or a migration ended without committing.

    Attributes:
        code: the MIG_E* value (an :class:`Error` when known).
        name: its name, e.g. ``"MIG_ENOUSER"``.
        strerror: the library's sentence for the code.
        detail: the library's detail for this failure (the handle's
            last-error text, or the event's reason); may be ``""``.
        event: for a migration that aborted, the :class:`Event` that ended it.

    When an application callback raised and that made the migration fail,
    the callback's exception is chained as ``__cause__``.
    """

    def __init__(self, code: int, detail: str = "", *, event: "Optional[Event]" = None):
        self.code = _error(code)
        self.name = err_name(code)
        self.strerror = strerror(code)
        self.detail = detail
        self.event = event
        text = f"{self.name}: {self.strerror}"
        if detail and detail != self.strerror:
            text += f": {detail}"
        super().__init__(text)


class UserState(enum.IntEnum):
    """What a user is doing on an engine (mig_user_state)."""
    ABSENT = 0
    ACTIVE = 1
    MIGRATING = 2
    PAUSED = 3
    INCOMING = 4
    PARKED = 5


class EventType(enum.IntEnum):
    """Kinds of engine event (mig_event_type)."""
    STARTED = 0
    PREPARED = 1
    COMMITTED = 2
    ABORTED = 3
    INCOMING = 4
    ACTIVATED = 5
    DROPPED = 6
    PROGRESS = 7


class LogLevel(enum.IntEnum):
    """Log levels of the engine's log callback (mig_log_level)."""
    ERROR = 0
    WARN = 1
    INFO = 2
    DEBUG = 3


class Compression(enum.IntEnum):
    """Compression of file data on the wire (mig_compression)."""
    AUTO = 0
    OFF = 1
    ON = 2


@dataclass(frozen=True)
class Event:
    """One event about one migration (a copy of mig_event).

    ``exception`` is set when an application callback of this engine raised
    during the migration (e.g. a merge callback on the destination: the
    DROPPED event carries it).
    """
    type: EventType
    mid: str
    user: str
    peer_url: str
    error: Error | int
    reason: str
    bytes_sent: int
    bytes_received: int
    duration_us: int
    downtime_us: int
    rounds: int
    phase: str
    time_us: int
    exception: Optional[BaseException] = field(default=None, compare=False)

    @classmethod
    def _from_c(cls, ev: _lib.Event, exception: Optional[BaseException] = None) -> "Event":
        try:
            etype = EventType(ev.type)
        except ValueError:
            etype = ev.type  # a newer library: keep the raw value
        return cls(type=etype, mid=_lib.text(ev.mid), user=_lib.text(ev.user),
                   peer_url=_lib.text(ev.peer_url), error=_error(ev.error),
                   reason=_lib.text(ev.reason), bytes_sent=ev.bytes_sent,
                   bytes_received=ev.bytes_received, duration_us=ev.duration_us,
                   downtime_us=ev.downtime_us, rounds=ev.rounds, phase=_lib.text(ev.phase),
                   time_us=ev.time_us, exception=exception)


class ReplicaEventType(enum.IntEnum):
    """Kinds of replication event (mig_replica_event_type). ACKED, REFUSED,
    SUPERSEDED and STOPPED happen at a primary; INSTALLED, REJECTED,
    PROMOTED and PROMOTE_FAILED at a standby."""
    ACKED = 0
    REFUSED = 1
    SUPERSEDED = 2
    STOPPED = 3
    INSTALLED = 4
    REJECTED = 5
    PROMOTED = 6
    PROMOTE_FAILED = 7


@dataclass(frozen=True)
class ReplicaEvent:
    """One replication event (a copy of mig_replica_event).

    ``epoch`` is the user's epoch as this engine knows it, ``seq`` the
    update concerned (0 if none), ``bytes`` the encoded size of that update
    (ACKED, INSTALLED), ``total_bytes`` what a primary sent for the user so
    far, ``lag_us`` extraction to acknowledgement (ACKED) or the replica's
    age (PROMOTED); ``error`` and ``reason`` say why for REFUSED, REJECTED,
    SUPERSEDED and PROMOTE_FAILED.
    """
    type: ReplicaEventType
    user: str
    peer_url: str
    epoch: int
    seq: int
    bytes: int
    total_bytes: int
    lag_us: int
    error: Error | int
    reason: str
    time_us: int

    @classmethod
    def _from_c(cls, ev: _lib.ReplicaEvent) -> "ReplicaEvent":
        try:
            etype = ReplicaEventType(ev.type)
        except ValueError:
            etype = ev.type  # a newer library: keep the raw value
        return cls(type=etype, user=_lib.text(ev.user), peer_url=_lib.text(ev.peer_url),
                   epoch=ev.epoch, seq=ev.seq, bytes=ev.bytes, total_bytes=ev.total_bytes,
                   lag_us=ev.lag_us, error=_error(ev.error), reason=_lib.text(ev.reason),
                   time_us=ev.time_us)


@dataclass(frozen=True)
class ReplicaInfo:
    """One user's replication figures as one engine sees them
    (mig_replica_info). ``primary``: this engine replicates the user out;
    ``standby``: it holds a replica not yet promoted. ``seq`` is the last
    update sent (primary) or installed (standby), ``acked_seq`` the last
    acknowledged (primary), ``updates`` how many were acknowledged
    (primary) or installed (standby), ``bytes`` sent or received, and
    ``last_us`` the wall clock of the last ack or install."""
    primary: bool
    standby: bool
    epoch: int
    seq: int
    acked_seq: int
    updates: int
    bytes: int
    last_us: int


# ---------------------------------------------------------------- argument checks


def check_str(what: str, value: object, *, optional: bool = False) -> Optional[bytes]:
    """``value`` as UTF-8 bytes for a C string; a clear TypeError otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    return value.encode("utf-8")


def check_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, not {value}")
    return value


def check_callable(what: str, value: object, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not callable(value):
        raise TypeError(f"{what} must be callable, not {type(value).__name__}")


def check_secret(value: object) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"secret must be bytes or str, not {type(value).__name__}")
