"""vibevoice-rpc: a stdio JSON-RPC 2.0 sidecar for speaker-diarized transcription with VibeVoice-ASR.

Importing this package is cheap on purpose: torch and transformers are imported only by the engine,
after the ``ready`` notification has been written.
"""

from __future__ import annotations

__version__ = "0.1.0"
PROTOCOL_VERSION = "1.0"

__all__ = ["__version__", "PROTOCOL_VERSION"]
