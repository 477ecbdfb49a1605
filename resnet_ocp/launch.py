"""How a run's processes and precision are set up, checked and recorded.

``make_accelerator`` builds the one Accelerator of a run from the ``accelerate launch``
config; the checks turn launch mistakes into one-line errors before any work; and
``record_session`` appends to ``run.json`` what each start or resume ran on (precision,
processes, device, versions), which ``evaluate`` uses to reproduce the recorded accuracy in
the same precision.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from resnet_ocp.checkpoint import read_json, write_json
from resnet_ocp.config import Config


class RunError(RuntimeError):
    """A run cannot start or go on; the message is one line saying what to do."""


def _has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def make_accelerator(cfg: Config) -> Accelerator:
    """The Accelerator of a run. Mixed precision and the process layout come from the
    ``accelerate launch`` config; on a machine without an accelerator device it is told
    ``cpu=True`` so that a torchrun-style launch of N processes forms one gloo group."""
    try:
        accelerator = Accelerator(
            cpu=not _has_accelerator_device(),
            gradient_accumulation_steps=cfg.grad_accum,
            step_scheduler_with_optimizer=False,
            log_with="tensorboard",
            # Placeholder: the run directory is agreed across processes later (trainer._run_dir).
            project_config=ProjectConfiguration(project_dir=".", logging_dir="."),
        )
    except ValueError as exc:  # e.g. WORLD_SIZE set without MASTER_ADDR: a launch problem
        raise RunError(
            f"Accelerate could not set up the processes: {str(exc).splitlines()[0]}; "
            "launch with accelerate launch --config_file accelerate_configs/<config>.yaml"
        ) from exc
    check_world_size(accelerator.num_processes, os.environ)
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
    """A warning when bf16 autocast is asked for on a CPU that only emulates bf16.

    Measured on an AVX2-only AMD EPYC: 2.8 img/s in bf16 against 45.6 img/s in fp32 (benchmarks/cpu_precision.py), a 2-hour
    run turned into days; the user must hear about it at the start, not after an epoch.

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
        f"WARNING: bf16 autocast on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}): about 15x slower "
        "than fp32 here; use --config_file accelerate_configs/cpu_fp32.yaml"
    )


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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(accelerator: Accelerator) -> dict:
    """What this process group runs on: precision, processes, device, CPU, library versions."""
    import accelerate

    device = accelerator.device
    return {
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **environment(accelerator)}
    if accelerator.is_main_process:
        path = Path(run_dir) / "run.json"
        sessions = read_json(path)["sessions"] if path.exists() else []
        write_json(path, {"sessions": sessions + [entry]})
    return entry


def last_session(run_dir: str | Path) -> dict | None:
    """The last entry of ``run_dir/run.json``, or None for a run recorded before run.json existed."""
    path = Path(run_dir) / "run.json"
    return read_json(path)["sessions"][-1] if path.exists() else None
