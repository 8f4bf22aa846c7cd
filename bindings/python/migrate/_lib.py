"""ctypes declarations of libmigrate's public API (migrate.h, replicate.h,
client.h, control.h).

Every structure here mirrors the C header field by field, in order; the
``layout`` test compares their offsets with a C program compiled against the
headers, so a header change that is not mirrored here fails the test suite
instead of corrupting memory.

The library is found through the ``MIGRATE_LIBRARY`` environment variable (a
path to ``libmigrate.so``), else through ``ctypes.util.find_library``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_size_t,
                    c_uint, c_uint32, c_uint64, c_void_p)


def _load() -> ctypes.CDLL:
    path = os.environ.get("MIGRATE_LIBRARY") or ctypes.util.find_library("migrate")
    if not path:
        raise ImportError(
            "libmigrate.so not found: set MIGRATE_LIBRARY=/path/to/libmigrate.so "
            "or install the library where the dynamic linker finds it")
    try:
        return ctypes.CDLL(path)
    except OSError as exc:
        raise ImportError(f"cannot load libmigrate from {path!r}: {exc}") from exc


lib = _load()

# ---------------------------------------------------------------- migrate.h


class Event(Structure):
    _fields_ = [
        ("type", c_int),
        ("mid", c_char_p),
        ("user", c_char_p),
        ("peer_url", c_char_p),
        ("error", c_int),
        ("reason", c_char_p),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("duration_us", c_uint64),
        ("downtime_us", c_uint64),
        ("rounds", c_uint),
        ("phase", c_char_p),
        ("time_us", c_uint64),
    ]


# (engine, event, user_data); (engine, level, line, user_data)
EVENT_FN = CFUNCTYPE(None, c_void_p, POINTER(Event), c_void_p)
LOG_FN = CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_void_p)


class EngineOptions(Structure):
    _fields_ = [
        ("listen_address", c_char_p),
        ("listen_port", c_int),
        ("advertised_url", c_char_p),
        ("engine_id", c_char_p),
        ("secret", c_void_p),
        ("secret_len", c_size_t),
        ("allow_insecure", c_int),
        ("tls_cert_file", c_char_p),
        ("tls_key_file", c_char_p),
        ("tls_ca_file", c_char_p),
        ("tls_require_client_cert", c_int),
        ("max_frame_bytes", c_size_t),
        ("peer_timeout_ms", c_uint),
        ("on_event", EVENT_FN),
        ("on_log", LOG_FN),
        ("log_level", c_int),
        ("user_data", c_void_p),
        ("precopy_alpha_ms", c_uint),
        ("precopy_max_rounds", c_uint),
        ("precopy_rate_limit", c_uint64),
        ("compression", c_int),
        ("file_cache_bytes", c_uint64),
        ("file_cache_off", c_int),
        ("worker_threads", c_uint),
        ("worker_nice", c_int),
        ("metrics_off", c_int),
        ("orchestrator_url", c_char_p),
        ("heartbeat_ms", c_uint),
        ("app_url", c_char_p),
        ("session_token_ttl_s", c_uint),
    ]


# Hooks: (engine, user, user_data)
INT_HOOK_FN = CFUNCTYPE(c_int, c_void_p, c_char_p, c_void_p)
VOID_HOOK_FN = CFUNCTYPE(None, c_void_p, c_char_p, c_void_p)


class Hooks(Structure):
    _fields_ = [
        ("pause", INT_HOOK_FN),
        ("resume", VOID_HOOK_FN),
        ("release", VOID_HOOK_FN),
        ("incoming", INT_HOOK_FN),
        ("activate", VOID_HOOK_FN),
        ("drop", VOID_HOOK_FN),
    ]


# (engine, user, buf, user_data); (engine, user, version, data, len, user_data)
EXTRACT_FN = CFUNCTYPE(c_int, c_void_p, c_char_p, c_void_p, c_void_p)
MERGE_FN = CFUNCTYPE(c_int, c_void_p, c_char_p, c_uint32, c_void_p, c_size_t, c_void_p)


class LightDomain(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("type_name", c_char_p),
        ("version", c_uint32),
        ("extract", EXTRACT_FN),
        ("merge", MERGE_FN),
    ]


class FileDomain(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("version", c_uint32),
        ("root", c_char_p),
        ("append_only", c_int),
    ]


class MigrationStats(Structure):
    _fields_ = [
        ("state", c_int),
        ("error", c_int),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("duration_us", c_uint64),
        ("downtime_us", c_uint64),
        ("rounds", c_uint),
        ("round_bytes", c_uint64 * 16),
    ]


FOREACH_FN = CFUNCTYPE(c_int, c_char_p, c_int, c_void_p)

SESSION_TOKEN_MAX = 600

# ---------------------------------------------------------------- replicate.h


class ReplicateOptions(Structure):
    _fields_ = [
        ("interval_ms", c_uint),
    ]


class ReplicaEvent(Structure):
    _fields_ = [
        ("type", c_int),
        ("user", c_char_p),
        ("peer_url", c_char_p),
        ("epoch", c_uint64),
        ("seq", c_uint64),
        ("bytes", c_uint64),
        ("total_bytes", c_uint64),
        ("lag_us", c_uint64),
        ("error", c_int),
        ("reason", c_char_p),
        ("time_us", c_uint64),
    ]


# (engine, event, user_data)
REPLICA_EVENT_FN = CFUNCTYPE(None, c_void_p, POINTER(ReplicaEvent), c_void_p)


class ReplicaInfo(Structure):
    _fields_ = [
        ("primary", c_int),
        ("standby", c_int),
        ("epoch", c_uint64),
        ("seq", c_uint64),
        ("acked_seq", c_uint64),
        ("updates", c_uint64),
        ("bytes", c_uint64),
        ("last_us", c_uint64),
    ]


# ---------------------------------------------------------------- client.h


class ClientRedirect(Structure):
    _fields_ = [
        ("user", c_char_p),
        ("app_url", c_char_p),
        ("session_url", c_char_p),
        ("engine_id", c_char_p),
    ]


# (client, state, error, detail, user_data); (client, redirect, user_data)
CLIENT_STATE_FN = CFUNCTYPE(None, c_void_p, c_int, c_int, c_char_p, c_void_p)
CLIENT_REDIRECT_FN = CFUNCTYPE(None, c_void_p, POINTER(ClientRedirect), c_void_p)


class ClientOptions(Structure):
    _fields_ = [
        ("url", c_char_p),
        ("token", c_char_p),
        ("user", c_char_p),
        ("fallback_urls", POINTER(c_char_p)),
        ("fallback_count", c_size_t),
        ("backoff_initial_ms", c_uint),
        ("backoff_max_ms", c_uint),
        ("jitter_percent", c_int),
        ("max_attempts", c_uint),
        ("connect_timeout_ms", c_uint),
        ("tls_ca_file", c_char_p),
        ("tls_cert_file", c_char_p),
        ("tls_key_file", c_char_p),
        ("on_state", CLIENT_STATE_FN),
        ("on_redirect", CLIENT_REDIRECT_FN),
        ("user_data", c_void_p),
    ]


# ---------------------------------------------------------------- control.h


class CtlOptions(Structure):
    _fields_ = [
        ("url", c_char_p),
        ("secret", c_void_p),
        ("secret_len", c_size_t),
        ("allow_insecure", c_int),
        ("tls_ca_file", c_char_p),
        ("tls_cert_file", c_char_p),
        ("tls_key_file", c_char_p),
        ("timeout_ms", c_uint),
    ]


class CtlMigration(Structure):
    _fields_ = [
        ("mid", c_char_p),
        ("user", c_char_p),
        ("peer_url", c_char_p),
        ("outgoing", c_int),
        ("phase", c_char_p),
        ("rounds", c_uint),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("started_us", c_uint64),
        ("duration_us", c_uint64),
        ("parked", c_int),
    ]


class CtlEngineStatus(Structure):
    _fields_ = [
        ("engine_id", c_char_p),
        ("url", c_char_p),
        ("protocol_version", c_uint),
        ("library_version", c_char_p),
        ("users_by_state", c_size_t * 8),
        ("users", c_size_t),
        ("migrations", POINTER(CtlMigration)),
        ("nmigrations", c_size_t),
        ("committed_out", c_uint64),
        ("aborted_out", c_uint64),
        ("committed_in", c_uint64),
        ("aborted_in", c_uint64),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("uptime_us", c_uint64),
    ]


CTL_USERS_FN = CFUNCTYPE(None, c_char_p, c_int, c_void_p)
CTL_STATUS_FN = CFUNCTYPE(None, POINTER(CtlEngineStatus), c_void_p)
CTL_EVENT_FN = CFUNCTYPE(None, POINTER(Event), c_void_p)
CTL_WATCH_FN = CFUNCTYPE(c_int, POINTER(Event), c_void_p)

# ---------------------------------------------------------------- prototypes

_P = POINTER(c_void_p)


def _proto(name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_proto("mig_strerror", c_char_p, c_int)
_proto("mig_err_name", c_char_p, c_int)
_proto("mig_version", c_char_p)

_proto("mig_engine_new", c_int, _P, POINTER(EngineOptions))
_proto("mig_engine_start", c_int, c_void_p)
_proto("mig_engine_free", None, c_void_p)
_proto("mig_engine_fd", c_int, c_void_p)
_proto("mig_engine_dispatch", c_int, c_void_p)
_proto("mig_engine_port", c_int, c_void_p)
_proto("mig_engine_url", c_char_p, c_void_p)
_proto("mig_engine_id", c_char_p, c_void_p)
_proto("mig_engine_last_error", c_char_p, c_void_p)
_proto("mig_engine_set_hooks", c_int, c_void_p, POINTER(Hooks), c_void_p)
_proto("mig_buf_append", c_int, c_void_p, c_char_p, c_size_t)
_proto("mig_light_domain_register", c_int, c_void_p, POINTER(LightDomain), c_void_p)
_proto("mig_file_domain_register", c_int, c_void_p, POINTER(FileDomain))
_proto("mig_user_add", c_int, c_void_p, c_char_p)
_proto("mig_user_remove", c_int, c_void_p, c_char_p)
_proto("mig_user_get_state", c_int, c_void_p, c_char_p)
_proto("mig_user_foreach", c_int, c_void_p, FOREACH_FN, c_void_p)
_proto("mig_user_count", c_size_t, c_void_p)
_proto("mig_session_token", c_int, c_void_p, c_char_p, c_char_p, c_size_t)
_proto("mig_migrate", c_int, c_void_p, c_char_p, c_char_p, _P)
_proto("mig_migration_cancel", c_int, c_void_p)
_proto("mig_migration_info", c_int, c_void_p, POINTER(MigrationStats))
_proto("mig_migration_id", c_char_p, c_void_p)
_proto("mig_migration_free", None, c_void_p)

_proto("mig_replica_set_handler", c_int, c_void_p, REPLICA_EVENT_FN, c_void_p)
_proto("mig_replicate", c_int, c_void_p, c_char_p, c_char_p, POINTER(ReplicateOptions))
_proto("mig_replicate_now", c_int, c_void_p, c_char_p)
_proto("mig_replicate_stop", c_int, c_void_p, c_char_p)
_proto("mig_replica_promote", c_int, c_void_p, c_char_p)
_proto("mig_replica_set_auto_promote", c_int, c_void_p, c_uint)
_proto("mig_replica_failover_token", c_int, c_void_p, c_char_p, c_char_p, c_size_t)
_proto("mig_replica_info_get", c_int, c_void_p, c_char_p, POINTER(ReplicaInfo))
_proto("mig_user_epoch", c_uint64, c_void_p, c_char_p)

_proto("mig_client_new", c_int, _P, POINTER(ClientOptions))
_proto("mig_client_free", None, c_void_p)
_proto("mig_client_fd", c_int, c_void_p)
_proto("mig_client_dispatch", c_int, c_void_p)
_proto("mig_client_attach", c_int, c_void_p, c_char_p, c_char_p)
_proto("mig_client_get_state", c_int, c_void_p)
_proto("mig_client_state_name", c_char_p, c_int)
_proto("mig_client_engine_id", c_char_p, c_void_p)
_proto("mig_client_app_url", c_char_p, c_void_p)
_proto("mig_client_last_error", c_char_p, c_void_p)
_proto("mig_client_set_standby", c_int, c_void_p, c_char_p, c_char_p, c_uint)

_proto("mig_ctl_new", c_int, _P, POINTER(CtlOptions), c_char_p, c_size_t)
_proto("mig_ctl_free", None, c_void_p)
_proto("mig_ctl_last_error", c_char_p, c_void_p)
_proto("mig_ctl_users", c_int, c_void_p, CTL_USERS_FN, c_void_p)
_proto("mig_ctl_status", c_int, c_void_p, CTL_STATUS_FN, c_void_p)
_proto("mig_ctl_cancel", c_int, c_void_p, c_char_p)
_proto("mig_ctl_migrate", c_int, c_void_p, c_char_p, c_char_p, c_uint, CTL_EVENT_FN,
       c_void_p, POINTER(Event))
_proto("mig_ctl_watch", c_int, c_void_p, c_int, CTL_WATCH_FN, c_void_p)
_proto("mig_ctl_promote", c_int, c_void_p, c_char_p)
_proto("mig_ctl_replicate", c_int, c_void_p, c_char_p, c_char_p, c_uint)


def text(raw: bytes | None) -> str:
    """A C string from the library as str ("" for NULL)."""
    return raw.decode("utf-8", "replace") if raw else ""
