"""Typed errors a user can act on.

Every error that can reach a user carries a stable ``code`` (used in ``job_failed``
messages on the wire), a ``message`` saying what happened and a ``hint`` saying what to do.
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


class InputImageError(PortraitSplatError):
    """The photo could not be read or is not usable (corrupt, bomb, wrong mode, too small)."""

    code = "bad_image"
    hint = "Use a JPEG or PNG portrait photo of at least 256x256 pixels."


class FaceError(PortraitSplatError):
    """Base for face-analysis failures."""

    code = "face_error"


class NoFaceError(FaceError):
    code = "no_face"
    hint = "Use a photo with one clearly visible, roughly frontal face."


class MultipleFacesError(FaceError):
    code = "multiple_faces"
    hint = "Crop the photo to one person, or allow the largest face to be used."


class FaceTooSmallError(FaceError):
    code = "face_too_small"
    hint = "Use a photo where the face is larger, or crop closer around the head."


class ModelMissingError(PortraitSplatError):
    code = "model_missing"
    hint = "Run: python -m backend models download"


class CancelledError(PortraitSplatError):
    code = "cancelled"
    hint = ""


class UnknownPresetError(PortraitSplatError, ValueError):
    """A pipeline was asked for a preset it does not have (also a ValueError, for callers
    that validate arguments generically)."""

    code = "unknown_preset"
    hint = "Pick one of the presets the pipeline lists, or leave the preset at 'default'."


class InvalidOptionError(PortraitSplatError, ValueError):
    """A pipeline option has a value the pipeline does not accept."""

    code = "bad_option"
    hint = "Check the option's spelling and allowed values in the pipeline's documentation."
