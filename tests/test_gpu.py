"""GPU facts for health (NVML probe, torch's answer), a failed torch import, and the Windows VRAM
cap. NVML is absent on these machines, so its failure path runs for real; its success path runs
against a fake pynvml; the cap against a fake torch.cuda."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vibevoice_rpc.config import Config
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.errors import ModelUnavailable
from vibevoice_rpc.messages import GPU_PROBES, HealthResult, MemoryPlan
from vibevoice_rpc.model import backend as engine_mod
from vibevoice_rpc.model import gpu
from vibevoice_rpc.protocol.dispatcher import Dispatcher, Job

from .host_gpu import nvml_here
from .rpc_client import RpcProcess, server_env

pytestmark = pytest.mark.timeout(120)

GIB = 2**30
MIB = 2**20


class FakeNvmlError(Exception):
    pass


class FakeLibraryNotFound(FakeNvmlError):
    pass


class FakeNvml:
    """The part of pynvml the probe uses. ``memory_reads`` is set on every memory query."""

    NVMLError = FakeNvmlError
    NVMLError_LibraryNotFound = FakeLibraryNotFound

    def __init__(self, count: int = 1, init_error: Exception | None = None) -> None:
        self.count = count
        self.init_error = init_error
        self.used = 1 * GIB
        self.calls: list[tuple[Any, ...]] = []
        self.memory_reads = 0
        self.read = threading.Condition()

    def nvmlInit(self) -> None:
        self.calls.append(("init",))
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.calls.append(("by_index", index))
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self.calls.append(("by_uuid", uuid))
        return ("handle", uuid)

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        return b"NVIDIA GeForce RTX 4070"  # older pynvml versions return bytes

    def nvmlSystemGetDriverVersion(self) -> str:
        return "566.14"

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        with self.read:
            self.memory_reads += 1
            self.read.notify_all()
        return type("Memory", (), {"total": 12 * GIB, "used": self.used, "free": 11 * GIB})()

    def wait_reads(self, n: int) -> None:
        with self.read:
            assert self.read.wait_for(lambda: self.memory_reads >= n, 30)


def probed(nvml: Any, env: dict[str, str] | None = None, **kw: Any) -> gpu.GpuProbe:
    probe = gpu.GpuProbe(nvml=nvml, env=env or {}, **kw)
    probe.start()
    assert probe.answered.wait(30)
    return probe


# --- the NVML probe -------------------------------------------------------------------------------


def test_nothing_is_claimed_before_a_probe_answers():
    facts = gpu.GpuProbe(nvml=FakeNvml()).facts()  # not started
    assert facts.gpu_probe == "pending" and facts.gpu_available is False
    assert facts.vram_total_mb is None and facts.gpu_name is None


@pytest.mark.skipif(nvml_here() != "absent", reason="NVIDIA's driver library is installed here")
def test_nvml_absent_here_means_no_nvidia_driver():
    """The real pynvml on this machine: no NVML library, so no CUDA GPU -- a real false."""
    probe = probed(None)
    facts = probe.facts()
    assert facts.gpu_probe == "none" and facts.gpu_available is False
    probe.torch_answered(False)  # torch agrees: still the driver's answer
    assert probe.facts().gpu_probe == "none"


def test_nvml_reports_the_gpu_and_refreshes_its_memory():
    nvml = FakeNvml()
    probe = probed(nvml, poll_seconds=0.01)
    try:
        facts = probe.facts()
        assert msgspec.structs.asdict(facts) == {
            "gpu_available": True,
            "gpu_probe": "nvml",
            "gpu_name": "NVIDIA GeForce RTX 4070",
            "gpu_driver": "566.14",
            "vram_used_mb": 1024,
            "vram_total_mb": 12 * 1024,
        }
        nvml.used = 3 * GIB
        reads = nvml.memory_reads
        nvml.wait_reads(reads + 2)  # one full refresh after the change
        assert probe.facts().vram_used_mb == 3 * 1024
        probe.torch_answered(False)  # a CPU build of torch on a GPU machine: NVML's fact stands
        assert probe.facts().gpu_available is True and probe.torch_cuda is False
    finally:
        probe.stop()


@pytest.mark.parametrize(
    ("visible", "expected_call", "available"),
    [
        (None, ("by_index", 0), True),
        ("1,0", ("by_index", 1), True),
        ("GPU-8e1c2a3b", ("by_uuid", "GPU-8e1c2a3b"), True),
        ("", None, False),
        ("-1", None, False),
    ],
)
def test_nvml_reads_the_device_cuda_calls_zero(visible, expected_call, available):
    nvml = FakeNvml()
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    probe = probed(nvml, env)
    probe.stop()
    lookups = [c for c in nvml.calls if c[0].startswith("by_")]
    assert lookups == ([expected_call] if expected_call else [])
    facts = probe.facts()
    assert facts.gpu_probe == "nvml" and facts.gpu_available is available


def test_a_machine_without_gpus_is_a_real_false_from_nvml():
    facts = probed(FakeNvml(count=0)).facts()
    assert facts.gpu_probe == "nvml" and facts.gpu_available is False


def test_a_failing_nvml_waits_for_torch_and_never_guesses():
    probe = probed(FakeNvml(init_error=FakeNvmlError("Driver Not Loaded")))
    assert probe.facts().gpu_probe == "pending"
    probe.torch_answered(True)
    assert probe.facts().gpu_probe == "torch" and probe.facts().gpu_available is True

    probe = probed(FakeNvml(init_error=FakeNvmlError("Driver Not Loaded")))
    probe.torch_answered(None)  # torch could not be imported either
    assert msgspec.structs.asdict(probe.facts()) == {
        "gpu_available": False,
        "gpu_probe": "failed",
        "gpu_name": None,
        "gpu_driver": None,
        "vram_used_mb": None,
        "vram_total_mb": None,
    }


def test_a_missing_pynvml_is_no_evidence_of_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    probe = probed(None)
    assert probe.facts().gpu_probe == "pending"
    probe.torch_answered(False)
    assert probe.facts().gpu_probe == "torch" and probe.facts().gpu_available is False


def test_torch_can_say_yes_where_nvml_is_missing():
    probe = probed(FakeNvml(init_error=FakeLibraryNotFound("NVML Shared Library Not Found")))
    assert probe.facts().gpu_probe == "none"
    probe.torch_answered(True)  # e.g. a container with libcuda but no libnvidia-ml
    assert probe.facts().gpu_probe == "torch" and probe.facts().gpu_available is True


@pytest.mark.parametrize(
    ("driver", "spills"),
    [("536.40", True), ("566.14", True), ("536.25", False), ("531.79", False), ("", False)],
)
def test_sysmem_fallback_drivers(driver, spills):
    probe = gpu.GpuProbe(nvml=FakeNvml())
    probe.driver = driver
    assert probe.sysmem_fallback_driver() is spills


# --- health through the dispatcher ----------------------------------------------------------------


class AppHealth(msgspec.Struct):
    """The app's serde contract for health (extra fields are ignored there too)."""

    status: str
    model_loaded: bool
    gpu_available: bool
    vram_used_mb: int | None = None
    vram_total_mb: int | None = None


