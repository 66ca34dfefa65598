"""The one user-facing error type, shared by the backend, the command line and the add-on.

Every error that can reach a user carries a stable ``code`` (used in ``job_failed`` and
``error`` messages on the wire), a ``message`` saying what happened and a ``hint`` saying
what to do. The backend's typed errors (``backend.errors``), the client's
``ServiceError``, the wire's ``ProtocolError`` and the add-on's launcher and connection
errors all derive from :class:`PortraitSplatError`, so one ``except`` and one way of showing
it serve everywhere. bpy-free and torch-free.
"""

from __future__ import annotations


class PortraitSplatError(Exception):
    code = "internal_error"
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
