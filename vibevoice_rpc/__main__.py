"""Entry point for ``python -m vibevoice_rpc``, the ``vibevoice-rpc`` script and the frozen executable."""

from __future__ import annotations

import multiprocessing
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vibevoice_rpc.model.backend import LocalRuntime


def main(runtime: LocalRuntime | None = None) -> None:
    """Run the command line and exit. ``runtime``: see :func:`vibevoice_rpc.cli.main`."""
    multiprocessing.freeze_support()  # first, before argument parsing (PyInstaller)
    from vibevoice_rpc.model.split_bundle import install

    install()  # the engine part of a split CUDA bundle: its libraries load before torch
    from vibevoice_rpc.cli import main as cli_main

    code = cli_main(runtime=runtime)
    if (
        "torch" in sys.modules
    ):  # transcribe/selftest: skip the teardown (and, on Windows, DLL detach)
        from vibevoice_rpc.winapi import exit_process

        for stream in (sys.stdout, sys.stderr, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        exit_process(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
