"""The end of a finished run: the last test pass's predictions, the summary, the pictures
(also in TensorBoard), then the weights, whose file marks the run as finished.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from resnet_ocp.config import Config
from resnet_ocp.data import Cifar
from resnet_ocp.engine import TrainingParts
from resnet_ocp.model import for_config, weights_metadata
from resnet_ocp.rundir import write_predictions


def finish(parts: TrainingParts, cfg: Config, run_dir: Path, test: dict, data: Cifar, history: list[dict]) -> None:
    """Write the final predictions, summary and pictures, then the weights.

    ``model.safetensors`` is written last: its presence marks a finished run, so a run killed
    anywhere before it can still be resumed and finished.

    Args:
        parts: the prepared training objects.
        cfg: the resolved configuration.
        run_dir: the run directory.
        test: the last test pass's result.
        data: the loaded splits (for the pictures).
        history: the run's epoch records.
    """
    from safetensors.torch import save_file

    from resnet_ocp.atomic import atomic_path
    from resnet_ocp.report import describe, make_report, summarize

    accelerator = parts.accelerator
    state = accelerator.get_state_dict(parts.evaluated_model)
    if accelerator.is_main_process:
        write_predictions(run_dir / "predictions.csv", test)
        accelerator.print(describe(summarize(history)))
        weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        model = for_config(cfg, len(data.classes))
        model.load_state_dict(weights)
        order = test["indices"].argsort()
        # The last evaluation's predictions, not a second pass over the test set.
        pictures = make_report(run_dir, data=data, predictions=(test["predictions"][order], test["confidences"][order]), model=model)
        accelerator.print("pictures: " + ", ".join(p.name for p in pictures))
        _log_picture(accelerator, run_dir / "misclassified.png", cfg.epochs)
        with atomic_path(run_dir / "model.safetensors") as tmp:
            save_file(weights, tmp, metadata=weights_metadata(data.classes))
    accelerator.wait_for_everyone()


def _log_picture(accelerator: Accelerator, path: Path, step: int) -> None:
    """Put a PNG into TensorBoard's Images tab (main process)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    accelerator.get_tracker("tensorboard").writer.add_image(path.stem, pixels, step, dataformats="HWC")
