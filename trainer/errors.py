"""Exceptions that cross process boundaries with their message and fields intact.

A trial's exception is raised in a Ray Train worker and pickled to the trial's driver, which
rebuilds it to report the cause. Python pickles an exception as ``cls(*self.args)``: for a
class whose ``__init__`` takes its fields (a path, a reason) and passes one formatted message
to ``super().__init__``, ``args`` is that message alone, the rebuild calls
``AudioDecodeError(message)``, and the driver gets ``TypeError: missing ... 'reason'``
instead of the cause. :class:`PicklableError` rebuilds without calling ``__init__``.
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class PicklableError(Exception):
    """Base of the project's exceptions whose ``__init__`` is not ``(message)``: a pickle round
    trip keeps the class, the message (``args``) and the fields set in ``__init__``."""

    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))
