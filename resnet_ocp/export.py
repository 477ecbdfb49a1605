"""``resnet-ocp export RUN_DIR OUT_DIR``: a finished run as a folder ``CustomResNet.from_pretrained`` loads.

OUT_DIR gets ``model.safetensors`` (byte-identical to the run's: the same tensors and header, so
git stores one copy of both), ``config.json`` (the model config: classes, width, logit scale,
normalisation, class names, flip TTA; nothing of the training run), ``README.md`` (a model card
with Hub metadata: library, dataset, the run's measured test accuracy as a model-index, the
command that reproduces the run's config) and the run's ``schedule.png`` and ``curves.png``.
The folder is what a Hub model repository holds: ``hf upload OWNER/NAME OUT_DIR`` publishes it.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from pathlib import Path

from resnet_ocp.atomic import atomic_path, read_json, write_text
from resnet_ocp.config import Config
from resnet_ocp.errors import OneLineParser, RunError, UserError, exit_with

# Options that decide where and how a run is kept, not what it learns: left out of the card's command.
HOUSEKEEPING = ("output_dir", "resume", "stop_after_epoch", "cache_dir", "progress", "log_every", "keep_checkpoints",
                "process_group_timeout")
PICTURES = ("schedule.png", "curves.png")
REQUIRED = ("config.json", "history.json", "model.safetensors")


def training_command(cfg: Config, session: dict | None) -> str:
    """The command that trains a run with ``cfg``: every option that differs from the defaults
    (housekeeping aside), under the ``accelerate launch`` options of the run's last session.

    Args:
        cfg: the run's resolved config (its ``max_lr`` is the one the run used).
        session: the last entry of the run's ``run.json`` (None for runs from before it existed).
    """
    from resnet_ocp.session import launch_options

    defaults = Config()
    options = []
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if f.name in HOUSEKEEPING or value == getattr(defaults, f.name):
            continue
        flag = f.name.replace("_", "-")
        options += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", shlex.quote(str(value))]
    launcher = f"accelerate launch {launch_options(session)}" if session else "accelerate launch"
    return " ".join([launcher, "train.py", *options])


def model_card(run_dir: Path, cfg: Config, model_name: str, parameters: int, trained: int | None = None) -> str:
    """The README.md of an exported run: Hub metadata (YAML) and what the model is, how well it
    does and how it was trained, all read from the run's files.

    Args:
        run_dir: the finished run.
        cfg: its config.
        model_name: the model's name in the card and its model-index.
        parameters: the network's parameters.
        trained: how many of them the run trained, where fewer (``--bn-weight-freeze``).
    """
    from resnet_ocp.report import summarize
    from resnet_ocp.session import last_session, machine_words

    history = read_json(run_dir / "history.json")
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else summarize(history)
    session = last_session(run_dir)
    accuracy, images = summary["final_accuracy"], history[-1].get("test_samples") or 10_000
    where, precision = machine_words(session) if session else ("an unrecorded machine", "fp32")
    reached = ", ".join(f"{100 * float(t):.0f}% at epoch {hit['epoch']}" for t, hit in summary["first_reached"].items() if hit)
    lr_note = " The peak LR is the one the LR range test chose (lr_finder.json); leave out `--max-lr` to run the test again." if (
        (run_dir / "lr_finder.json").exists()) else ""
    lines = [
        f"---\n{_card_metadata(model_name, accuracy)}\n---", "", f"# {model_name}", "",
        "A CIFAR-10 classifier trained with the open-source project resnet_ocp (Python package `resnet-ocp`): the ResNet "
        f"`C1-(C2+Res)-C3-(C4+Res)-MaxPool-FC` ({parameters:,} parameters, width {cfg.width}{_trained_words(parameters, trained)}) "
        "trained with the One-Cycle policy through Hugging Face Accelerate.", "",
        f"**Test accuracy {100 * accuracy:.2f}%** ({round(accuracy * images):,} of {images:,} test images of `{cfg.data}`), measured by "
        f"the training run after its last epoch{_tta_words(cfg)}, "
        f"in {precision} on {where}: the run's summary.json.", "",
        "## Use", "", "```python", "from resnet_ocp.model import CustomResNet",
        'model = CustomResNet.from_pretrained("THIS_FOLDER_OR_HUB_ID")  # on the CPU, in eval mode', "```", "",
        "The network takes 32x32 RGB images scaled to [0, 1] and normalised with `mean` and `std` (config.json); "
        "`resnet-ocp predict` converts image files of any size and mode and gives the top classes:", "",
        "```bash", "resnet-ocp predict THIS_FOLDER_OR_HUB_ID cat.png dog.jpg --top-k 3", "```", "",
        "## Training", "", "```bash", training_command(cfg, session), "```", "",
        f"{summary['epochs']} epochs, {summary['seconds'] / 60:.1f} minutes of epochs (training and test passes){_ran_on(session, where)}. "
        f"The command gives the run's config.json: every option that differs from the defaults.{lr_note}", "",
        f"First test accuracy above each target: {reached or 'none of 90, 92, 94% reached'}; best "
        f"{100 * summary['best_accuracy']:.2f}% at epoch {summary['best_epoch']}.", "",
        "![Learning rate and momentum as the optimizer applied them](schedule.png)", "",
        "![Loss and accuracy per epoch](curves.png)", "",
    ]
    return "\n".join(lines + _per_class_section(run_dir) + _LIMITATIONS)


_LIMITATIONS = ["## Limitations", "",
                "Ten CIFAR-10 classes only, learned from 32x32 photos of centred objects: `resnet-ocp predict` centre-crops "
                "and shrinks larger images to 32x32, and photos unlike CIFAR-10's get less than the test accuracy above.", ""]


def _card_metadata(model_name: str, accuracy: float) -> str:
    """The card's Hub metadata as YAML: library, licence, task, dataset and the test accuracy as a model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    return ModelCardData(
        library_name="resnet-ocp", license="apache-2.0", pipeline_tag="image-classification", datasets=["uoft-cs/cifar10"],
        metrics=["accuracy"], tags=["image-classification", "cifar10", "pytorch_model_hub_mixin", "model_hub_mixin"], model_name=model_name,
        eval_results=[EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type="uoft-cs/cifar10",
                                 dataset_name="CIFAR-10", dataset_split="test", metric_type="accuracy", metric_name="Test accuracy",
                                 metric_value=accuracy)],
    ).to_yaml()


