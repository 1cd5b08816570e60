"""Storing a job's output and its thumbnails beside it, through the same storage backend.

Keys follow the output's (``.../face-crop-<job>.jpg`` -> ``.../face-crop-<job>-thumb.jpg`` and
``...-source-thumb.jpg``), so a retry overwrites them like the output, and whoever removes an
output (cancel, cleanup) finds them by the URLs kept in the same row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from jobs.imaging.thumbnails import OUTPUT_SUFFIX, SOURCE_SUFFIX, Thumbnail, thumbnail_key
from jobs.storage import Storage


class Previewed(Protocol):
    """A processed image's result (face crop, cut-out, ID photo) with its thumbnails."""

    @property
    def thumbnail(self) -> Thumbnail | None:
        """The output's preview."""
        ...

    @property
    def source_thumbnail(self) -> Thumbnail | None:
        """The source's preview."""
        ...


class Output(Previewed, Protocol):
    """What every image job stores: its encoded output (and, through Previewed, its thumbnails)."""

    @property
    def data(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...

    @property
    def extension(self) -> str: ...


@dataclass(frozen=True)
class StoredPreviews:
    """The thumbnails' public URLs (None: not made) and their storage keys."""

    url: str | None = None
    source_url: str | None = None
    keys: tuple[str, ...] = field(default=())

    def to_result(self) -> dict[str, Any]:
        """The camelCase fields of job results and listings."""
        return {"thumbnailUrl": self.url, "sourceThumbnailUrl": self.source_url}

    def to_columns(self) -> dict[str, Any]:
        """The columns of ``data_records`` and ``batch_items`` they go to."""
        return {"thumbnail_url": self.url, "source_thumbnail_url": self.source_url}


def store_previews(storage: Storage, output_key: str, result: Previewed) -> StoredPreviews:
    """Store ``result.thumbnail`` and ``result.source_thumbnail`` (either may be None) beside ``output_key``."""
    url = source_url = None
    keys: list[str] = []
    output, source = result.thumbnail, result.source_thumbnail
    if output is not None:
        keys.append(thumbnail_key(output_key, output, OUTPUT_SUFFIX))
        url = storage.put(keys[-1], output.data, output.content_type)
    if source is not None:
        keys.append(thumbnail_key(output_key, source, SOURCE_SUFFIX))
        source_url = storage.put(keys[-1], source.data, source.content_type)
    return StoredPreviews(url, source_url, tuple(keys))


def store_with_previews(storage: Storage, key: str, output: Output) -> tuple[str, StoredPreviews]:
    """Store ``output``'s previews, then ``output`` under ``key``; its public URL and the previews.

    Previews first: one that fails retries the job before the output is stored, so an output is
    uploaded once per successful attempt (a re-upload only where its answer was lost).
    """
    previews = store_previews(storage, key, output)
    return storage.put(key, output.data, output.content_type), previews
