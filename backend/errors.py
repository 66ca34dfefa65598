"""Typed errors a user can act on.

Every error that can reach a user carries a stable ``code`` (used in ``job_failed``
messages on the wire), a ``message`` saying what happened and a ``hint`` saying what to do.
The base class lives in ``blender_addon.core.errors`` so the add-on shares it.
"""

from __future__ import annotations

from blender_addon.core.errors import PortraitSplatError

__all__ = [
    "CancelledError",
    "FaceError",
    "FaceTooSmallError",
    "InputImageError",
    "InvalidOptionError",
    "ModelMissingError",
    "MultipleFacesError",
    "NoFaceError",
    "PipelineUnavailableError",
    "PortraitSplatError",
    "UnknownPresetError",
]


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


class PipelineUnavailableError(PortraitSplatError):
    """A job asked for a pipeline this backend cannot run (unknown, or its weights or imports
    are missing). Built in one place for the submit check, the dispatch and the worker."""

    code = "unknown_pipeline"

    def __init__(self, pipeline: str, available: list[str] | tuple[str, ...], why: str | None = None):
        super().__init__(
            f"The pipeline {pipeline!r} is not available" + (f": {why}" if why else "."),
            hint=f"Available: {', '.join(sorted(available)) or 'none'}.",
        )
        self.pipeline = pipeline
