"""imagequeue_client.multipart: the streamed form body parses as the form it claims to be."""
from __future__ import annotations

import io
from pathlib import Path

from werkzeug.formparser import parse_form_data
from werkzeug.test import EnvironBuilder

from imagequeue_client.multipart import MultipartFile


def parse(body: MultipartFile) -> tuple[dict[str, list[str]], list[tuple[str, str, bytes]]]:
    data = b""
    while chunk := body.read(7):  # odd-sized reads cross every part boundary
        data += chunk
    assert len(data) == len(body)
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(data), content_length=len(data),
                             content_type=body.content_type).get_environ()
    _, form, files = parse_form_data(environ)
    fields = {name: form.getlist(name) for name in form}
    parts = []
    for name, upload in files.items(multi=True):
        parts.append((name, upload.filename or "", upload.read()))
        upload.close()
    return fields, parts


def test_one_file_and_fields(tmp_path: Path) -> None:
    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"\xff\xd8" + bytes(range(256)) * 50)
    seen: list[int] = []
    body = MultipartFile({"recordId": "r1", "options": '{"a": "b\\"c"}'}, "file", photo,
                         on_progress=lambda sent, total: seen.append(sent))
    fields, files = parse(body)
    assert fields == {"recordId": ["r1"], "options": ['{"a": "b\\"c"}']}
    assert files == [("file", "me.jpg", photo.read_bytes())]
    assert seen[-1] == len(body)
    body.close()


def test_several_files_in_order(tmp_path: Path) -> None:
    paths = []
    for index in range(3):
        path = tmp_path / f"p{index}.jpg"
        path.write_bytes(bytes([index]) * (1000 + index))
        paths.append(path)
    body = MultipartFile({"recordIds": '["a", "b", "c"]'}, "files[]", paths[0],
                         more_files=[("files[]", paths[1]), ("files[]", paths[2])])
    fields, files = parse(body)
    assert fields == {"recordIds": ['["a", "b", "c"]']}
    assert files == [("files[]", path.name, path.read_bytes()) for path in paths]
