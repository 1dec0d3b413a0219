"""Write Silero VAD's weights as safetensors for vibevoice_rpc/voice/vad.py (numpy, no torch).

    python scripts/silero_weights.py            # needs torch and silero-vad (the dev extra)
    python scripts/silero_weights.py --check    # does the file in the package hold those weights?

Reads the TorchScript model ``silero_vad.load_silero_vad()`` runs (``silero_vad/data/silero_vad.jit``
of the installed silero-vad; its 16 kHz network, ``_model``) and writes its 15 tensors under the
names of the package's ``tinygrad_model.py`` to ``vibevoice_rpc/data/silero_vad_16k_v6_2.safetensors``,
with silero's MIT licence beside it. Not the package's own ``silero_vad_16k.safetensors``: that file
holds other weights than the model Silero runs (silero-vad issue #768; docs/AUDIO.md). Run it again
when silero-vad's model changes (tests/test_vad.py fails then: it compares the file with the jit).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "vibevoice_rpc" / "data" / "silero_vad_16k_v6_2.safetensors"
LICENSE = REPO / "vibevoice_rpc" / "data" / "silero_vad_LICENSE.txt"

# the jit's 16 kHz network → tinygrad_model.py's names
NAMES = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    **{
        f"encoder.{i}.reparam_conv.{p}": f"conv{i + 1}.{p}"
        for i in range(4)
        for p in ("weight", "bias")
    },
    **{
        f"decoder.rnn.{p}": f"lstm_cell.{p}"
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    },
    "decoder.decoder.2.weight": "final_conv.weight",
    "decoder.decoder.2.bias": "final_conv.bias",
}


def package_dir() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("silero-vad is not installed (pip install silero-vad --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def jit_tensors() -> tuple[dict, dict[str, str]]:
    """The jit's 16 kHz weights under tinygrad_model.py's names, and what they came from."""
    import torch

    jit = package_dir() / "data" / "silero_vad.jit"
    model = torch.jit.load(str(jit), map_location="cpu")
    state = model._model.state_dict()
    if set(state) != set(NAMES):
        raise SystemExit(f"unexpected tensors in {jit}: {sorted(set(state) ^ set(NAMES))}")
    tensors = {
        NAMES[k]: v.detach().to(torch.float32).contiguous().numpy() for k, v in state.items()
    }
    source = {
        "source": "silero_vad/data/silero_vad.jit (_model, 16 kHz)",
        "silero_vad_version": importlib.metadata.version("silero-vad"),
        "source_sha256": hashlib.sha256(jit.read_bytes()).hexdigest(),
        "license": "MIT (c) 2020-present Silero Team; see silero_vad_LICENSE.txt",
    }
    return tensors, source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors, source = jit_tensors()
    if args.check:
        have = load_file(str(TARGET))
        same = set(have) == set(tensors) and all(
            np.array_equal(have[k], tensors[k]) for k in tensors
        )
        print(
            f"{TARGET.name}: {'equals' if same else 'DIFFERS from'} {source['source']} "
            f"of silero-vad {source['silero_vad_version']}"
        )
        return 0 if same else 1
    save_file(tensors, str(TARGET), metadata=source)
    dist = importlib.metadata.distribution("silero-vad")
    licence = next(f for f in dist.files or [] if f.name == "LICENSE")
    LICENSE.write_text(
        "The file silero_vad_16k_v6_2.safetensors holds the weights of Silero VAD "
        f"(silero-vad {source['silero_vad_version']}, {source['source']}),\n"
        "converted by scripts/silero_weights.py. Its licence:\n\n"
        + Path(str(dist.locate_file(licence))).read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes) and {LICENSE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
