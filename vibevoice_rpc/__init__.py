"""vibevoice-rpc: a stdio JSON-RPC 2.0 sidecar for speaker-diarized transcription with VibeVoice-ASR.

Importing this package is cheap on purpose: torch and transformers are imported only by the engine,
after the ``ready`` notification has been written.
"""

from __future__ import annotations

import os as _os
import sys as _sys

# No code from the Hub, ever. transformers (5.25+ depends on ``kernels``) and bitsandbytes (its CPU
# 4-bit path asks for ``kernels-community/quantization-bitsandbytes``) fetch and run compiled kernels
# from the Hugging Face Hub whenever the ``kernels`` package imports: a local checkpoint's load then
# sent requests to the Hub, and a frozen bundle without kernels' data files failed every load. A
# ``None`` entry in ``sys.modules`` makes ``import kernels`` raise ImportError and
# ``importlib.util.find_spec("kernels")`` return None, so both libraries take their built-in code
# paths. Here, because every entry point (server, CLI, frozen executable, benches) imports this
# package before transformers or bitsandbytes. ``USE_HUB_KERNELS=NO`` makes "no kernels" the default
# of every ``from_pretrained`` in the process (transformers 5.25 asks for them unless told not to, and
# would then fail on the blocked import); the loader also passes ``use_kernels=False`` itself.
_sys.modules.setdefault("kernels", None)
_os.environ.setdefault("USE_HUB_KERNELS", "NO")

__version__ = "0.1.0"
PROTOCOL_VERSION = "1.0"

__all__ = ["__version__", "PROTOCOL_VERSION"]
