"""The machine: which device, what it is (Machine: name, memory, capability, CPU flags), which
dtype, mixed precision, whether torch.compile can run, and the GPUs' peak FLOP/s for the MFU.
slm/plan.py turns these facts into a run's plan; tests fake a Machine for the GPUs no one here
has."""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import sys
from dataclasses import dataclass, field

from slm.cli import CLIError, UsageError


def pick_device(name: str = "auto") -> str:
    """'auto' means cuda if available, then mps, then cpu. Anything else is checked and returned."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(
            f"--device {name} asked for, but CUDA is not available here; use --device cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise CLIError("--device mps asked for, but MPS is not available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware and oneDNN will use it: x86 AVX512_BF16 or
    AMX, Arm BF16. oneDNN alone (torch.ops.mkldnn._is_mkldnn_bf16_supported) also says yes to
    plain AVX-512, where it emulates bfloat16 at no gain, so both checks must agree."""
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.10: cpuinfo's feature flags
        caps = torch.cpu.get_capabilities()
        return any(
            caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
        )
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # older torch: x86 only
    return bool(check and check())


@dataclass(frozen=True)
class Machine:
    """The facts about a device that choose a run's dtype, micro-batch and compile. detect_machine
    reads them; tests build them by hand for a T4, an RTX 3060, an A100, an H100, an Apple GPU or
    a CPU."""

    device: str  # "cpu", "cuda", "cuda:N" or "mps"
    name: str  # the GPU's name, or the CPU's model name
    # CUDA compute capability (8.0 and up: native bfloat16)
    capability: tuple[int, int] | None = None
    total_memory: int | None = None  # bytes (GPU; MPS: the recommended working set; CPU: None)
    free_memory: int | None = None  # bytes free now (CUDA), else None
    cpu_flags: frozenset[str] = field(default_factory=frozenset)  # from /proc/cpuinfo (CPU)
    compile_problem: str | None = None  # why torch.compile cannot run here; None when it can

    @property
    def kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else self.device

    @property
    def native_bf16(self) -> bool:
        """bfloat16 in hardware: CUDA capability 8.0+ (Ampere on), or a CPU with AVX512_BF16, AMX or
        Arm BF16. torch.cuda.is_bf16_supported() also says yes on a T4 (emulated bfloat16, slower
        than float16)."""
        if self.kind == "cuda":
            return self.capability is not None and self.capability >= (8, 0)
        return self.kind == "cpu" and bool(self.cpu_flags & CPU_BF16_FLAGS)

    def describe(self) -> str:
        if self.kind == "cpu":
            isa = (
                "native bf16"
                if self.native_bf16
                else (
                    "AVX-512, no bf16"
                    if "avx512f" in self.cpu_flags
                    else "AVX2, no bf16"
                    if "avx2" in self.cpu_flags
                    else "no bf16"
                )
            )
            return f"CPU {self.name} ({isa})"
        memory = f", {self.total_memory / 2**30:.0f} GiB" if self.total_memory else ""
        sm = f", sm{self.capability[0]}{self.capability[1]}" if self.capability else ""
        return f"{self.name}{sm}{memory}"


