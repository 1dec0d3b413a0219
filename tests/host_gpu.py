"""This machine's GPU, asked of NVIDIA's driver library directly (not through the server), so that
the tests reading the real GPU probe's answer hold on a machine with an NVIDIA GPU as on one
without."""

from __future__ import annotations

import os


def nvml_here() -> str:
    """``"absent"``: no NVIDIA driver library (the probe says ``none``); ``"gpu"``: NVML sees a
    device CUDA can use; ``"no_device"``: NVML answers but no device is visible (both ``nvml``);
    ``"failed"``: NVML or pynvml fails otherwise, which is no evidence either way (torch decides)."""
    from vibevoice_rpc.model.gpu import _visible_devices

    try:
        import pynvml
    except ImportError:
        return "failed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return "absent"
    except Exception:
        return "failed"
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception:
        return "failed"
    finally:
        pynvml.nvmlShutdown()
    return "gpu" if count > 0 and _visible_devices(dict(os.environ)) != [] else "no_device"