def _per_class_section(run_dir: Path) -> list[str]:
    """A table of per-class test accuracy, where the run wrote per_class_accuracy.json (else nothing)."""
    path = run_dir / "per_class_accuracy.json"
    if not path.exists():
        return []
    rows = [f"| {name} | {100 * acc:.1f}% |" for name, acc in read_json(path).items()]
    return ["## Accuracy per class", "", "| class | test accuracy |", "|---|---|", *rows, ""]


def _ran_on(session: dict | None, where: str) -> str:
    if session is None:
        return ""
    processes = session["num_processes"]
    return f" on {processes} process{'es' if processes > 1 else ''} of {where}, torch {session['torch']}, accelerate {session['accelerate']}"


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a finished run as a ``from_pretrained`` folder with a model card, atomically.

    Args:
        run_dir: a finished run directory.
        out_dir: the folder to create (must not exist, or be empty).

    Returns:
        ``out_dir``.
    """
    from resnet_ocp.evaluate import load_run_model
    from resnet_ocp.model import count_parameters

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    missing = [f for f in REQUIRED if not (run_dir / f).exists()]
    if missing:
        raise RunError(f"{run_dir} lacks {', '.join(missing)}; give a finished run directory written by train.py")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunError(f"{out_dir} already exists; choose a new OUT_DIR (an export never overwrites)")
    cfg = Config.from_dict(read_json(run_dir / "config.json"))
    model = load_run_model(run_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        name = f"resnet-ocp-cifar10-{run_dir.resolve().name}"
        write_text(Path(tmp) / "README.md", model_card(run_dir, cfg, name, sum(p.numel() for p in model.parameters()), count_parameters(model)))
        for name in PICTURES:
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, Path(tmp) / name)
    return out_dir


def _tta_words(cfg) -> str:
    if not cfg.tta:
        return ""
    shifted = f", and of both shifted {cfg.tta_shift} pixel(s) diagonally each way" if cfg.tta_shift else ""
    return f" with TTA (mean of the logits of an image and its mirror{shifted})"


def _trained_words(parameters: int, trained: int | None) -> str:
    if trained is None or trained == parameters:
        return ""
    return f"; {trained:,} of them trained, the batch-norm weights frozen at 1"


def main(argv: list[str] | None = None, prog: str = "python -m resnet_ocp.export") -> dict:
    """Export ``RUN_DIR`` to ``OUT_DIR`` and print what was written.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        prog: the command's name in help and errors.

    Returns:
        ``out_dir`` and ``files`` (the names written).
    """
    parser = OneLineParser(prog=prog, description="Write a finished run as a from_pretrained folder with a model card (README.md).",
                           epilog="Publish it with: hf upload OWNER/NAME OUT_DIR (needs hf auth login and network).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (with model.safetensors)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to create")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out_dir)
    except UserError as exc:
        exit_with(exc)
    files = sorted(p.name for p in out.iterdir())
    print(f"exported {args.run_dir} to {out}: {', '.join(files)}")
    return {"out_dir": str(out), "files": files}


if __name__ == "__main__":
    main()
