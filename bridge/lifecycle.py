"""Something a program starts and stops (a broker, a server): ``with`` does both."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Running:
    """Base for a service with ``start()`` and ``stop()``; ``with`` starts it and always
    stops it, whatever ends the block."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
