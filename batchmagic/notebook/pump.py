"""The kernel pump: lets a kernel busy with a blocking cell handle the widget messages waiting for it.

A blocking cell keeps the kernel busy, so a click on the panel would reach it only once the cell ends:
:func:`ui_pump` gives the wait loop a callable that lets the kernel handle widget messages between polls.
This is the only module that touches ipykernel's internals (ipykernel 7's shell channel, ipykernel 6's
message loop through jupyter-ui-poll).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ui_pump", "widgets_can_render"]


def widgets_can_render() -> bool:
    """True in a Jupyter kernel with ipywidgets (tqdm.notebook makes the same check)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@contextmanager
def ui_pump() -> Iterator[Callable[[], None] | None]:
    """A callable that lets a busy kernel handle the widget messages waiting for it (a Cancel click, a
    picked task), for a wait loop to call between polls; None outside a Jupyter kernel.

    Other messages (another cell's execute request...) wait, in order, until this cell ends, as they would
    anyway. ipykernel 7 receives shell messages on a thread of its own and hands the main shell's to the
    main thread through an inproc socket: the pump reads that socket, handles comm messages at once and
    queues the rest behind the cell. ipykernel 6 has a message loop the pump can run one step at a time
    (jupyter-ui-poll's technique, and package).
    """
    from IPython import get_ipython

    shell = get_ipython()
    kernel = getattr(shell, "kernel", None) if shell is not None else None
    if kernel is None or not widgets_can_render():
        yield None
        return
    channel = getattr(kernel, "shell_channel_thread", None)
    if channel is not None and getattr(kernel, "_supports_kernel_subshells", False):
        yield _MainShellPump(kernel)
        return
    try:
        from jupyter_ui_poll import ui_events
    except ImportError:
        yield None
        return
    with ui_events() as poll:

        def pump() -> None:
            poll(20)  # at most this many queued messages per call

        yield pump


_COMM_MESSAGES = ("comm_open", "comm_msg", "comm_close")


class _MainShellPump:
    """ipykernel 7: handle the comm messages queued for the main shell while a cell blocks it."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.socket = kernel.shell_channel_thread.manager.get_shell_channel_to_subshell_pair(None).to_socket

    def __call__(self) -> None:
        import asyncio

        kernel = self.kernel
        for _ in range(50):  # a bounded batch per call: the wait loop polls its run between batches
            if not self.socket.poll(0):
                return
            raw = self.socket.recv_multipart(copy=False)
            idents, frames = kernel.session.feed_identities(raw, copy=False)
            # Peek at the header only: deserializing records the signature, and the kernel refuses a
            # message whose signature it has seen, so only a message handled here may be deserialized.
            header = kernel.session.unpack(frames[1].bytes)
            if header.get("msg_type") not in _COMM_MESSAGES:
                # Runs once this cell ends: the main shell's lock is held by the cell until then.
                asyncio.ensure_future(kernel.shell_main(None, raw))
                continue
            msg = kernel.session.deserialize(frames, content=True, copy=False)
            parent, ident = kernel.get_parent("shell"), kernel._get_shell_context_var(kernel._shell_parent_ident)
            kernel.set_parent(idents, msg, channel="shell")
            try:
                kernel.shell_handlers[msg["header"]["msg_type"]](None, idents, msg)
            except Exception:
                logging.getLogger("batchmagic.widget").warning("a widget message failed", exc_info=True)
            finally:
                kernel.set_parent(ident, parent, channel="shell")  # the cell's output stays in the cell
