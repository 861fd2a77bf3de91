"""The machine: which device, which dtype, mixed precision, and the GPUs' peak FLOP/s for the MFU."""

from __future__ import annotations

import contextlib
import re

from slm.cli import CLIError


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
        raise CLIError(f"--device {name} asked for, but CUDA is not available here; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CLIError("--device mps asked for, but MPS is not available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise CLIError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware and oneDNN will use it: x86 AVX512_BF16 or AMX,
    Arm BF16. oneDNN alone (torch.ops.mkldnn._is_mkldnn_bf16_supported) also says yes to plain AVX-512,
    where it emulates bfloat16 at no gain, so both checks must agree."""
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.10: cpuinfo's feature flags
        caps = torch.cpu.get_capabilities()
        return any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # older torch: x86 only
    return bool(check and check())


def pick_dtype(name: str, device: str) -> str:
    """'auto' means bfloat16 on a GPU that supports it, float16 on other GPUs, bfloat16 on a CPU with native
    bfloat16 (1.5x float32's training speed for the cpu preset on an AVX512_BF16 CPU, the same loss per
    step within noise: benchmarks/training.md), else float32."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device == "cpu" and cpu_has_native_bf16():
            return "bfloat16"
        return "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise CLIError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return name


def autocast(device: str, dtype: str):
    """Mixed-precision context for forward passes; a no-op for float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else device
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


# Dense (no sparsity) 16-bit tensor-core peak FLOP/s of one GPU at its boost clock, from NVIDIA's datasheets and
# architecture whitepapers: bf16 with fp32 accumulation, as torch's matmuls run; fp16 on GPUs without bf16 (T4,
# V100). The MFU denominator. Patterns are searched in torch.cuda.get_device_name(), first match wins.
GPU_PEAK_FLOPS = [
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL|H200.*NVL", 835e12),
    (r"H100|H200", 989e12),  # SXM, and the Grace Hopper GH200
    (r"A100", 312e12),  # SXM and PCIe alike
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),  # not the A10G (AWS's variant, slower tensor cores, no NVIDIA datasheet): unknown
    (r"RTX 4090(?! D)(?!.*Laptop)", 165e12),  # GeForce: half-rate fp32 accumulation (330 with fp16 accumulation)
    (r"RTX 3090(?! Ti)(?!.*Laptop)", 71e12),  # likewise (142 with fp16 accumulation)
    (r"\bT4\b", 65e12),  # fp16: Turing has no bf16
    (r"V100.*PCIE", 112e12),  # fp16
    (r"V100", 125e12),  # fp16, SXM2
]


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called `name` (torch.cuda.get_device_name()); None if not known."""
    for pattern, peak in GPU_PEAK_FLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return peak
    return None
