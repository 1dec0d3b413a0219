"""The real server (``python -m vibevoice_rpc``) on a disk that is (nearly) full. Test code only.

``VIBEVOICE_TEST_FREE_BYTES=N``: the free-space check sees ``N`` bytes free.
``VIBEVOICE_TEST_ENOSPC_AFTER=N``: once ``N`` bytes were written by the download, every further
write fails with ``ENOSPC``, as a full disk does mid-file.
"""

from __future__ import annotations

import errno
import os
import sys


def main() -> None:
    from vibevoice_rpc.checkpoint import fetch as download
    from vibevoice_rpc.checkpoint import status

    free = os.environ.get("VIBEVOICE_TEST_FREE_BYTES")
    if free:
        download.free_bytes = status.free_bytes = lambda _path: int(free)
    limit = os.environ.get("VIBEVOICE_TEST_ENOSPC_AFTER")
    if limit:
        real_write = download._write_all
        written = [0]

        def write_all(out, data):  # type: ignore[no-untyped-def]
            if written[0] + len(data) > int(limit):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(out, data)
            written[0] += len(data)

        download._write_all = write_all

    from vibevoice_rpc.cli import main as cli_main

    sys.exit(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
