"""``resnet-ocp predict MODEL IMAGE... | FOLDER``: the top-k classes of image files.

MODEL is a run directory (``config.json`` and ``model.safetensors``), a folder written by
``resnet-ocp export`` or ``CustomResNet.save_pretrained``, or a Hugging Face Hub id
(``owner/name``, through huggingface_hub's cache). Each file is brought to CIFAR-10's 32x32 RGB
(``resnet_ocp.images``, one note per change) and the files are predicted in batches, on the GPU
when there is one, with flip TTA when the model's run was tested with it.

Precision: a run directory is predicted in the precision its run used (``run.json``) where this
device runs it natively (bf16: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX; fp16: a CUDA
GPU), else in fp32: emulated bf16 ran 12x slower than fp32 on an AVX2 CPU (docs/performance.md). An
exported folder or a Hub model records no precision and is predicted in fp32; ``--precision``
overrides both.

Exit status: 0 when every file was predicted; 1 when some could not be read (each gets one
``error: FILE: why`` line on stderr and the others are still predicted); 2 for bad input (the
model, an option, a folder without images), with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from resnet_ocp.atomic import read_json
from resnet_ocp.errors import OneLineParser, UserError, exit_with, positive_int
from resnet_ocp.images import UnreadableImage, image_files, load_image
from resnet_ocp.inference import predict_logits
from resnet_ocp.model import WEIGHTS_FILE, CustomResNet

PRECISIONS = ("no", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A Hub model id: owner/name, each of letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(UserError):
    """MODEL names nothing that can be loaded; the message says what to give instead."""


def load_model(source: str) -> tuple[CustomResNet, str, str]:
    """The network named by ``source`` on the CPU in eval mode, the precision its recorded
    accuracy was measured in (``no`` where nothing records one), and what kind of source it was.

    Args:
        source: a run directory, an exported (``save_pretrained``) folder or a Hub id.
    """
    path = Path(source).expanduser()
    if not path.is_dir():
        return _load_from_hub(source, path)
    try:
        return _load_folder(source, path)
    except UserError:
        raise
    except Exception as exc:  # safetensors, json and torch raise many types on a damaged file
        raise ModelError(f"MODEL {source} could not be loaded ({type(exc).__name__}: {_first_line(exc)}); "
                         "give a finished run directory or an exported folder") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _load_folder(source: str, path: Path) -> tuple[CustomResNet, str, str]:
    """A run directory or an exported folder (see ``load_model``)."""
    config = path / "config.json"
    if not config.exists():
        raise ModelError(f"MODEL {source} has no config.json; give a run directory, an exported folder or a Hub id")
    if "epochs" in read_json(config):  # a training Config: a run directory
        if not (path / WEIGHTS_FILE).exists():
            raise ModelError(f"MODEL {source} is a run without {WEIGHTS_FILE} (unfinished); finish it with resnet-ocp train --resume {source}")
        from resnet_ocp.evaluate import load_run_model, run_precision

        return load_run_model(path), run_precision(path), "run directory"
    if not (path / WEIGHTS_FILE).exists():
        raise ModelError(f"MODEL {source} has no {WEIGHTS_FILE}; give a folder written by resnet-ocp export or save_pretrained")
    return CustomResNet.from_pretrained(path), "no", "exported folder"




def _load_from_hub(source: str, path: Path) -> tuple[CustomResNet, str, str]:
    """A Hub model by id (see ``load_model``)."""
    if path.exists() or not _HUB_ID.match(source):
        raise ModelError(f"MODEL {source} is {'a file' if path.exists() else 'no directory here'}; "
                         "give a run directory, an exported folder or a Hub id (owner/name)")
    try:
        return CustomResNet.from_pretrained(source), "no", "Hub model"
    except Exception as exc:  # huggingface_hub raises many types (offline, not found, gated, no network)
        offline = " (HF_HUB_OFFLINE=1: only models already in the Hub cache load)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ModelError(f"MODEL {source}: no directory here and no Hub model loaded{offline}: {_first_line(exc)}; "
                         "give a run directory, an exported folder or a Hub id") from None


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def inference_precision(recorded: str, device: torch.device) -> str:
    """``recorded`` where ``device`` runs it natively, else ``no`` (fp32).

    Args:
        recorded: the precision the model's accuracy was measured in (``no``, ``bf16``, ``fp16``).
        device: where prediction runs.
    """
    if recorded == "bf16" and device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif recorded == "bf16" and device.type == "cpu":
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        native = recorded == "fp16" and device.type == "cuda"
    return recorded if native else "no"


@torch.no_grad()
def predict_images(model: CustomResNet, images: torch.Tensor, tta: bool | None = None, precision: str = "no",
                   batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) of uint8 images, on the model's device.

    Args:
        model: a network with its ``mean``, ``std`` and ``tta`` (eval mode is set here).
        images: uint8 [N, 3, 32, 32].
        tta: flip test-time augmentation (default: the model's ``tta``).
        precision: autocast precision, ``no``, ``bf16`` or ``fp16``.
        batch_size: images per forward pass.
    """
    model.eval()
    device = next(model.parameters()).device
    mean, std = torch.tensor(model.config.mean, device=device), torch.tensor(model.config.std, device=device)
    tta = model.config.tta if tta is None else tta
    dtype = _AUTOCAST.get(precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        # channels_last: the layout training used, and oneDNN's and cuDNN's fast path.
        return torch.cat([predict_logits(model, batch.to(device), mean, std, True, tta, model.config.tta_shift if tta else 0).softmax(1).cpu()
                          for batch in images.split(batch_size)])


def iter_predictions(model: CustomResNet, files: list[str | os.PathLike], top_k: int = 3, tta: bool | None = None,
                     precision: str = "no", batch_size: int = 256) -> Iterator[dict]:
    """One result per file, in order, reading and predicting ``batch_size`` files at a time.

    Args:
        model: the network (see ``predict_images``).
        files: image files.
        top_k: how many classes to give per image, most probable first.
        tta: flip test-time augmentation (default: the model's).
        precision: autocast precision.
        batch_size: files read and predicted together.

    Yields:
        ``{"file", "top": [{"class", "index", "probability"}], "notes"}``, or ``{"file", "error"}``
        for a file that could not be read.
    """
    names = model.config.class_names or [str(i) for i in range(model.fc.out_features)]
    for start in range(0, len(files), batch_size):
        chunk, loaded = [], []
        for file in files[start:start + batch_size]:
            try:
                loaded.append(load_image(file))
                chunk.append(None)
            except UnreadableImage as exc:
                chunk.append({"file": str(file), "error": str(exc)})
        if loaded:
            probs = predict_images(model, torch.stack([im.pixels for im in loaded]), tta, precision, batch_size)
            top_p, top_i = probs.topk(top_k, dim=1)
        ok = iter(range(len(loaded)))
        for entry in chunk:
            if entry is None:
                k = next(ok)
                entry = {"file": str(loaded[k].path), "notes": list(loaded[k].notes),
                         "top": [{"class": names[i], "index": i, "probability": p} for p, i in zip(top_p[k].tolist(), top_i[k].tolist())]}
            yield entry


def predict_files(model: CustomResNet, files: list[str | os.PathLike], **options) -> list[dict]:
    """``iter_predictions`` as a list: one dict per file, in order (see there for ``options``).

    Args:
        model: the network, e.g. ``CustomResNet.from_pretrained("results/sgd-24ep/export")``.
        files: image files.
        options: ``top_k``, ``tta``, ``precision``, ``batch_size``.
    """
    return list(iter_predictions(model, files, **options))


def describe(entry: dict) -> str:
    """One line for a predicted file: its classes with probabilities, then the notes in brackets.

    Args:
        entry: a result of ``iter_predictions`` without ``error``.
    """
    line = f"{entry['file']}: " + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in entry["top"])
    return line + (f"  [{'; '.join(entry['notes'])}]" if entry["notes"] else "")


