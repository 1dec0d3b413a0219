"""From decoded audio and a runner to a result: windows, the prompt, the streamed answer, loop
recovery, parsing, speakers stitched across windows. No torch: the runner brings the model."""