def _health(engine: Engine) -> dict[str, Any]:
    out: list[bytes] = []
    Dispatcher(engine, out.append).handle_line(b'{"jsonrpc":"2.0","id":1,"method":"health"}')
    msgspec.json.decode(out[0], type=dict)
    result = json.loads(out[0])["result"]
    msgspec.convert(result, AppHealth, strict=True)  # the app's contract
    msgspec.convert(result, HealthResult, strict=True)  # ours, gpu_probe one of GPU_PROBES
    assert result["gpu_probe"] in GPU_PROBES
    return result


def test_health_before_torch_says_starting_and_pending_without_waiting():
    eng = Engine(Config(precision="fp32"), gpu=gpu.GpuProbe(nvml=FakeNvml()))
    h = _health(eng)  # nothing started: the old code waited here for torch
    assert h["state"] == "starting" and h["gpu_probe"] == "pending"
    assert h["gpu_available"] is False and h["device"] is None


def test_health_reports_nvml_facts_while_torch_still_imports():
    eng = Engine(Config(precision="fp32"), gpu=probed(FakeNvml()))
    eng.gpu.stop()
    h = _health(eng)
    assert h["state"] == "starting" and h["gpu_probe"] == "nvml" and h["gpu_available"] is True
    assert (h["vram_used_mb"], h["vram_total_mb"]) == (1024, 12 * 1024)
    assert h["gpu_name"] == "NVIDIA GeForce RTX 4070" and h["device"] is None
    eng.local._import_torch()  # what warm_up's thread runs: here torch is the CPU build
    h = _health(eng)
    assert h["state"] == "idle" and h["device"] == "cpu" and h["gpu_available"] is True


def test_health_with_device_cpu_knows_the_device_at_once():
    eng = Engine(Config(precision="fp32", device="cpu"), gpu=gpu.GpuProbe(nvml=FakeNvml()))
    assert _health(eng)["device"] == "cpu"


