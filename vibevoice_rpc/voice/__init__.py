"""Who speaks when, from the samples alone: voice activity (Silero VAD in numpy, :mod:`.vad` and
:mod:`.activity`). numpy only, no torch: the remote backend and the CPU bundle run it too."""
