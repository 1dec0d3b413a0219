"""The test client itself (tests/rpc_client.py), against small stand-in programs: it is also what the
frozen smoke test and the benchmarks measure with, so its waits must fail the right way."""

from __future__ import annotations

import sys

import pytest

from .rpc_client import RpcProcess, check_line


class Failed(Exception):
    pass


def stand_in(*lines: bytes, then: str = "", first: str = "") -> RpcProcess:
    """A program that runs ``first``, writes ``lines`` to stdout as given, runs ``then``, exits."""
    code = (
        f"import sys, time\n{first}\n"
        f"sys.stdout.buffer.write({b''.join(lines)!r})\nsys.stdout.flush()\n{then}"
    )
    return RpcProcess(cmd=[sys.executable, "-c", code], failure=Failed, strict=False)


READY = b'{"jsonrpc":"2.0","method":"ready","params":{"version":"0","protocol":"1.0","pid":1}}\n'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"jsonrpc":"2.0","id":1,"result":{}}\n', None),
        (b'[{"jsonrpc":"2.0","id":1,"result":{}}]\n', None),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}', "does not end in"),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}\r\n', "carriage return"),
        (b"hello\n", "not valid UTF-8 JSON"),
        (b'"text"\n', "not a JSON object or array"),
        (b'{"id":1,"result":{}}\n', '"jsonrpc"'),
    ],
)
def test_every_stdout_line_is_checked(line: bytes, problem: str | None) -> None:
    msg, found = check_line(line)
    if problem is None:
        assert found is None and msg is not None
    else:
        assert found is not None and problem in found


def test_a_response_arrives_with_its_time_and_the_notifications_before_it() -> None:
    progress = b'{"jsonrpc":"2.0","method":"progress","params":{"id":"r1","stage":"x"}}\n'
    answer = b'{"jsonrpc":"2.0","id":"r1","result":{"ok":true}}\n'
    with stand_in(READY, progress, answer, progress) as p:
        ready = p.wait_ready(timeout=60)
        arrived, msg = p.reply("r1", timeout=60)
        assert msg["result"] == {"ok": True} and p.response("r1") is msg
        assert p.ready_at is not None and p.started < p.ready_at <= arrived
        assert ready == p.ready_at - p.started
        assert p.result("r1")[1] == {"ok": True}
        assert p.wait_exit(60) == 0
        assert len(p.notifications("progress", "r1")) == 2
        assert len(p.notifications("progress", "r1", before=msg)) == 1
        p.check_lines()


def test_an_error_response_fails_result_but_not_reply() -> None:
    error = b'{"jsonrpc":"2.0","id":"r1","error":{"code":-32601,"message":"no such method"}}\n'
    with stand_in(READY, error) as p:
        assert p.reply("r1", timeout=60)[1]["error"]["code"] == -32601
        with pytest.raises(Failed, match="no such method"):
            p.result("r1", timeout=60)


def test_a_wait_fails_when_stdout_closes_without_the_answer() -> None:
    with stand_in(READY, then="sys.stderr.write('gone for good\\n')") as p:
        with pytest.raises(
            Failed, match="stdout closed while waiting for the answer to 'r9'"
        ) as err:
            p.reply("r9", timeout=600)
        p.wait_exit(60)
    assert "ready" in str(err.value)  # the last messages are named


def test_a_wait_fails_on_a_line_that_is_not_json_rpc() -> None:
    with stand_in(READY, b"print() went to stdout\n", then="time.sleep(60)") as p:
        with pytest.raises(Failed, match="not a JSON-RPC 2.0 message.*print\\(\\) went to stdout"):
            p.reply("r1", timeout=600)
        with pytest.raises(Failed, match="not valid UTF-8 JSON"):
            p.check_lines()


def test_a_wait_times_out_with_the_stderr_tail() -> None:
    with stand_in(
        READY, first="print('still thinking', file=sys.stderr)", then="time.sleep(60)"
    ) as p:
        p.wait_ready(timeout=60)
        with pytest.raises(Failed, match="(?s)timed out after 0.3 s.*still thinking"):
            p.wait_for(lambda m: False, timeout=0.3, what="nothing")


def test_writing_to_a_server_that_is_gone_fails_with_the_client_failure() -> None:
    with stand_in(READY) as p:
        p.wait_exit(60)
        with pytest.raises(Failed, match="writing to the server's stdin failed"):
            for _ in range(100):  # the first writes can still land in the pipe's buffer
                p.send_raw(b"x" * 65536)
