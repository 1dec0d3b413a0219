"""The real server (``python -m vibevoice_rpc``) with a scripted answer forced on the tiny model.

    VIBEVOICE_TEST_SCRIPT=<file with the raw answer, or "default">  VIBEVOICE_TEST_STEP_DELAY=0.05 \\
        python -m tests.scripted_server [server args...]

``VIBEVOICE_TEST_NOISY_LOAD=1`` makes the model load print to stdout three ways (Python ``print``,
a write to fd 1 as C code would do, and ``sys.__stdout__``), to prove none of it reaches the channel.
``VIBEVOICE_TEST_LOAD_DELAY=<seconds>`` makes every model load last that much longer, so tests can
watch the server while it loads however fast the machine is.

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
    if os.environ.get("VIBEVOICE_TEST_NOISY_LOAD") == "1":
        _noisy_load()
    load_delay = float(os.environ.get("VIBEVOICE_TEST_LOAD_DELAY", "0") or 0)
    if load_delay:
        _slow_load(load_delay)
    from vibevoice_rpc.__main__ import main as server_main

    sys.argv[0] = "vibevoice-rpc"
    server_main()


def _noisy_load() -> None:
    from vibevoice_rpc import loader

    real = loader.load_model

    def load_model(*args, **kwargs):  # type: ignore[no-untyped-def]
        print("print() noise during model load")
        os.write(1, b"fd-1 noise during model load\n")
        if sys.__stdout__ is not None:
            sys.__stdout__.write("sys.__stdout__ noise during model load\n")
            sys.__stdout__.flush()
        return real(*args, **kwargs)

    loader.load_model = load_model


def _slow_load(seconds: float) -> None:
    import time

    from vibevoice_rpc import loader

    real = loader.load_model

    def load_model(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return real(*args, **kwargs)

    loader.load_model = load_model


if __name__ == "__main__":
    main()
