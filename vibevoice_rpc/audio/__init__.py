"""Any audio file → 24 kHz mono float32 with specific errors: the front door is :mod:`.decode`, the
decoders (libsndfile, PyAV, the ffmpeg program) feed :mod:`.sink`. No torch; nothing here reads the
environment."""
