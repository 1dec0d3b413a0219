"""GPU facts for ``health`` without waiting for torch, a failed torch import, and the VRAM cap.

``health`` must answer at once, also while ``import torch`` takes long (a CUDA torch is GBs of DLLs
that antivirus scans on first use). :class:`GpuProbe` asks NVML — the NVIDIA driver's own library,
through ``pynvml`` (package ``nvidia-ml-py``) — on a background thread: there is a GPU, its name,
driver and memory, in milliseconds. Until a probe has answered, ``gpu_probe`` says ``"pending"``
and ``gpu_available: false`` means nothing yet. Once torch is imported its answer is used where NVML
had none. Nothing here imports torch or pynvml at module level.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import ModelUnavailable
from ..messages import GpuFacts, MemoryPlan
from ..winapi import IS_WINDOWS

__all__ = [
    "GpuProbe",
    "torch_import_error",
    "memory_fraction",
    "cap_process_memory",
]

log = logging.getLogger(__name__)

# health.gpu_probe (messages.GPU_PROBES): where gpu_available comes from.
#   pending  nothing has answered yet: gpu_available is not meaningful
#   nvml     the NVIDIA driver (NVML) answered
#   torch    NVML could not answer; torch.cuda.is_available() did
#   none     no NVIDIA driver (the NVML library is absent): no CUDA GPU, a real "false"
#   failed   NVML failed and torch could not be imported: unknown for good

POLL_SECONDS = 1.0  # how often NVML's memory figures are refreshed for health
# Windows drivers from 536.40 spill into shared system memory when VRAM runs out.
SYSMEM_FALLBACK_DRIVER = (536, 40)
# Device memory outside PyTorch's caching allocator that grows after the model is loaded (CUDA
# context, kernels loaded on first use, cuBLAS/cuDNN handles): kept out of the allocator's cap.
VRAM_RESERVE_BYTES = 384 * 2**20
MIB = 2**20


def _visible_devices(env: Mapping[str, str]) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it (None: all devices); it stops at a negative entry."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    out: list[str] = []
    for item in (x.strip() for x in raw.split(",")):
        if not item or item.startswith("-"):
            break
        out.append(item)
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuProbe:
    """What health says about the GPU. :meth:`start` probes NVML on a thread; the engine reports
    torch's answer with :meth:`torch_answered`; :meth:`facts` never waits."""

    def __init__(
        self,
        nvml: Any = None,
        env: Mapping[str, str] | None = None,
        poll_seconds: float = POLL_SECONDS,
        windows: bool | None = None,
    ) -> None:
        self._nvml_module = nvml  # None: import pynvml on the probe thread
        self._env = os.environ if env is None else env
        self._poll_seconds = poll_seconds
        self._windows = IS_WINDOWS if windows is None else windows
        self._lock = threading.Lock()
        self._nvml = "pending"  # pending | ok | absent | failed
        self._torch = "pending"  # pending | ok | failed
        self._nvml_available = False
        self._torch_cuda = False
        self.name: str | None = None
        self.driver: str | None = None
        self._used_mb: int | None = None
        self._total_mb: int | None = None
        self.answered = threading.Event()  # NVML finished its first probe (either way)
        self._stop = threading.Event()

    # --- NVML, on its own thread ----------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self.run, name="vibevoice-gpu-probe", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Probe NVML once, then refresh the memory figures every ``poll_seconds`` until stopped."""
        nvml, handle = self._probe()
        self.answered.set()
        if handle is None:
            return
        while not self._stop.wait(self._poll_seconds):
            try:
                self._read_memory(nvml, handle)
            except Exception as exc:  # keep the last figures; stop polling a failing driver
                log.warning("NVML memory query failed, VRAM figures stop updating: %s", exc)
                return

    def _probe(self) -> tuple[Any, Any]:
        nvml = self._nvml_module
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
        except Exception as exc:
            # Only a missing NVML library means "no NVIDIA driver"; a missing pynvml (a build that
            # left it out) or a failing driver is no evidence either way: torch decides then.
            not_found = getattr(nvml, "NVMLError_LibraryNotFound", None)
            absent = not_found is not None and isinstance(exc, not_found)
            with self._lock:
                self._nvml = "absent" if absent else "failed"
            log.info("NVML: %s (%s)", "no NVIDIA driver" if absent else "failed", exc)
            return None, None
        try:
            handle = self._pick_device(nvml)
            if handle is not None:
                name = _text(nvml.nvmlDeviceGetName(handle))
                driver = _text(nvml.nvmlSystemGetDriverVersion())
                self._read_memory(nvml, handle)
            with self._lock:
                self._nvml = "ok"
                self._nvml_available = handle is not None
                if handle is not None:
                    self.name, self.driver = name, driver
        except Exception as exc:
            with self._lock:
                self._nvml = "failed"
            log.warning("NVML: querying the GPU failed: %s", exc)
            return None, None
        if handle is None:
            log.info("NVML: no CUDA device visible")
            return None, None
        log.info("GPU: %s, %s MiB, driver %s (NVML)", self.name, self._total_mb, self.driver)
        if self._windows and self.sysmem_fallback_driver():
            log.info(
                "this driver can spill into shared system memory when VRAM runs out; the engine "
                "caps its CUDA allocations so that it reports out-of-memory instead"
            )
        return nvml, handle

    def _pick_device(self, nvml: Any) -> Any:
        """The device CUDA calls 0: the first of ``CUDA_VISIBLE_DEVICES``, else NVML's first."""
        visible = _visible_devices(self._env)
        if nvml.nvmlDeviceGetCount() <= 0 or visible == []:
            return None
        first = visible[0] if visible else "0"
        if first.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(first))
        return nvml.nvmlDeviceGetHandleByUUID(first)

    def _read_memory(self, nvml: Any, handle: Any) -> None:
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        with self._lock:
            self._used_mb, self._total_mb = int(info.used) // MIB, int(info.total) // MIB

    def sysmem_fallback_driver(self) -> bool:
        """Whether the driver is one that spills to system memory (Windows, >= 536.40)."""
        try:
            parts = tuple(int(p) for p in (self.driver or "").split(".")[:2])
        except ValueError:
            return False
        return len(parts) == 2 and parts >= SYSMEM_FALLBACK_DRIVER

    # --- torch's answer -------------------------------------------------------------------------

    def torch_answered(self, cuda_available: bool | None) -> None:
        """Record ``torch.cuda.is_available()``, or None when torch could not be imported."""
        with self._lock:
            self._torch = "failed" if cuda_available is None else "ok"
            self._torch_cuda = bool(cuda_available)

    @property
    def torch_cuda(self) -> bool | None:
        """Whether this engine's torch can use CUDA; None until torch has answered."""
        with self._lock:
            return self._torch_cuda if self._torch == "ok" else None

    # --- health (reader thread) -----------------------------------------------------------------

    def facts(self) -> GpuFacts:
        """What is known now; never waits."""
        with self._lock:
            nvml, torch_state = self._nvml, self._torch
            if nvml == "ok":
                probe, available = "nvml", self._nvml_available
            elif torch_state == "ok" and (self._torch_cuda or nvml != "absent"):
                probe, available = "torch", self._torch_cuda
            elif nvml == "absent":
                probe, available = "none", False
            elif nvml == "failed" and torch_state == "failed":
                probe, available = "failed", False
            else:
                probe, available = "pending", False
            return GpuFacts(
                gpu_available=bool(available),
                gpu_probe=probe,
                gpu_name=self.name,
                gpu_driver=self.driver,
                vram_used_mb=self._used_mb,
                vram_total_mb=self._total_mb,
            )