def build_parser(prog: str) -> OneLineParser:
    """The ``predict`` command's options; a bad value exits 2 with one line.

    Args:
        prog: the command's name in help and errors.
    """
    parser = OneLineParser(prog=prog, description="Top-k classes of image files from a run directory, an exported folder or a Hub id.",
                           epilog="Exit status: 0 all predicted, 1 some file unreadable (others still predicted), 2 bad input.")
    parser.add_argument("model", metavar="MODEL", help="run directory, exported folder (resnet-ocp export) or Hub id (owner/name)")
    parser.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files, or folders of them (their image files, by name)")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes per image, most probable first (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images read and predicted together (default 256)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip TTA (default: as the model's run was tested)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="autocast precision (default auto: the run's where this device runs it natively, else fp32)")
    parser.add_argument("--device", help="torch device (default: cuda when there is a GPU, else cpu)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m resnet_ocp.predict") -> dict:
    """Predict image files and print one line each (or one JSON document with ``--json``).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        prog: the command's name in help and errors.

    Returns:
        ``model``, ``kind``, ``device``, ``precision``, ``tta``, ``top_k``, ``predictions`` (one
        dict per file, see ``iter_predictions``) and ``failed`` (how many files could not be read).
    """
    args = build_parser(prog).parse_args(argv)
    try:
        files = image_files(args.inputs)
        device = _device(args.device)
        model, recorded, kind = load_model(args.model)
        if args.top_k > model.fc.out_features:
            raise UserError(f"--top-k {args.top_k} exceeds the model's {model.fc.out_features} classes")
    except UserError as exc:
        exit_with(exc)
    precision = inference_precision(recorded, device) if args.precision == "auto" else args.precision
    tta = model.config.tta if args.tta is None else args.tta
    model = model.to(device).to(memory_format=torch.channels_last)
    print(f"{args.model} ({kind}, {model.fc.out_features} classes): {len(files)} file(s) on {device}, "
          f"{'fp32' if precision == 'no' else precision}, flip TTA {'on' if tta else 'off'}", file=sys.stderr)
    predictions = []
    for entry in iter_predictions(model, files, args.top_k, tta, precision, args.batch_size):
        predictions.append(entry)
        if "error" in entry:
            print(f"error: {entry['error']}", file=sys.stderr, flush=True)
        elif not args.json:
            print(describe(entry), flush=True)
    result = {"model": args.model, "kind": kind, "device": str(device), "precision": precision, "tta": tta, "top_k": args.top_k,
              "predictions": predictions, "failed": sum("error" in p for p in predictions)}
    if args.json:
        print(json.dumps(result, indent=1))
    return result


def _device(name: str | None) -> torch.device:
    """The device to predict on; one clear line for a name torch does not know or a GPU that is not here."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name}: not a torch device (cpu, cuda, cuda:1...)") from None
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError):  # torch's answer for a device type this build or machine lacks
        raise UserError(f"--device {name}: no such device here; use --device cpu or leave it out") from None
    return device


if __name__ == "__main__":
    raise SystemExit(1 if main()["failed"] else 0)
