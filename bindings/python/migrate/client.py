"""The reconnect helper (client.h) for Python clients, plugged into asyncio.

A :class:`Client` keeps one client of one user attached to whichever engine
serves the user and tells the app, through ``on_redirect``, where its own
data connection must go after the user migrated. Its callbacks run inside
:meth:`Client.dispatch`, which the asyncio loop calls when the helper's fd is
readable, so they run on the event loop. A callback that raises is logged on
the ``"migrate"`` logger (``KeyboardInterrupt``/``SystemExit`` are re-raised
by :meth:`Client.dispatch`).
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from . import _lib
from ._common import Error, MigrateError, check_callable, check_int, check_str, log
from ._handle import LoopHandle, trampoline

_UINT_MAX = 2**32 - 1


class ClientState(enum.IntEnum):
    """What the helper is doing (mig_client_state)."""
    DISCONNECTED = 0
    CONNECTING = 1
    ATTACHED = 2
    REDIRECTED = 3
    BACKING_OFF = 4
    FAILED = 5


@dataclass(frozen=True)
class Redirect:
    """Where the user went (mig_client_redirect)."""
    user: str
    app_url: str      # where the app's data connection must go ("" if none)
    session_url: str  # the destination engine's session URL
    engine_id: str


class Client(LoopHandle):
    """A reconnect helper: one client of one user (mig_client_*).

    ``url`` is the engine's session URL and ``token`` a session token the
    server minted (:meth:`migrate.Engine.session_token`). The helper starts
    attaching at once; its callbacks are ``on_state(state, error, detail)``
    and ``on_redirect(redirect)``. Inside a running loop it attaches to it
    (else pass ``loop`` or call :meth:`attach_loop`). Close with
    :meth:`close` or use it as a (async) context manager.
    """

    def __init__(self, url: str, token: str, *, user: Optional[str] = None,
                 fallback_urls: Sequence[str] = (), backoff_initial_ms: int = 0,
                 backoff_max_ms: int = 0, jitter_percent: int = 0, max_attempts: int = 0,
                 connect_timeout_ms: int = 0, tls_ca_file: Optional[str] = None,
                 tls_cert_file: Optional[str] = None, tls_key_file: Optional[str] = None,
                 on_state: Optional[Callable[[ClientState, Any, str], Any]] = None,
                 on_redirect: Optional[Callable[[Redirect], Any]] = None,
                 loop: Optional[asyncio.AbstractEventLoop] = None):
        self._init_handle()
        check_callable("on_state", on_state)
        check_callable("on_redirect", on_redirect)
        if isinstance(fallback_urls, (str, bytes)):
            raise TypeError("fallback_urls must be a sequence of str, not a single string")
        o = _lib.ClientOptions()
        o.url = check_str("url", url)
        o.token = check_str("token", token)
        o.user = check_str("user", user, optional=True)
        fallbacks = [check_str("fallback_urls[]", u) for u in fallback_urls]
        arr = (ctypes.c_char_p * max(1, len(fallbacks)))(*fallbacks)
        if fallbacks:
            o.fallback_urls = arr
            o.fallback_count = len(fallbacks)
        o.backoff_initial_ms = check_int("backoff_initial_ms", backoff_initial_ms, 0, _UINT_MAX)
        o.backoff_max_ms = check_int("backoff_max_ms", backoff_max_ms, 0, _UINT_MAX)
        o.jitter_percent = check_int("jitter_percent", jitter_percent, -2**31, 2**31 - 1)
        o.max_attempts = check_int("max_attempts", max_attempts, 0, _UINT_MAX)
        o.connect_timeout_ms = check_int("connect_timeout_ms", connect_timeout_ms, 0, _UINT_MAX)
        o.tls_ca_file = check_str("tls_ca_file", tls_ca_file, optional=True)
        o.tls_cert_file = check_str("tls_cert_file", tls_cert_file, optional=True)
        o.tls_key_file = check_str("tls_key_file", tls_key_file, optional=True)
        self._on_state = on_state
        self._on_redirect = on_redirect
        self._state_waiters: list = []
        ref = weakref.ref(self)
        # Kept until after mig_client_free(): the library calls through them.
        self._cb_state = _lib.CLIENT_STATE_FN(
            lambda _c, st, err, detail, _u: trampoline(ref, "_c_state", st, err, detail))
        self._cb_redirect = _lib.CLIENT_REDIRECT_FN(
            lambda _c, r, _u: trampoline(ref, "_c_redirect", r))
        o.on_state = self._cb_state
        o.on_redirect = self._cb_redirect
        out = ctypes.c_void_p()
        rc = _lib.lib.mig_client_new(ctypes.byref(out), ctypes.byref(o))
        if rc:
            raise MigrateError(rc, "mig_client_new rejected the options (URL must be ws:// "
                               "or wss://, a token is required)")
        self._ptr = out.value
        self._fd = _lib.lib.mig_client_fd(self._ptr)
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is not None:
            self.attach_loop(loop)

    # ------------------------------------------------------------ lifetime

    _kind = "client"

    def close(self) -> None:
        """Close the connection and free the helper (mig_client_free); no
        callback runs after this. From inside a callback, it happens once
        the current dispatch returns."""
        super().close()

    def _free(self) -> None:
        ptr, self._ptr = self._ptr, None
        _lib.lib.mig_client_free(ptr)
        for state, fut in self._state_waiters:
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_exception(MigrateError(Error.ECLOSED, "the client was closed"))
        self._state_waiters.clear()

    # ------------------------------------------------------------ the event loop

    def attach_loop(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Dispatch from ``loop`` (default: the running one) when the fd is readable."""
        self._attach_loop(loop)

    def detach_loop(self) -> None:
        self._detach_loop()

    def dispatch(self) -> None:
        """Handle what the connection brought and run the callbacks
        (mig_client_dispatch). Never blocks; not re-entrant."""
        super().dispatch()

    def _dispatch_c(self, ptr: int) -> int:
        return _lib.lib.mig_client_dispatch(ptr)

    def _dispatch_failed(self, rc: int) -> None:
        raise MigrateError(rc, self.last_error)

    # ------------------------------------------------------------ state

    def attach(self, token: str, url: Optional[str] = None) -> None:
        """Start over with a new token (mig_client_attach), at ``url`` or
        the URLs in use."""
        rc = _lib.lib.mig_client_attach(self._check(), check_str("url", url, optional=True),
                                        check_str("token", token))
        if rc:
            raise MigrateError(rc, self.last_error or "cannot attach")

    def set_standby(self, url: Optional[str], token: Optional[str] = None, *,
                    after_ms: int = 0) -> None:
        """Failover (mig_client_set_standby): the standby engine's session
        ``url`` and a failover token for it
        (:meth:`migrate.Engine.failover_token`, minted at the primary). When
        the engine stays unreachable for ``after_ms`` (0: 3000 ms) the
        helper attaches at the standby with that token instead, retrying
        with its backoff until the standby has promoted the user. Used once;
        calling again replaces it, ``url=None`` clears it."""
        burl = check_str("url", url, optional=True)
        btoken = check_str("token", token, optional=burl is None)
        rc = _lib.lib.mig_client_set_standby(self._check(), burl, btoken,
                                             check_int("after_ms", after_ms, 0, _UINT_MAX))
        if rc:
            raise MigrateError(rc, self.last_error or "cannot set the standby (the URL must "
                               "be ws:// or wss://, a token is required)")

    @property
    def state(self) -> ClientState:
        return ClientState(_lib.lib.mig_client_get_state(self._check()))

    @property
    def engine_id(self) -> str:
        """The engine attached to, or last attached to ("" if none yet)."""
        return _lib.text(_lib.lib.mig_client_engine_id(self._check()))

    @property
    def app_url(self) -> str:
        """That engine's app URL ("" if it advertises none)."""
        return _lib.text(_lib.lib.mig_client_app_url(self._check()))

    @property
    def last_error(self) -> str:
        return _lib.text(_lib.lib.mig_client_last_error(self._check()))

    async def wait_for(self, state: ClientState, timeout: Optional[float] = None) -> None:
        """Wait until the helper reports ``state`` (or is in it now)."""
        if self.state == state:
            return
        fut = asyncio.get_running_loop().create_future()
        self._state_waiters.append((state, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._state_waiters = [w for w in self._state_waiters if w[1] is not fut]

    # ------------------------------------------------------------ callbacks from C

    def _failed(self, what: str, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            self._fatal = self._fatal or exc
        log.error("client %s callback raised %s: %s", what, type(exc).__name__, exc,
                  exc_info=exc)

    def _c_state(self, state: int, error: int, detail: bytes) -> None:
        try:
            st: Any = ClientState(state)
        except ValueError:
            st = state
        try:
            err: Any = Error(error)
        except ValueError:
            err = error
        for want, fut in self._state_waiters:
            if want == st and not fut.done():
                fut.set_result(None)
        if self._on_state is not None:
            try:
                self._on_state(st, err, _lib.text(detail))
            except BaseException as exc:
                self._failed("on_state", exc)

    def _c_redirect(self, r_p: Any) -> None:
        r = r_p.contents
        redirect = Redirect(_lib.text(r.user), _lib.text(r.app_url), _lib.text(r.session_url),
                            _lib.text(r.engine_id))
        if self._on_redirect is not None:
            try:
                self._on_redirect(redirect)
            except BaseException as exc:
                self._failed("on_redirect", exc)


def state_name(state: int) -> str:
    """"CONNECTING", ...; "?" for an unknown value (mig_client_state_name)."""
    return _lib.text(_lib.lib.mig_client_state_name(int(state)))