# /proc/cpuinfo (x86) / Features (Arm)
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo on Linux; torch's cpuinfo elsewhere (torch 2.10+)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    import torch

    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return frozenset(k for k, v in caps.items() if v is True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def detect_machine(device: str) -> Machine:
    """The Machine for device (as pick_device returns it), read from torch and the OS."""
    import torch

    kind = "cuda" if device.startswith("cuda") else device
    if kind == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return Machine(
            device=device,
            name=torch.cuda.get_device_name(device),
            capability=tuple(torch.cuda.get_device_capability(device)),
            total_memory=total,
            free_memory=free,
            compile_problem=compile_problem(device),
        )
    if kind == "mps":
        total = (
            torch.mps.recommended_max_memory()
            if hasattr(torch.mps, "recommended_max_memory")
            else None
        )
        return Machine(
            device=device,
            name="Apple GPU (MPS)",
            total_memory=total,
            compile_problem=compile_problem(device),
        )
    # torch's oneDNN must be able to use the flag, too
    flags, native = cpu_flags(), cpu_has_native_bf16()
    flags = (
        (flags | {"bf16"})
        if native and not flags & CPU_BF16_FLAGS
        else flags
        if native
        else flags - CPU_BF16_FLAGS
    )
    return Machine(
        device=device, name=cpu_name(), cpu_flags=flags, compile_problem=compile_problem(device)
    )


def auto_dtype(machine: Machine) -> str:
    """bfloat16 where it is native (faster than float32 at the same loss per step: benchmarks/
    training.md, "bfloat16 and the chunked head loss"); float16 (with GradScaler) on older CUDA
    GPUs; float32 on CPUs without it and on Apple GPUs (MPS autocast and GradScaler are not proven
    there)."""
    if machine.native_bf16:
        return "bfloat16"
    return "float16" if machine.kind == "cuda" else "float32"


def pick_dtype(name: str, device: str) -> str:
    """'auto' means auto_dtype of this device; otherwise the name, checked."""
    if name == "auto":
        return auto_dtype(detect_machine(device))
    if name not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return name


def autocast(device: str, dtype: str):
    """Mixed-precision context for forward passes; a no-op for float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else device
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


# Dense (no sparsity) 16-bit tensor-core peak FLOP/s of one GPU at its boost clock, from NVIDIA's
# datasheets and architecture whitepapers: bf16 with fp32 accumulation, as torch's matmuls run; fp16
# on GPUs without bf16 (T4, V100). The MFU denominator. Patterns are searched in
# torch.cuda.get_device_name(), first match wins.
GPU_PEAK_FLOPS = [
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL|H200.*NVL", 835e12),
    (r"H100|H200", 989e12),  # SXM, and the Grace Hopper GH200
    (r"A100", 312e12),  # SXM and PCIe alike
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
    # not the A10G (AWS's variant, slower tensor cores, no NVIDIA datasheet): unknown
    (r"\bA10\b", 125e12),
    # GeForce: half-rate fp32 accumulation (330 with fp16 accumulation)
    (r"RTX 4090(?! D)(?!.*Laptop)", 165e12),
    (r"RTX 3090(?! Ti)(?!.*Laptop)", 71e12),  # likewise (142 with fp16 accumulation)
    (r"\bT4\b", 65e12),  # fp16: Turing has no bf16
    (r"V100.*PCIE", 112e12),  # fp16
    (r"V100", 125e12),  # fp16, SXM2
]


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called `name` (torch.cuda.get_device_name()); None if
    not known.
    """
    for pattern, peak in GPU_PEAK_FLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return peak
    return None


def synchronize(device: str) -> None:
    """Wait until the device has done the work queued on it. CUDA and MPS run kernels
    asynchronously: a clock read right after a pass times how long it took to queue the kernels,
    not to run them. A CPU queues nothing."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def fork_rng(device: str):
    """A context whose exit puts back the global random generators the device draws from (the CPU's,
    and the CUDA or MPS one of the device): dropout inside it leaves the run's draws as they
    were."""
    import torch

    kind = device.split(":")[0]
    if kind == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=kind)


def fused_adamw(device: str) -> bool:
    """AdamW's fused kernel: one pass over each parameter instead of a dozen. CUDA has it; the CPU
    since torch 2.4 (timed: benchmarks/machines.md, "Fused AdamW on a CPU")."""
    import torch

    return device.startswith("cuda") or (device == "cpu" and torch.__version__ >= (2, 4))


def keep_freed_memory() -> None:
    """Let glibc reuse freed heap memory for big tensors instead of mapping fresh zeroed pages each
    step.

    The (batch * block_size, vocab) logits and their gradients are 100+ MB; by default glibc
    hands each such block back to the OS when freed and page-faults a new one on the next step.
    Raising the mmap and trim thresholds keeps those pages mapped from step to step (the gain:
    benchmarks/machines.md, "The head's (N, V) buffer kept"). Where this cannot act (macOS,
    Windows, musl), slm.head_loss keeps its (N, V) buffer from step to step itself.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot work for this device here, or None when it can: it needs Triton on a
    CUDA GPU (not shipped for Windows), a C++ compiler on a CPU, and has no stable backend for
    Apple's MPS."""
    import torch
    import torch._dynamo
    from torch.utils._triton import has_triton

    if not torch._dynamo.is_dynamo_supported():
        return (
            f"torch {torch.__version__} does not support torch.compile with Python "
            f"{sys.version.split()[0]} on {sys.platform}"
        )
    if (
        device.startswith("cuda")
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) < (7, 0)
    ):
        return "torch.compile's Triton kernels need a GPU of compute capability 7.0 or later"
    if device.startswith("cuda") and not has_triton():
        return (
            "torch.compile needs Triton for CUDA GPUs and it is not installed "
            "(Windows: pip install triton-windows)"
        )
    if device == "mps":
        return f"torch.compile has no stable backend for MPS in torch {torch.__version__}"
    if device == "cpu" and not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++", "cl")):
        return (
            "torch.compile on a CPU needs a C++ compiler (g++, clang++ or MSVC's cl) "
            "and none is on PATH"
        )
    return None
