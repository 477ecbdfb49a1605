"""A session: one start or resume of a run, its Accelerator, and what it ran on.

``make_accelerator`` builds the one Accelerator of a run from the ``accelerate launch``
config; the checks turn launch mistakes into one-line errors before any work; and
``record_session`` appends to ``run.json`` what each start or resume ran on (precision,
processes, device, CPU vendor and instruction set, versions), which ``evaluate`` uses to
reproduce the recorded accuracy in the same precision and to know whether its kernels were
the same.
"""

from __future__ import annotations

import os
import platform
import re
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

from resnet_ocp.atomic import read_json, write_json
from resnet_ocp.config import Config
from resnet_ocp.errors import RunError


def has_accelerator_device() -> bool:
    """Whether torch sees a GPU (or other accelerator) to train on; ``torch.accelerator`` is torch 2.6+."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def make_accelerator(cfg: Config) -> Accelerator:
    """The Accelerator of a run. Mixed precision and the process layout come from the
    ``accelerate launch`` config; on a machine without an accelerator device it is told
    ``cpu=True`` so that a torchrun-style launch of N processes forms one gloo group.

    Args:
        cfg: run configuration (gradient accumulation, global batch, process-group timeout).
    """
    try:
        accelerator = Accelerator(
            cpu=not has_accelerator_device(),
            gradient_accumulation_steps=cfg.grad_accum,
            step_scheduler_with_optimizer=False,
            log_with="tensorboard",
            # Placeholder: the run directory is agreed across processes later (rundir.open_run_dir).
            project_config=ProjectConfiguration(project_dir=".", logging_dir="."),
            # A process that dies leaves the others in a collective: fail after this, not torch's 30 minutes.
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.process_group_timeout))],
        )
    except ValueError as exc:  # e.g. WORLD_SIZE set without MASTER_ADDR: a launch problem
        raise RunError(
            f"Accelerate could not set up the processes: {str(exc).splitlines()[0]}; "
            "launch with accelerate launch --config_file accelerate_configs/<config>.yaml"
        ) from exc
    check_world_size(accelerator.num_processes, os.environ)
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":
        # Accelerate makes no grad scaler on a CPU, so fp16 would train unscaled (gradients underflow).
        raise RunError("fp16 mixed precision on a CPU trains without loss scaling; use --mixed_precision bf16 on a CPU "
                       "with native bf16 (accelerate_configs/cpu.yaml) or no (cpu_fp32.yaml)")
    warning = slow_precision_warning(accelerator.device.type, accelerator.mixed_precision)
    if warning:
        accelerator.print(warning)
    if cfg.batch_size % (accelerator.num_processes * cfg.grad_accum):
        raise RunError(
            f"--batch-size {cfg.batch_size} is not divisible by {accelerator.num_processes} processes x "
            f"--grad-accum {cfg.grad_accum}; choose a multiple of {accelerator.num_processes * cfg.grad_accum}"
        )
    return accelerator


def slow_precision_warning(device_type: str, mixed_precision: str, bf16_native: bool | None = None) -> str | None:
    """A warning when bf16 autocast is asked for on a CPU that only emulates bf16: there it is
    an order of magnitude slower than fp32 (docs/performance.md), which turns a 2-hour run into
    days, so the user hears about it at the start, not after an epoch.

    Args:
        device_type: the training device's type (``cpu``, ``cuda``...).
        mixed_precision: Accelerate's mixed precision (``no``, ``fp16``, ``bf16``).
        bf16_native: whether the CPU has native bf16 (default: ask oneDNN).
    """
    if device_type != "cpu" or mixed_precision != "bf16":
        return None
    if bf16_native is None:
        bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if bf16_native:
        return None
    return (
        f"WARNING: bf16 autocast on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}): an order of "
        "magnitude slower than fp32; use --config_file accelerate_configs/cpu_fp32.yaml"
    )


def recommended_accelerate_config(cuda_capability: tuple[int, int] | None, cpu_bf16: bool) -> str:
    """The ``accelerate_configs/`` file for one process on a machine: bf16 on GPUs of compute
    capability 8.0 or more (Ampere and newer: A100, L4, H100), fp16 with loss scaling on older ones
    (T4 is 7.5, V100 7.0: no bf16 tensor cores), and without a GPU bf16 where the CPU has it
    natively, else fp32 (emulated bf16 ran 12x slower, docs/performance.md).

    Args:
        cuda_capability: the GPU's compute capability (``torch.cuda.get_device_capability()``), None without one.
        cpu_bf16: whether the CPU has native bf16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``).
    """
    if cuda_capability is not None:
        return "accelerate_configs/single_gpu_bf16.yaml" if tuple(cuda_capability) >= (8, 0) else "accelerate_configs/single_gpu_fp16.yaml"
    return "accelerate_configs/cpu.yaml" if cpu_bf16 else "accelerate_configs/cpu_fp32.yaml"


# One-process config files by (on a GPU, mixed precision); each file's own values are these.
_ONE_PROCESS_CONFIGS = {(False, "bf16"): "cpu", (False, "no"): "cpu_fp32", (True, "no"): "single_gpu",
                        (True, "bf16"): "single_gpu_bf16", (True, "fp16"): "single_gpu_fp16"}


def launch_options(session: dict) -> str:
    """The ``accelerate launch`` options that give a recorded session's precision and processes.

    Args:
        session: an entry of ``run.json`` (``mixed_precision``, ``num_processes``, ``device``).
    """
    precision, processes = session["mixed_precision"], session["num_processes"]
    gpu = not str(session["device"]).startswith("cpu")
    if processes == 1 and (gpu, precision) in _ONE_PROCESS_CONFIGS:
        return f"--config_file accelerate_configs/{_ONE_PROCESS_CONFIGS[gpu, precision]}.yaml"
    # Otherwise a file of the right kind, its process count and precision overridden by the recorded ones.
    name = ("multi_gpu" if gpu else "cpu_multi") if processes > 1 else ("single_gpu" if gpu else "cpu_fp32")
    return f"--config_file accelerate_configs/{name}.yaml --num_processes {processes} --mixed_precision {precision}"


def check_world_size(num_processes: int, environ) -> None:
    """Refuse a process that the launcher counted as one of several but Accelerate sees alone:
    it would train on all the data into the same run directory as its siblings.

    Args:
        num_processes: processes the Accelerator sees.
        environ: the environment (``os.environ``) as set by the launcher.
    """
    world = int(environ.get("WORLD_SIZE", "1"))
    if world > 1 and num_processes == 1:
        raise RunError(
            f"the environment says WORLD_SIZE={world} but Accelerate sees 1 process, so each process would train alone "
            "on all the data; on CPUs launch with --config_file accelerate_configs/cpu_multi.yaml"
        )


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_identity() -> dict:
    """The CPU facts that decide which bf16 kernels run: vendor, model name, torch's capability
    level, and the native bf16 instructions (AMX on Intel Sapphire Rapids, AVX-512 BF16 on AMD
    Zen 4); two CPUs agreeing on all of them run the same oneDNN kernels."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu_vendor": info.get("vendor_id", platform.machine()),
        "cpu_name": info.get("model name", platform.processor() or platform.machine()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": sorted(flags & {"amx_bf16", "avx512_bf16"}),
    }


