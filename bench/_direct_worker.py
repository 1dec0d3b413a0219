"""The "direct" side of bench_engine.py: the plain transformers recipe in its own process.

    python bench/_direct_worker.py <checkpoint dir>

Loads the model the way the engine's loader does (``from_pretrained(dtype=float32,
device_map={"": "cpu"}, use_safetensors=True)``, eval, no grad) plus ``AutoProcessor``, prints one
JSON line ``{"ready": true, "load_s": …}``, then for every JSON line on stdin
``{"audio": path, "max_new_tokens": n, "script": text|null}`` runs

    load_audio(path) -> processor.apply_transcription_request(audio=…)
    -> model.generate(**inputs, max_new_tokens=n, sample=False, do_sample=False)
    -> processor.decode(new_tokens, return_format="parsed")

and prints ``{"total_s", "audio_s", "prepare_s", "generate_s", "decode_s", "tokens", "segments"}``
(times measured inside this process). ``script`` forces that answer with the same logits processor
as tests/scripted.py, so the two sides do identical work. Library output goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    out_fd = os.dup(1)  # our replies; everything printed by libraries goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        os.write(out_fd, json.dumps(obj).encode() + b"\n")

    import torch
    from transformers import (
        AutoProcessor,
        LogitsProcessor,
        LogitsProcessorList,
        VibeVoiceAsrForConditionalGeneration,
    )

    import vibevoice_rpc  # noqa: F401  (first: it keeps transformers off the Hub's kernels)
    from vibevoice_rpc.audio.decode import load_audio

    class Forced(LogitsProcessor):  # the same forcing as tests/scripted.py
        def __init__(self, ids: list[int], prompt_len: int) -> None:
            self.ids = ids
            self.prompt_len = prompt_len

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor):
            step = int(input_ids.shape[1]) - self.prompt_len
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.ids[min(step, len(self.ids) - 1)]] = 0.0
            return forced

    t0 = time.perf_counter()
    source = sys.argv[1]
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(
        source,
        dtype=torch.float32,
        device_map={"": "cpu"},
        use_safetensors=True,
        use_kernels=False,
    )
    model.eval()
    model.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(source)
    encoder_dtype = next(model.model.acoustic_tokenizer_encoder.parameters()).dtype
    reply({"ready": True, "load_s": time.perf_counter() - t0, "pid": os.getpid()})

    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            t0 = time.perf_counter()
            samples = load_audio(cmd["audio"], max_seconds=1e9).samples
            t1 = time.perf_counter()
            inputs = processor.apply_transcription_request(audio=samples)
            inputs = {
                k: (v.to(dtype=encoder_dtype) if v.is_floating_point() else v)
                if isinstance(v, torch.Tensor)
                else v
                for k, v in inputs.items()
            }
            prompt_len = int(inputs["input_ids"].shape[1])
            extra = {}
            if cmd.get("script"):
                ids = processor.tokenizer.encode(cmd["script"], add_special_tokens=False)
                ids.append(model.generation_config.eos_token_id)
                extra["logits_processor"] = LogitsProcessorList([Forced(ids, prompt_len)])
            t2 = time.perf_counter()
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=int(cmd["max_new_tokens"]),
                    sample=False,
                    do_sample=False,
                    **extra,
                )
            t3 = time.perf_counter()
            parsed = processor.decode(output[0, prompt_len:], return_format="parsed")
            t4 = time.perf_counter()
            reply(
                {
                    "total_s": t4 - t0,
                    "audio_s": t1 - t0,
                    "prepare_s": t2 - t1,
                    "generate_s": t3 - t2,
                    "decode_s": t4 - t3,
                    "tokens": int(output.shape[1] - prompt_len),
                    "segments": len(parsed) if isinstance(parsed, list) else -1,
                }
            )
        except Exception as exc:  # reported, and the benchmark fails
            reply({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
