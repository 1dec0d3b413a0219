"""Line framing: CRLF, blank lines, oversized lines, the locked writer."""

from __future__ import annotations

import io
import os
import threading

import pytest

from vibevoice_rpc.protocol.transport import LineWriter, Oversized, find_top_level_id, iter_lines

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
    # The size, like the limit, counts the line without its terminator (#14.6: it counted it).
    assert isinstance(out[0], Oversized) and out[0].size == len(line) - 1
    assert find_top_level_id(out[0].head, out[0].tail) == "big"
    assert out[1] == b'{"next":1}'


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b""])
def test_the_limit_and_the_size_count_a_line_without_its_terminator(end):
    limit = 1000
    for extra in (0, 1, 2, 3, 5000):
        line = b'{"id":"x' + b"a" * (limit + extra - 10) + b'"}'
        assert len(line) == limit + extra
        out = list(iter_lines(io.BytesIO(line + end + b"{}\n" * bool(end)), max_bytes=limit))
        if extra == 0:
            assert out[0] == line, (extra, end)
        else:
            assert isinstance(out[0], Oversized), (extra, end)
            assert out[0].size == len(line), (extra, end)
            assert out[0].tail.endswith(b'"}'), (extra, end)
        assert out[1:] == ([b"{}"] if end else []), (extra, end)


def test_a_bom_at_the_start_of_the_stream_is_skipped():
    bom = b"\xef\xbb\xbf"
    out = list(iter_lines(io.BytesIO(bom + b'{"id":1}\r\n' + bom + b'{"id":2}\n')))
    assert out == [b'{"id":1}', bom + b'{"id":2}']  # only the stream's first bytes are a BOM
    assert list(iter_lines(io.BytesIO(bom))) == []
    assert list(iter_lines(io.BytesIO(bom + b"\r\n{}"))) == [b"{}"]
    # with the BOM the first line may still hold the whole limit
    line = b"a" * 1000
    assert list(iter_lines(io.BytesIO(bom + line + b"\r\n"), max_bytes=1000)) == [line]
    (big,) = iter_lines(io.BytesIO(bom + line + b"a\r\n"), max_bytes=1000)
    assert isinstance(big, Oversized) and big.size == 1001 and big.head.startswith(line + b"a")


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