# --- a failed import of torch -----------------------------------------------------------------


def torch_import_error(exc: BaseException) -> ModelUnavailable:
    """The error for a torch that cannot be imported, with a hint for the usual Windows causes."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "1455" in low or "paging file" in low:
        hint = (
            "Windows ran out of virtual memory while loading PyTorch's CUDA libraries (WinError "
            "1455, the paging file is too small): let Windows manage the page file size (System > "
            "About > Advanced system settings > Performance > Advanced > Virtual memory) on a drive "
            "with at least 20 GB free, or close other programs; then restart the engine"
        )
    elif any(
        s in low
        for s in (
            "dll load failed",
            "winerror 126",
            "winerror 1114",
            "vcruntime",
            "msvcp",
            "c10.dll",
        )
    ):
        hint = (
            "a library PyTorch needs could not be loaded: install the Microsoft Visual C++ "
            "Redistributable 2015-2022 (x64), check that antivirus has not quarantined a file in "
            "the engine's folder (reinstall it if so); then restart the engine"
        )
    else:
        hint = (
            "the engine's PyTorch is broken or incomplete: reinstall the engine (antivirus may have "
            "removed a file); on Windows also check the page file size and the Visual C++ "
            "Redistributable 2015-2022 (x64); then restart the engine"
        )
    return ModelUnavailable(
        f"PyTorch could not be imported, so no model can run: {text}",
        kind="torch_import_failed",
        hint=hint,
    )


# --- the VRAM cap (Windows' sysmem fallback) --------------------------------------------------


def memory_fraction(
    free_bytes: int, total_bytes: int, reserve_bytes: int = VRAM_RESERVE_BYTES
) -> float | None:
    """The share of the device PyTorch's allocator may hold so that it raises out-of-memory before
    the driver spills: the VRAM that was free before the model was loaded, less ``reserve_bytes``
    for memory outside the allocator. None when that leaves nothing (then no cap is set)."""
    if total_bytes <= 0:
        return None
    allowed = min(free_bytes, total_bytes) - reserve_bytes
    if allowed <= 0:
        return None
    return allowed / total_bytes


def cap_process_memory(
    plan: MemoryPlan | None, *, cuda: Any = None, windows: bool | None = None
) -> float | None:
    """On Windows, cap PyTorch's CUDA allocations with ``set_per_process_memory_fraction``.

    Windows drivers >= 536.40 spill into shared system memory when VRAM runs out instead of
    failing: no out-of-memory error, the job just crawls. With the cap PyTorch raises first (-32005).
    Sized from the VRAM the planner saw free before loading (``plan``), else from ``mem_get_info``.
    Returns the fraction set, or None. Elsewhere the driver does not spill: no cap.
    """
    if not (IS_WINDOWS if windows is None else windows):
        return None
    if cuda is None:  # pragma: no cover - GPU only; the tests pass a fake torch.cuda
        import torch

        cuda = torch.cuda
    free = plan.free_vram_bytes if plan is not None else None
    total = plan.total_vram_bytes if plan is not None else None
    if free is None or total is None:
        free, total = cuda.mem_get_info()
    fraction = memory_fraction(int(free), int(total))
    if fraction is None:
        log.warning("not capping CUDA memory: only %d MiB were free", int(free) // MIB)
        return None
    cuda.set_per_process_memory_fraction(fraction, cuda.current_device())
    log.info(
        "capped PyTorch's CUDA memory at %d of %d MiB (fraction %.3f) so that running out of VRAM "
        "is an out-of-memory error, not a spill into shared system memory",
        int(fraction * total) // MIB,
        int(total) // MIB,
        fraction,
    )
    return fraction
