"""Who speaks when, from the samples alone: voice activity (Silero VAD in numpy, :mod:`.vad` and
:mod:`.activity`) and who is speaking (a speaker encoder, :mod:`.embedding`, over its mel front
end, :mod:`.mel`). numpy only, no torch: the remote backend and the CPU bundle run it too; imports
only the floor."""