# --- a failed torch import ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (
            OSError(
                "[WinError 1455] The paging file is too small for this operation to complete. "
                'Error loading "C:\\app\\_internal\\torch\\lib\\cufft64_11.dll" or one of its '
                "dependencies."
            ),
            "page file",
        ),
        (
            OSError(
                "[WinError 126] The specified module could not be found. Error loading "
                '"C:\\app\\_internal\\torch\\lib\\c10.dll" or one of its dependencies.'
            ),
            "Visual C++ Redistributable",
        ),
        (ImportError("DLL load failed while importing _C: ..."), "Visual C++ Redistributable"),
        (ImportError("No module named 'torch'"), "reinstall the engine"),
    ],
)
def test_torch_import_failure_has_its_own_kind_and_hint(exc, needle):
    err = gpu.torch_import_error(exc)
    assert isinstance(err, ModelUnavailable) and err.code == -32004
    assert err.data["kind"] == "torch_import_failed"
    assert needle in err.data["hint"] and "restart the engine" in err.data["hint"]
    assert "VIBEVOICE_MODEL_PATH" not in err.message + err.data["hint"]
    assert str(exc) in err.message


def _fake_torch(tmp_path: Path, gate: Path) -> Path:
    """A ``torch`` package that blocks its import on a FIFO, then fails like Windows does."""
    pkg = tmp_path / "fake_torch" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import os\n"
        f"fd = os.open({str(gate)!r}, os.O_RDONLY)\n"
        "os.read(fd, 1)\n"
        "raise OSError('[WinError 1455] The paging file is too small for this operation to "
        'complete. Error loading "torch\\\\lib\\\\cufft64_11.dll" or one of its dependencies.\')\n'
    )
    return pkg.parent


def _wait_for_health(p: RpcProcess, pred: Any, timeout: float = 60) -> dict[str, Any]:
    """Ask health until ``pred`` holds (each answer is immediate; the deadline only guards)."""
    deadline = time.monotonic() + timeout
    while True:
        h = p.call("health", timeout=30)["result"]
        if pred(h):
            return h
        assert time.monotonic() < deadline, f"health never matched: {h}"
        time.sleep(0.05)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFO")
def test_health_answers_while_torch_import_hangs_then_reports_its_failure(tmp_path, tiny_model):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    fake = _fake_torch(tmp_path, gate)
    repo = str(Path(__file__).resolve().parent.parent)
    # A checkpoint is there (without one, transcribe answers model_not_found before torch).
    env = server_env(
        PYTHONPATH=os.pathsep.join([str(fake), repo]), VIBEVOICE_MODEL_PATH=str(tiny_model)
    )
    # NVML's answer here: no driver library ("none"), or a GPU or none visible ("nvml")
    here = nvml_here()
    if here == "failed":
        pytest.skip("NVML fails here: the probe's answer would wait for torch")
    probe = "none" if here == "absent" else "nvml"
    with RpcProcess(env=env) as p:
        h = p.call("health", timeout=30)["result"]
        # torch's import is blocked on the FIFO: health did not wait for it
        assert h["state"] == "starting" and h["device"] is None
        assert h["gpu_probe"] in ("pending", probe)
        assert h["gpu_available"] is (h["gpu_probe"] == probe and here == "gpu")
        h = _wait_for_health(p, lambda r: r["gpu_probe"] == probe)  # NVML answered
        assert h["gpu_available"] is (here == "gpu") and h["state"] == "starting"
        with open(gate, "wb") as g:  # let the import go on (and fail)
            g.write(b"x")
        h = _wait_for_health(p, lambda r: r["state"] == "idle")
        assert "paging file is too small" in h["last_error"] and h["gpu_probe"] == probe
        clip = Path(repo) / "vibevoice_rpc" / "data" / "two_speakers.opus"
        r = p.call("transcribe", {"audio_path": str(clip)}, timeout=60)
        err = r["error"]
        assert err["code"] == -32004 and err["data"]["kind"] == "torch_import_failed"
        assert "page file" in err["data"]["hint"]
        assert p.call("shutdown", timeout=30)["result"]["status"] == "ok"
        assert p.wait_exit(10) == 0


# --- the VRAM cap ---------------------------------------------------------------------------------


class FakeCuda:
    def __init__(self, free: int = 10 * GIB, total: int = 12 * GIB) -> None:
        self.free, self.total = free, total
        self.calls: list[tuple[Any, ...]] = []

    def mem_get_info(self) -> tuple[int, int]:
        self.calls.append(("mem_get_info",))
        return self.free, self.total

    def current_device(self) -> int:
        return 0

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.calls.append(("set_per_process_memory_fraction", fraction, device))


