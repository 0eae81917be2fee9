"""The exception hierarchy: every error batchmagic raises derives from :class:`BatchMagicError`.

A user's own mistake in a magic line or cell is reported with IPython's ``UsageError`` by the
magics layer; the classes here are for the Python API and for failures that happen after submit.
Exceptions that cross the process boundary (the runner's result) must pickle, so each keeps
its constructor arguments in ``args``.
"""

from __future__ import annotations

from typing import Any


class BatchMagicError(Exception):
    """Base class of batchmagic's own errors.

    Attributes
    ----------
    outputs : dict
        What a cell that raised (:class:`RemoteError`) or called ``sys.exit(n)`` (:class:`RunFailed`) had
        assigned and changed before it stopped, name -> value, as the notebook would have kept them:
        :meth:`batchmagic.run.Run.fetch` binds them. Empty for every other failure (a sweep's task, a
        distributed run, a timeout or a cancel keep nothing).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.outputs: dict[str, Any] = {}


class ConfigError(BatchMagicError):
    """A setting is missing or invalid; the message names it and how to set it."""


class CaptureError(BatchMagicError):
    """The cell cannot be packaged (syntax error, star import, unpicklable value...)."""


class RunFailed(BatchMagicError):
    """The run did not produce a result: killed, timed out, cancelled or infrastructure failure.

    The message is one line that says what happened.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}", *getattr(self, "__notes__", ())]


class RunCancelled(RunFailed):
    """The run was cancelled before it finished."""


class RemoteError(BatchMagicError):
    """An exception raised by the cell while it ran remotely.

    Parameters
    ----------
    ename : str
        The qualified type name of the original exception, e.g. ``"ZeroDivisionError"``.
    evalue : str
        The original exception's message.
    traceback : list of str
        The remote traceback, formatted, pointing at the cell's own lines.
    task_id : str, optional
        The task that raised it.

    Examples
    --------
    In [1]: try:
       ...:     run.wait()
       ...: except batchmagic.RemoteError as err:
       ...:     print(err.ename, err.evalue)
    ZeroDivisionError division by zero
    """

    def __init__(self, ename: str, evalue: str, traceback: list[str], task_id: str = "") -> None:
        super().__init__(ename, evalue, traceback, task_id)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.task_id = task_id

    def __str__(self) -> str:
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename

    def __reduce__(self) -> tuple[Any, ...]:
        # The state too: what the cell kept (outputs) and the notes that say so travel with a pickled error.
        return (type(self), (self.ename, self.evalue, self.traceback, self.task_id), self.__dict__)

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of formatting our own (useless) local frames.
        header = "RemoteError: the cell raised on the remote machine"
        if self.task_id:
            header += f" (task {self.task_id})"
        notes = getattr(self, "__notes__", ())  # what came back of a cell that raised (Run.fetch)
        return [header, *"".join(self.traceback).rstrip("\n").splitlines(), *notes]
