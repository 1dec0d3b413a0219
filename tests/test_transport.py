"""Line framing: CRLF, blank lines, oversized lines, the locked writer."""

from __future__ import annotations

import io
import os
import threading

import pytest

from vibevoice_rpc.transport import LineWriter, Oversized, find_top_level_id, iter_lines

pytestmark = pytest.mark.timeout(30)


def test_lines_accept_lf_crlf_and_skip_blank_lines():
    data = b'{"a":1}\r\n\n   \r\n{"b":2}\n{"c":3}'
    assert list(iter_lines(io.BytesIO(data))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_sixteen_megabyte_line_is_accepted():
    big = b'{"x":"' + b"a" * (16 * 1024 * 1024 - 20) + b'"}'
    out = list(iter_lines(io.BytesIO(big + b"\n" + b"{}\n")))
    assert out == [big, b"{}"]


def test_oversized_line_is_consumed_and_reported():
    head = b'{"jsonrpc":"2.0","id":"big","params":{"p":"'
    line = head + b"a" * 5000 + b'"}}\n'
    out = list(iter_lines(io.BytesIO(line + b'{"next":1}\n'), max_bytes=1000))
    assert isinstance(out[0], Oversized) and out[0].size == len(line)
    assert find_top_level_id(out[0].head, out[0].tail) == "big"
    assert out[1] == b'{"next":1}'


def test_id_inside_params_is_not_mistaken_for_the_top_level_id():
    assert find_top_level_id(b'{"params":{"id":5,"x":"aaa', b'aaa"}}') is None


def test_writer_is_atomic_per_message_across_threads():
    r, w = os.pipe()
    writer = LineWriter(w)
    msgs = [(b'{"n":%d,"pad":"' % i) + b"x" * 3000 + b'"}' for i in range(200)]
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(_read_all(r)))
    reader.start()
    threads = [
        threading.Thread(target=lambda part=msgs[i::4]: [writer.write(m) for m in part])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(w)
    reader.join()
    lines = chunks[0].split(b"\n")
    assert lines[-1] == b"" and sorted(lines[:-1]) == sorted(msgs)


def test_writer_refuses_raw_newlines_and_survives_a_closed_pipe():
    r, w = os.pipe()
    writer = LineWriter(w)
    with pytest.raises(ValueError):
        writer.write(b'{"a":"\n"}')
    with pytest.raises(ValueError):
        writer.write(b'{"a":"\r"}')
    os.close(r)
    assert writer.write(b"{}") is False
    assert writer.closed
    os.close(w)


def _read_all(fd: int) -> bytes:
    out = bytearray()
    while chunk := os.read(fd, 65536):
        out += chunk
    os.close(fd)
    return bytes(out)
