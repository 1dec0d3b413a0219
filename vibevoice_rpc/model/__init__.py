"""The local backend: the model in this process — torch, the loader, the VRAM planner, the runner,
the GPU facts, the tiny model. The only wing that imports torch, transformers or bitsandbytes."""
