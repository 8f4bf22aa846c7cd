"""libmigrate for Python: move one user's application state between two
server engines while the user keeps going.

    import migrate
    engine = migrate.Engine(secret=..., listen_port=7000)
    engine.register_light("progress", 1, extract, merge)
    engine.start()                      # inside a running asyncio loop
    await engine.migrate("alice", "ws://10.0.0.2:7000")

* :class:`Engine` (migrate.h, replicate.h) for servers, dispatched from the
  asyncio loop;
* :class:`Client` (client.h), the reconnect helper for their clients;
* :class:`Control` (control.h), the orchestrator's control channel.

Every failure of the library raises :class:`MigrateError`, which carries the
MIG error code, its name and the library's message. See README.md.
"""

from ._common import (Compression, Error, Event, EventType, LogLevel, MigrateError, ReplicaEvent,
                      ReplicaEventType, ReplicaInfo, UserState, err_name, strerror)
from ._lib import lib as _lib_handle
from .client import Client, ClientState, Redirect, state_name
from .control import Control, ControlMigration, EngineStatus
from .engine import Engine, Migration, MigrationStats

__all__ = [
    "Client", "ClientState", "Compression", "Control", "ControlMigration", "Engine",
    "EngineStatus", "Error", "Event", "EventType", "LogLevel", "MigrateError", "Migration",
    "MigrationStats", "Redirect", "ReplicaEvent", "ReplicaEventType", "ReplicaInfo",
    "UserState", "err_name", "library_version", "state_name", "strerror",
]


def library_version() -> str:
    """The loaded library's version, "MAJOR.MINOR.PATCH" (mig_version)."""
    return _lib_handle.mig_version().decode()
