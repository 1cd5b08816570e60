"""A multipart/form-data body streamed from a file: the upload is never held in memory.

requests' own ``files=`` reads the whole file into memory first; a ZIP may be 5 GB.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartFile:
    """File-like body (``read``, ``len``) of form fields plus files, with upload progress.

    ``file_field``/``path`` name one file; ``more_files`` adds further (field, path) parts, in
    order (a bulk request's ``files[]``). Each file is opened only while it is being sent.
    """

    def __init__(self, fields: dict[str, str], file_field: str, path: str | os.PathLike[str], *,
                 content_type: str = "application/octet-stream",
                 on_progress: Callable[[int, int], None] | None = None,
                 more_files: list[tuple[str, str | os.PathLike[str]]] | None = None) -> None:
        self.boundary = uuid.uuid4().hex  # fixed length: the same upload always has the same size
        parts = [(file_field, Path(path)), *((name, Path(more)) for name, more in (more_files or []))]
        self.path = parts[0][1]
        head = b""
        for name, value in fields.items():
            head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
                     ).encode() + value.encode("utf-8") + b"\r\n"
        self._segments: list[bytes | Path] = []
        for index, (name, file_path) in enumerate(parts):
            if index:
                head = b"\r\n"  # ends the previous file's part
            head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"; '
                     f'filename="{_quote(file_path.name)}"\r\nContent-Type: {content_type}\r\n\r\n').encode()
            self._segments += [head, file_path]  # a Path: the file's bytes, read when reached
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._segments.append(self._tail)
        self._size = sum(len(seg) if isinstance(seg, bytes) else seg.stat().st_size for seg in self._segments)
        self._index = self._offset = self._sent = 0
        self._file: IO[bytes] | None = None
        self._on_progress = on_progress

    @property
    def content_type(self) -> str:
        """The Content-Type header to send with this body."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all of it for a negative size)."""
        want = self._size if size is None or size < 0 else size
        out = bytearray()
        while len(out) < want and self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, Path):
                if self._file is None:
                    self._file = open(segment, "rb")  # noqa: SIM115 (closed at its end or by close())
                chunk = self._file.read(want - len(out))
                if not chunk:
                    self._file.close()
                    self._file = None
                    self._index += 1
                    continue
            else:
                chunk = segment[self._offset:self._offset + want - len(out)]
                self._offset += len(chunk)
                if self._offset >= len(segment):
                    self._index, self._offset = self._index + 1, 0
            out += chunk
        self._sent += len(out)
        if self._on_progress is not None and out:
            self._on_progress(self._sent, self._size)
        return bytes(out)

    def close(self) -> None:
        """Close the file if it is still open."""
        if self._file is not None:
            self._file.close()