def test_memory_fraction_is_the_free_vram_less_a_reserve():
    assert gpu.memory_fraction(10 * GIB, 12 * GIB) == pytest.approx(
        (10 * GIB - gpu.VRAM_RESERVE_BYTES) / (12 * GIB)
    )
    assert gpu.memory_fraction(16 * GIB, 12 * GIB, reserve_bytes=0) == 1.0  # never above 1
    assert gpu.memory_fraction(100 * MIB, 12 * GIB) is None  # nothing left: no cap
    assert gpu.memory_fraction(1, 0) is None


def vram_plan(free: int | None, total: int | None) -> MemoryPlan:
    """A plan that saw ``free`` of ``total`` bytes of VRAM (its other figures play no part here)."""
    return MemoryPlan(
        precision="bf16",
        requested="bf16",
        device="cuda",
        lm_dtype="bf16",
        encoder_dtype="fp32",
        encoders_on_cpu_between_jobs=False,
        encoder_chunk_samples=1_440_000,
        weights_bytes={},
        window_seconds=60.0,
        tokens={},
        kv_cache_bytes=0,
        activation_margin_bytes=0,
        phase_bytes={},
        total_bytes=0,
        free_vram_bytes=free,
        total_vram_bytes=total,
        fits=True,
        cpu_offload=False,
        fitting_modes=[],
        max_window_seconds=60.0,
        notes=[],
        offload_max_memory_bytes=None,
        summary="",
    )


def test_cap_on_windows_uses_the_plans_free_vram():
    cuda = FakeCuda()
    plan = vram_plan(7 * GIB, 8 * GIB)
    fraction = gpu.cap_process_memory(plan, cuda=cuda, windows=True)
    assert fraction == pytest.approx((7 * GIB - gpu.VRAM_RESERVE_BYTES) / (8 * GIB))
    assert cuda.calls == [("set_per_process_memory_fraction", fraction, 0)]


def test_cap_asks_the_device_when_the_plan_has_no_figures():
    cuda = FakeCuda(free=5 * GIB, total=6 * GIB)
    fraction = gpu.cap_process_memory(vram_plan(None, None), cuda=cuda, windows=True)
    assert cuda.calls[0] == ("mem_get_info",)
    assert cuda.calls[1] == ("set_per_process_memory_fraction", fraction, 0)


def test_no_cap_off_windows_or_without_room():
    cuda = FakeCuda()
    assert gpu.cap_process_memory(None, cuda=cuda, windows=False) is None
    assert gpu.cap_process_memory(vram_plan(64 * MIB, 8 * GIB), cuda=cuda, windows=True) is None
    assert cuda.calls == []


def test_engine_caps_memory_after_a_cuda_load_only(monkeypatch):
    from vibevoice_rpc.model.backend import LocalRuntime
    from vibevoice_rpc.model.loader import LoadedModel

    capped: list[Any] = []
    monkeypatch.setattr(engine_mod, "cap_process_memory", lambda plan: capped.append(plan))
    plan = vram_plan(7 * GIB, 8 * GIB)

    class OnTwoDevices(LocalRuntime):  # loads nothing: first "on the CPU", then "on a GPU"
        devices = iter(["cpu", "cuda"])

        def load(self, precision: str, **_kw: Any) -> LoadedModel:
            return LoadedModel(
                model=object(),
                processor=object(),
                requested=precision,
                precision=precision,
                device=next(self.devices),
                source="/models/x",
                plan=plan,
                max_window_seconds=3600.0,
            )

    eng = Engine(
        Config(precision="fp16"), gpu=gpu.GpuProbe(nvml=FakeNvml()), runtime=OnTwoDevices()
    )
    job = Job(None, "preload", None, None, None)
    assert eng.local._load("fp16", job).device == "cpu" and capped == []
    assert eng.local._load("fp16", job).device == "cuda" and capped == [plan]


def test_a_job_waiting_for_torch_says_so_then_gets_the_import_error():
    eng = Engine(Config(precision="fp32"), gpu=gpu.GpuProbe(nvml=FakeNvml()))
    seen: list[Any] = []

    def failing_import() -> None:  # what _import_torch records when `import torch` raises
        eng.local._torch_error = OSError("[WinError 126] The specified module could not be found.")
        eng.local._torch_ready.set()

    eng.local._import_torch = failing_import  # type: ignore[method-assign]
    job = Job(7, "transcribe", None, None, lambda method, params: seen.append(params))
    with pytest.raises(ModelUnavailable) as info:
        eng.local._ensure_loaded("fp32", job)
    assert [(p.stage, p.message) for p in seen] == [
        ("loading_model", "waiting for PyTorch to load")
    ]
    assert info.value.data["kind"] == "torch_import_failed"
    assert "Visual C++" in info.value.data["hint"]