def same_cpu_kernels(recorded: dict, here: dict | None = None) -> bool:
    """Whether a ``run.json`` session ran on a CPU that runs the same oneDNN kernels as this
    one (vendor, capability level and native bf16 instructions agree), so that its recorded
    outputs can be reproduced bit for bit here. Sessions recorded without ``cpu_vendor`` get
    it from their CPU's name.

    Args:
        recorded: a session entry of ``run.json``.
        here: ``cpu_identity()`` of the machine to compare with (default: this one).
    """
    here = here or cpu_identity()
    name = recorded.get("device_name", "")
    vendor = recorded.get("cpu_vendor") or ("AuthenticAMD" if "AMD" in name else "GenuineIntel" if "Intel" in name else name)
    same = vendor == here["cpu_vendor"] and recorded.get("cpu_capability") == here["cpu_capability"]
    return same and ("cpu_bf16" not in recorded or recorded["cpu_bf16"] == here["cpu_bf16"])


def environment(accelerator: Accelerator) -> dict:
    """What this process group runs on: precision, processes, device, CPU, library versions.

    Args:
        accelerator: the run's Accelerator.
    """
    import accelerate

    device = accelerator.device
    cpu = cpu_identity()
    return {
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu["cpu_name"],
        **cpu,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def record_session(accelerator: Accelerator, run_dir: Path) -> dict:
    """Append this start (or resume) to ``run_dir/run.json`` (main process) and return its entry.

    A run resumed on other hardware has several sessions; the last one's precision is the one
    its final test accuracy was measured in.

    Args:
        accelerator: the run's Accelerator.
        run_dir: the run directory.
    """
    from accelerate.utils import gather_object

    # Each process's machine: SLURM's node name where there is one (its nodes can share a host), else the host name.
    machines = gather_object([os.environ.get("SLURMD_NODENAME") or platform.node()])
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **environment(accelerator),
             "machines": sorted(set(machines)), "num_machines": len(set(machines))}
    if accelerator.is_main_process:
        path = Path(run_dir) / "run.json"
        sessions = read_json(path)["sessions"] if path.exists() else []
        write_json(path, {"sessions": sessions + [entry]})
    return entry


def machine_words(session: dict) -> tuple[str, str]:
    """Where and in what precision a session ran, in words: ``("AMD EPYC (AVX2)", "fp32")``.

    Args:
        session: an entry of ``run.json``.
    """
    name, kind = session["device_name"], session.get("cpu_capability", session["device"])
    if session["device"] == "cpu":
        # /proc/cpuinfo says "Intel(R) Xeon(R) Processor"; AMX is the bf16 unit that sets the speed there.
        name = " ".join(re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU @.*", " ", name).split())
        kind = "AMX" if "amx_bf16" in session.get("cpu_bf16", ()) else kind
    return f"{name} ({kind})", {"no": "fp32"}.get(session["mixed_precision"], session["mixed_precision"])


def last_session(run_dir: str | Path) -> dict | None:
    """The last entry of ``run_dir/run.json``, or None for a run recorded before run.json existed.

    Args:
        run_dir: the run directory.
    """
    path = Path(run_dir) / "run.json"
    return read_json(path)["sessions"][-1] if path.exists() else None
