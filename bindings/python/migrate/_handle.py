"""What :class:`~migrate.Engine` and :class:`~migrate.Client` share: a C
object with an fd that is readable when its dispatch has work, dispatched
from an asyncio loop, freed once and never from inside its own callbacks,
and C callbacks that must never let a Python exception reach ctypes."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Optional, TypeVar

from ._common import Error, MigrateError, log

_H = TypeVar("_H", bound="LoopHandle")


class LoopHandle:
    """Lifetime and event-loop plumbing of one library object.

    A subclass sets ``_kind`` ("engine", "client") for messages, calls
    :meth:`_init_handle` before it creates the C object, stores the pointer
    in ``_ptr`` and the fd in ``_fd``, and implements :meth:`_free` (free the
    C object; ``_ptr`` is already ``None``), :meth:`_dispatch_c` (one
    dispatch call, returning the library's code) and :meth:`_dispatch_failed`
    (raise for a negative code).
    """

    _kind = "handle"
    _ptr: Optional[int] = None

    def _init_handle(self) -> None:
        self._ptr = None
        self._fd = -1
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._dispatching = False
        self._close_requested = False
        self._fatal: Optional[BaseException] = None

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Free the library object; no callback runs after this. Called from
        inside one of its own callbacks, it happens as soon as the current
        dispatch returns. Closing twice is harmless."""
        if self._ptr is None:
            return
        if self._dispatching:
            self._close_requested = True
            return
        self._release()

    def _release(self) -> None:
        self._detach_loop()
        self._free()

    def _free(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __del__(self) -> None:
        try:
            if self._ptr is not None and not self._dispatching:
                self._release()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _H) -> _H:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> int:
        if self._ptr is None:
            raise MigrateError(Error.ESTATE, f"the {self._kind} is closed")
        return self._ptr

    # ------------------------------------------------------------ the event loop

    def fileno(self) -> int:
        """The fd that is readable when :meth:`dispatch` has work."""
        self._check()
        return self._fd

    def _attach_loop(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        self._check()
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._detach_loop()
        loop.add_reader(self._fd, _on_readable, weakref.ref(self))
        self._loop = loop

    def _detach_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)

    def _dispatch_c(self, ptr: int) -> int:
        raise NotImplementedError

    def _dispatch_failed(self, rc: int) -> None:
        raise NotImplementedError

    def dispatch(self) -> None:
        """Do the pending work and run the callbacks. Never blocks; not
        re-entrant. Raises :class:`MigrateError` if the library reports the
        object broken (then close it)."""
        ptr = self._check()
        if self._dispatching:
            raise RuntimeError(f"{type(self).__name__}.dispatch() called from inside "
                               f"a {self._kind} callback")
        self._dispatching = True
        try:
            rc = self._dispatch_c(ptr)
        finally:
            self._dispatching = False
        if self._close_requested:
            self._close_requested = False
            self._release()
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal
        if rc < 0 and self._ptr is not None:
            self._dispatch_failed(rc)


def trampoline(ref: "weakref.ref[Any]", method: str, *args: Any, rc: Any = None) -> Any:
    """Calls the owner's handler of a C callback. The owner may already be
    unreachable (being collected): then the library gets ``rc``, the
    failure value for callbacks that return one."""
    owner = ref()
    if owner is None:
        return rc
    try:
        result = getattr(owner, method)(*args)
    except BaseException as exc:  # never let an exception reach ctypes
        log.error("internal error in %s: %s", method, exc, exc_info=exc)
        return rc
    return rc if result is None else result


def _on_readable(ref: "weakref.ref[LoopHandle]") -> None:
    handle = ref()
    if handle is None or handle.closed:
        return
    try:
        handle.dispatch()
    except MigrateError as exc:
        log.error("%s %s: dispatch failed, detaching it from the loop: %s",
                  handle._kind, getattr(handle, "id", ""), exc)
        handle._detach_loop()
