"""The real server (``python -m vibevoice_rpc``) with a scripted answer forced on the tiny model.

    VIBEVOICE_TEST_SCRIPT=<file with the raw answer, or "default">  VIBEVOICE_TEST_STEP_DELAY=0.05 \\
        python -m tests.scripted_server [server args...]

See tests/scripted.py. Test code only.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from tests import scripted

    source = os.environ.get("VIBEVOICE_TEST_SCRIPT", "")
    script = None
    if source == "default":
        script = scripted.real_format_answer()
    elif source:
        with open(source, encoding="utf-8") as f:
            script = f.read()
    delay = float(os.environ.get("VIBEVOICE_TEST_STEP_DELAY", "0") or 0)
    scripted.install(script, step_delay=delay)
    from vibevoice_rpc.__main__ import main as server_main

    sys.argv[0] = "vibevoice-rpc"
    server_main()


if __name__ == "__main__":
    main()
