"""The per-machine plan on machines no one here has: a T4, an RTX 3060, an A100 40 GB, an H100 80
GB, an Apple GPU, and the two kinds of CPU. Each is a faked slm.hardware.Machine (or faked
torch/OS facts that detect_machine reads); each plan must pick the right dtype, a micro-batch
that fits its memory, the same sequences per optimizer step as the preset, compile where it runs,
and GradScaler with float16."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import training
from config import PRESETS, GPTConfig
from slm import hardware, plan
from slm.hardware import Machine, detect_machine
from slm.plan import make_plan, training_memory

GIB = 2**30
GPU_MC, GPU_TC = PRESETS["gpu"].model, PRESETS["gpu"].train
CPU_MC, CPU_TC = PRESETS["cpu"].model, PRESETS["cpu"].train
SEQUENCES = GPU_TC.batch_size * GPU_TC.grad_accum  # per optimizer step: what every GPU must keep

MACHINES = {  # name: (Machine, dtype, scaler, compile, expected micro-batch)
    "T4": (
        Machine("cuda", "Tesla T4", (7, 5), 15 * GIB, 15 * GIB - (300 << 20)),
        "float16",
        True,
        True,
        32,
    ),
    "RTX 3060": (
        Machine("cuda", "NVIDIA GeForce RTX 3060", (8, 6), 12 * GIB, 11 * GIB),
        "bfloat16",
        False,
        True,
        16,
    ),
    "A100 40GB": (
        Machine("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * GIB, 39 * GIB),
        "bfloat16",
        False,
        True,
        64,
    ),
    "H100 80GB": (
        Machine("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 80 * GIB, 79 * GIB),
        "bfloat16",
        False,
        True,
        128,
    ),
    "Apple MPS": (
        Machine(
            "mps",
            "Apple GPU (MPS)",
            None,
            16 * GIB,
            None,
            compile_problem="torch.compile has no stable backend for MPS",
        ),
        "float32",
        False,
        False,
        16,
    ),
}


@pytest.mark.parametrize("name", list(MACHINES))
def test_each_gpu_gets_a_plan_that_fits_and_keeps_the_tokens_per_step(name):
    machine, dtype, scaler, compiled, micro = MACHINES[name]
    p = make_plan(machine, GPU_MC, GPU_TC)
    assert (p.dtype, p.grad_scaler, p.compile, p.batch_size) == (dtype, scaler, compiled, micro)
    assert p.batch_size * p.grad_accum == SEQUENCES, (
        "the schedule sees the same tokens per optimizer step"
    )
    memory = machine.free_memory or machine.total_memory
    assert training_memory(GPU_MC, p.batch_size, p.dtype, p.compile) <= memory * plan.USABLE_MEMORY
    # the next larger divisor would not fit: the largest that does was taken
    if p.batch_size < SEQUENCES:
        bigger = min(d for d in range(p.batch_size + 1, SEQUENCES + 1) if SEQUENCES % d == 0)
        assert (
            training_memory(GPU_MC, bigger, p.dtype, p.compile)
            > memory * plan.USABLE_MEMORY - plan.RESERVED_BYTES
        )
    line = p.line(machine)
    assert (
        line.startswith(f"plan for {machine.name}")
        and f"micro-batch {p.batch_size} x {p.grad_accum}" in line
    )
    assert ("GradScaler" in line) == scaler and f"compile {'on' if compiled else 'off'}" in line


def test_the_memory_estimate_matches_the_peaks_measured_on_an_h100():
    # benchmarks/training.md: the default model at 64 x 512 in bf16 peaked at 27.1 GiB eager, 17.9
    # GiB compiled
    assert training_memory(GPTConfig(), 64, "bfloat16", compiled=False) / GIB == pytest.approx(
        27.1, rel=0.08
    )
    assert training_memory(GPTConfig(), 64, "bfloat16", compiled=True) / GIB == pytest.approx(
        17.9, rel=0.08
    )


@pytest.mark.parametrize(
    "flags,dtype",
    [
        ({"avx2", "fma"}, "float32"),
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ({"avx2", "avx512f"}, "float32"),
        ({"amx_bf16", "avx512f"}, "bfloat16"),
    ],
)
def test_cpus_get_bfloat16_only_where_it_is_native(flags, dtype):
    cpu = Machine("cpu", "Some CPU", cpu_flags=frozenset(flags))
    p = make_plan(cpu, CPU_MC, CPU_TC)
    assert p.dtype == dtype and not p.grad_scaler
    assert (p.batch_size, p.grad_accum) == (CPU_TC.batch_size, CPU_TC.grad_accum), (
        "a CPU keeps the preset's batch"
    )
    assert p.compile is CPU_TC.compile


def test_flags_given_by_hand_win_over_the_plan():
    t4 = MACHINES["T4"][0]
    tc = replace(GPU_TC, dtype="bfloat16", batch_size=8, grad_accum=16, compile=False)
    p = make_plan(t4, GPU_MC, tc, given={"dtype", "batch_size", "grad_accum", "compile"})
    assert (p.dtype, p.batch_size, p.grad_accum, p.compile) == ("bfloat16", 8, 16, False)
    assert "micro-batch as given" in p.line(t4)
    # a preset's own dtype (smoke: float32) is kept as well; only "auto" is the plan's to choose
    assert make_plan(t4, GPU_MC, replace(GPU_TC, dtype="float32")).dtype == "float32"


def test_compile_is_off_where_it_cannot_run():
    old = Machine(
        "cuda",
        "Tesla P100",
        (6, 0),
        16 * GIB,
        16 * GIB,
        compile_problem="torch.compile's Triton kernels need a GPU of compute capability 7.0 or "
        "later",
    )
    p = make_plan(old, GPU_MC, GPU_TC)
    assert not p.compile and p.dtype == "float16"


def test_a_model_too_big_for_the_gpu_says_so():
    tiny = Machine("cuda", "Tiny GPU", (8, 0), 1 * GIB, 1 * GIB)
    p = make_plan(tiny, GPU_MC, GPU_TC)
    assert p.batch_size == 1 and p.grad_accum == SEQUENCES and "may not fit" in p.line(tiny)


def test_detect_machine_reads_the_gpu_facts_torch_gives(monkeypatch):
    # a T4 as torch sees it: is_bf16_supported() says True (emulated), capability 7.5 says it is not
    # native
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (14 * GIB, 15 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(hardware, "compile_problem", lambda device: None)
    m = detect_machine("cuda")
    assert (m.name, m.capability, m.total_memory, m.free_memory) == (
        "Tesla T4",
        (7, 5),
        15 * GIB,
        14 * GIB,
    )
    assert not m.native_bf16 and hardware.auto_dtype(m) == "float16"
    assert hardware.pick_dtype("auto", "cuda") == "float16"


@pytest.mark.parametrize(
    "flags,native,describes",
    [
        ("fpu avx2 fma", False, "AVX2, no bf16"),
        ("fpu avx2 avx512f avx512_bf16", True, "native bf16"),
    ],
)
def test_detect_machine_reads_the_cpu_flags(monkeypatch, tmp_path, flags, native, describes):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags.split()))
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    m = detect_machine("cpu")
    assert m.native_bf16 is native and describes in m.describe()
    assert hardware.pick_dtype("auto", "cpu") == ("bfloat16" if native else "float32")


def test_training_prints_the_plan_of_the_machine_in_one_line(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    avx2 = Machine("cpu", "AMD EPYC 7B13", cpu_flags=frozenset({"avx2", "fma"}))
    monkeypatch.setattr(training, "detect_machine", lambda device: avx2)
    mc = PRESETS["smoke"].model
    tc = replace(
        PRESETS["smoke"].train,
        data_dir=str(tiny_data_dir),
        out_dir=str(tmp_path / "out"),
        dtype="auto",
        max_iters=2,
        eval_interval=2,
        eval_iters=1,
        batch_size=2,
        warmup_iters=1,
    )
    s = training.train(mc, tc, progress=False)
    plans = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan for ")]
    assert plans == [
        "plan for CPU AMD EPYC 7B13 (AVX2, no bf16): float32, micro-batch 2 x 1 accumulation, "
        "compile off"
    ]
    assert s["stopped"] == "done"


def test_a_micro_batch_that_runs_out_of_memory_in_the_trial_step_is_halved_keeping_the_sequences():
    p = make_plan(MACHINES["A100 40GB"][0], GPU_MC, GPU_TC)
    tried, said = [], []

    def trial(batch_size):  # this GPU holds 16 sequences, not the 64 the estimate allowed
        tried.append(batch_size)
        if batch_size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.13 GiB")

    fitted = plan.shrink_until_it_fits(p, trial, said.append, given=set())
    assert tried == [64, 32, 16] and (fitted.batch_size, fitted.grad_accum) == (16, 8)
    assert said[-1] == (
        "note: a micro-batch of 32 ran out of memory in a trial step; using 16 x 8 accumulation "
        "(the same 128 sequences per optimizer step)"
    )
    # a micro-batch given by hand is the user's to see fail
    with pytest.raises(torch.cuda.OutOfMemoryError):
        plan.shrink_until_it_fits(p, trial, said.append, given={"batch_size"})
    cpu_oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
    )
    assert plan.is_out_of_memory(cpu_oom) and not plan.is_out_of_memory(
        RuntimeError("shape mismatch")
    )


def test_a_budget_run_makes_no_float64_tensor_on_its_device_as_apples_mps_has_none(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    # On MPS, torch.zeros(..., dtype=torch.float64, device="mps") and an MPS tensor's .double()
    # raise: a Mac's `make run` (the cpu preset on MPS, under its time budget) stopped at the step-0
    # evaluation. This CPU has no MPS, so the test catches what a run would make on its device: a
    # float64 tensor made with a device named, or any .double(), while a run calibrates its recipe,
    # evaluates, and fixes its step count.
    from test_recipe import FLAGS, run_main

    made = []

    def tracing(name: str):
        real = getattr(torch, name)

        def traced(*args, **kwargs):
            if kwargs.get("dtype") is torch.float64 and kwargs.get("device") is not None:
                made.append(name)
            return real(*args, **kwargs)

        return traced

    for name in ("zeros", "ones", "full", "empty", "tensor", "as_tensor"):
        monkeypatch.setattr(torch, name, tracing(name))
    double = torch.Tensor.double
    monkeypatch.setattr(
        torch.Tensor,
        "double",
        lambda self, *a, **k: (made.append("double"), double(self, *a, **k))[1],
    )
    s, lines = run_main(
        monkeypatch, capsys, [*FLAGS, "--data-dir", str(tiny_data_dir), "--out-dir", str(tmp_path)]
    )
    assert (
        s["stopped"] == "done"
        and s["schedule"]["fixed_by"] == "--max-minutes"
        and len(s["losses"]) > 5
    )
    assert any(line.startswith("recipe: ") for line in lines) and any(
        line.startswith("step 0: ") for line in lines
    )
    assert made == []


def test_synchronize_waits_for_the_accelerator_the_calibration_times(
    tiny_data_dir, tmp_path, monkeypatch
):
    # CUDA and MPS queue kernels and return at once: a clock read after a pass must wait for them.
    waited = []
    monkeypatch.setattr(
        torch.cuda, "synchronize", lambda device=None: waited.append(("cuda", device))
    )
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append(("mps",)))
    for device in ("cuda:1", "mps", "cpu"):
        hardware.synchronize(device)
    assert waited == [("cuda", "cuda:1"), ("mps",)]
    # every trial pass ends waiting on the run's device
    passes = []
    monkeypatch.setattr(plan, "synchronize", lambda device: passes.append(device))
    mc = PRESETS["smoke"].model
    tc = replace(
        PRESETS["smoke"].train,
        data_dir=str(tiny_data_dir),
        out_dir=str(tmp_path / "out"),
        max_iters=1,
        eval_interval=1,
        eval_iters=1,
        batch_size=2,
        warmup_iters=1,
    )
    trial = training.trial_pass(mc, tc, "cpu", compiled=False)
    trial(2, "float32")
    trial(2, "float32", parts=2)
    assert passes == ["cpu", "cpu"]


def fake_generator(monkeypatch, module, device_default):
    """A stand-in for an accelerator's global generator (this CPU has none): its state is one
    tensor.
    """
    state = {"now": torch.tensor([1], dtype=torch.uint8)}
    monkeypatch.setattr(module, "get_rng_state", lambda device=device_default: state["now"].clone())
    monkeypatch.setattr(
        module, "set_rng_state", lambda new, device=device_default: state.update(now=new.clone())
    )
    return state


@pytest.mark.parametrize("device, module", [("mps", "mps"), ("cuda:1", "cuda")])
def test_the_calibrations_dropout_leaves_the_devices_generator_as_it_was(
    device, module, monkeypatch
):
    # A trial pass draws dropout masks from the device's generator; a run's own draws must not move.
    # On a Mac the calibration forked only the CPU's generator, so the run after it was not the one
    # its flags name.
    state = fake_generator(monkeypatch, getattr(torch, module), device.split(":")[0])
    cpu_before = torch.get_rng_state()
    with hardware.fork_rng(device):
        state["now"] = torch.tensor([9], dtype=torch.uint8)  # what dropout's draws would do
        torch.rand(3)
    assert state["now"].tolist() == [1] and torch.equal(torch.get_rng_state(), cpu_before)


def test_each_trial_pass_runs_inside_its_devices_fork(tiny_data_dir, tmp_path, monkeypatch):
    forked = []
    real = plan.fork_rng
    monkeypatch.setattr(plan, "fork_rng", lambda device: (forked.append(device), real(device))[1])
    mc = PRESETS["smoke"].model
    tc = replace(
        PRESETS["smoke"].train,
        data_dir=str(tiny_data_dir),
        out_dir=str(tmp_path / "out"),
        max_iters=1,
        eval_interval=1,
        eval_iters=1,
        batch_size=2,
        warmup_iters=1,
    )
    trial = training.trial_pass(mc, tc, "cpu", compiled=False)
    before = torch.get_rng_state()
    trial(2, "float32")
    assert forked == ["cpu"] and torch.equal(torch.get_rng_state(), before)


def test_a_checkpoint_keeps_an_apple_gpus_generator_so_a_resumed_run_draws_the_same_dropout(
    monkeypatch, tmp_path
):
    from slm.checkpoint import rng_state, set_rng_state

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    state = fake_generator(monkeypatch, torch.mps, "mps")
    state["now"] = torch.tensor([7, 7], dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    torch.save(rng_state(gen), tmp_path / "rng.pt")
    saved = torch.load(tmp_path / "rng.pt", weights_only=True)
    state["now"] = torch.tensor([0], dtype=torch.uint8)  # the steps after the save drew from it
    set_rng_state(saved, gen)
    assert state["now"].tolist() == [7, 7]
