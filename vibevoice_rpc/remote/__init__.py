"""The remote backend: a VibeVoice-ASR server (vLLM) runs the model; this wing talks to it with
every read bounded, every phase cancellable and no secret in any message. No torch."""
