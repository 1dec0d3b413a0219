"""The real server (``python -m vibevoice_rpc``) with a scripted answer forced on the tiny model.

    VIBEVOICE_TEST_SCRIPT=<file with the raw answer, or "default">  VIBEVOICE_TEST_STEP_DELAY=0.05 \\
        python -m tests.scripted_server [server args...]

``VIBEVOICE_TEST_RETRY_SCRIPT=<file>`` is what the model "says" in a loop recovery's tries.
``VIBEVOICE_TEST_NOISY_LOAD=1`` makes the model load print to stdout three ways (Python ``print``,
a write to fd 1 as C code would do, and ``sys.__stdout__``), to prove none of it reaches the channel.
``VIBEVOICE_TEST_LOAD_DELAY=<seconds>`` makes every model load last that much longer, so tests can
watch the server while it loads however fast the machine is.
``VIBEVOICE_TEST_OOM_AT_STEP=N`` makes generation step ``N`` (0 = the logits of the first new token)
raise ``torch.cuda.OutOfMemoryError``, once per process: inside ``model.generate``, exactly where a
real CUDA allocation failure surfaces mid-generation; later generations run normally.

See tests/scripted.py. Test code only.
"""

from __future__ import annotations

import os
import sys

OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 15.99 GiB "
    "of which 3.12 MiB is free. (injected by tests/scripted_server.py at generation step {step})"
)


def main() -> None:
    from tests import scripted

    source = os.environ.get("VIBEVOICE_TEST_SCRIPT", "")
    script = None
    if source == "default":
        script = scripted.real_format_answer()
    elif source:
        with open(source, encoding="utf-8") as f:
            script = f.read()
    retries = None
    retry_source = os.environ.get("VIBEVOICE_TEST_RETRY_SCRIPT", "")
    if retry_source:
        with open(retry_source, encoding="utf-8") as f:
            retries = [f.read()]
    delay = float(os.environ.get("VIBEVOICE_TEST_STEP_DELAY", "0") or 0)
    oom_at = int(os.environ.get("VIBEVOICE_TEST_OOM_AT_STEP", "-1") or -1)
    fired = [False]

    def on_step(step: int) -> None:
        if step == oom_at and not fired[0]:
            fired[0] = True
            import torch

            print(f"scripted_server: injecting OutOfMemoryError at step {step}", file=sys.stderr)
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE.format(step=step))

    runtime = scripted.ScriptedRuntime(
        load_delay=float(os.environ.get("VIBEVOICE_TEST_LOAD_DELAY", "0") or 0),
        noisy_load=os.environ.get("VIBEVOICE_TEST_NOISY_LOAD") == "1",
    )
    runtime.set(script, step_delay=delay, on_step=on_step if oom_at >= 0 else None, retries=retries)
    from vibevoice_rpc.__main__ import main as server_main

    sys.argv[0] = "vibevoice-rpc"
    server_main(runtime=runtime)


if __name__ == "__main__":
    main()
