"""Entry point for ``python -m vibevoice_rpc``, the ``vibevoice-rpc`` script and the frozen executable."""

from __future__ import annotations

import multiprocessing


def main() -> None:
    multiprocessing.freeze_support()  # first, before argument parsing (PyInstaller)
    from vibevoice_rpc.cli import main as cli_main

    raise SystemExit(cli_main())


if __name__ == "__main__":
    main()
