"""`resnet-ocp predict MODEL IMAGE... | FOLDER`: the classes evaluate gives, for image files of
any kind, batched, with unreadable files named and skipped."""

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REAL_DATA, REPO, make_images
from resnet_ocp import evaluate
from resnet_ocp.cli import console, main
from resnet_ocp.config import Config
from resnet_ocp.predict import inference_precision

RECORD = REPO / "results" / "fast-8ep"


def parquet_test_pngs(source: Path, out: Path, n: int) -> tuple[list[Path], list[int]]:
    """Write the first ``n`` test images of a parquet CIFAR-10 set as PNG files, byte for byte as
    the set stores them, and return the files and their labels."""
    import pyarrow.parquet as pq

    table = pq.read_table(next((source / "plain_text").glob("test-*.parquet")), columns=["img", "label"]).slice(0, n)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(table.column("img").to_pylist()):
        files.append(out / f"test_{i:05d}.png")
        files[-1].write_bytes(image["bytes"])
    return files, table.column("label").to_pylist()


def pixels(files: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


@pytest.mark.skipif(not REAL_DATA.exists(), reason="real CIFAR-10 not beside the checkout")
def test_real_test_images_get_the_classes_evaluate_gives(tmp_path, capsys):
    """Real CIFAR-10 test images written to PNG files and predicted with the committed fast-8ep
    record get, image by image, the top class and probabilities of evaluate's test_logits in the
    same precision, with the run's flip TTA, in the run's precision only where this CPU has it
    natively (else fp32), and need no conversion."""
    files, _ = parquet_test_pngs(REAL_DATA, tmp_path / "png", 24)
    result = main(["predict", str(RECORD), str(tmp_path / "png"), "--json", "--batch-size", "10"])
    document = json.loads(capsys.readouterr().out)
    cfg = Config.from_dict(json.loads((RECORD / "config.json").read_text()))
    precision = inference_precision("bf16", torch.device("cpu"))
    assert (result["tta"], result["precision"], result["failed"]) == (True, precision, 0) and cfg.tta
    expected = evaluate.test_logits(evaluate.load_trained(RECORD, cfg, 10), pixels(files), cfg, cfg.tta, precision=precision).softmax(1)
    assert [p["file"] for p in document["predictions"]] == [str(f) for f in files]
    assert [p["top"][0]["index"] for p in document["predictions"]] == expected.argmax(1).tolist()
    got = torch.tensor([[t["probability"] for t in p["top"]] for p in document["predictions"]])
    torch.testing.assert_close(got, expected.topk(3, dim=1).values, atol=1e-5, rtol=0)
    assert all(p["notes"] == [] and len(p["top"]) == 3 for p in document["predictions"])


def test_tiny_run_predicts_what_its_last_evaluation_did(finished_run, tiny_data, tmp_path, capsys):
    """The tiny finished run's test images as PNG files get the predicted class and confidence that
    its own final evaluation wrote to predictions.csv, one line per image in the order given."""
    files, labels = parquet_test_pngs(tiny_data, tmp_path / "png", 30)
    run_dir = Path(finished_run["run_dir"])
    result = main(["predict", str(run_dir), *map(str, files), "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    with open(run_dir / "predictions.csv") as f:
        recorded = list(csv.DictReader(f))[:30]
    tops = [p["top"][0] for p in result["predictions"]]
    assert [t["index"] for t in tops] == [int(r["prediction"]) for r in recorded]
    assert [t["probability"] for t in tops] == pytest.approx([float(r["confidence"]) for r in recorded], abs=1e-5)
    assert [line.split(":")[0] for line in lines] == [str(f) for f in files]
    assert lines[0] == f"{files[0]}: {tops[0]['class']} {100 * tops[0]['probability']:.1f}%, " + \
        f"{result['predictions'][0]['top'][1]['class']} {100 * result['predictions'][0]['top'][1]['probability']:.1f}%"
    assert labels[:3] == [int(r["label"]) for r in recorded[:3]]


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """A folder of one image written eight ways, three files that are not images, and a .txt."""
    image = make_images(np.array([5]), seed=3)[0]
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(image).save(folder / "a_plain.png")
    Image.fromarray(image).convert("L").save(folder / "b_grey.png")
    (folder / "c_empty.png").write_bytes(b"")
    Image.fromarray(np.asarray(Image.fromarray(image).convert("L")).astype(np.uint16) * 257).save(folder / "d_grey16.png")
    (folder / "e_text.png").write_text("not an image\n")
    Image.fromarray(image).resize((256, 256), Image.Resampling.NEAREST).save(folder / "f_big.png")
    Image.fromarray(np.dstack([image, np.full((32, 32), 255, np.uint8)]), "RGBA").save(folder / "g_rgba.png")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    (folder / "h_cut.png").write_bytes(buffer.getvalue()[:150])
    Image.fromarray(image).resize((1024, 768)).save(folder / "i_photo.jpg", quality=90)
    (folder / "readme.txt").write_text("not listed")
    return folder


def test_odd_files_are_converted_and_unreadable_ones_named(finished_run, odd_folder, capsys):
    """In a folder predicted 3 at a time, every image file is predicted in name order with its
    conversion notes (a grey PNG and its 16-bit twin alike; an 8x upscale and an opaque RGBA as
    the plain image), each unreadable file gets one `error:` line naming it on stderr, and the
    command's exit status is 1."""
    result = main(["predict", finished_run["run_dir"], str(odd_folder), "--batch-size", "3", "--json"])
    captured = capsys.readouterr()
    by_name = {Path(p["file"]).name: p for p in result["predictions"]}
    assert list(by_name) == sorted(p.name for p in odd_folder.glob("*.[pj][np]g"))
    failed = {n for n, p in by_name.items() if "error" in p}
    assert failed == {"c_empty.png", "e_text.png", "h_cut.png"} and result["failed"] == 3
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert [e.split(": ")[1] for e in errors] == [str(odd_folder / n) for n in ("c_empty.png", "e_text.png", "h_cut.png")]
    assert by_name["d_grey16.png"]["top"] == by_name["b_grey.png"]["top"]
    assert by_name["f_big.png"]["top"] == by_name["a_plain.png"]["top"] == by_name["g_rgba.png"]["top"]
    assert by_name["d_grey16.png"]["notes"] == ["16-bit -> 8-bit (high byte)", "converted L -> RGB"]
    assert by_name["i_photo.jpg"]["notes"] == ["centre-cropped 1024x768 -> 768x768", "resized 768x768 -> 32x32 (area average)"]
    assert json.loads(captured.out)["predictions"] == result["predictions"]


def test_console_exit_status_says_whether_every_file_was_read(finished_run, odd_folder, monkeypatch):
    """The resnet-ocp console command exits 0 when every file was predicted and 1 when some file
    could not be read."""
    monkeypatch.setattr(sys, "argv", ["resnet-ocp", "predict", finished_run["run_dir"], str(odd_folder / "a_plain.png")])
    assert console() == 0
    monkeypatch.setattr(sys, "argv", ["resnet-ocp", "predict", finished_run["run_dir"], str(odd_folder)])
    assert console() == 1


def test_flip_tta_follows_the_run_unless_told(finished_run, odd_folder):
    """Without --tta the run's setting is used (the tiny run has none); --tta averages the image
    and its mirror, which changes the probabilities of an asymmetric image."""
    plain = main(["predict", finished_run["run_dir"], str(odd_folder / "a_plain.png"), "--top-k", "10"])
    flipped = main(["predict", finished_run["run_dir"], str(odd_folder / "a_plain.png"), "--top-k", "10", "--tta"])
    assert (plain["tta"], flipped["tta"]) == (False, True)
    assert plain["predictions"][0]["top"] != flipped["predictions"][0]["top"]


def test_precision_is_the_runs_only_where_native():
    """bf16 stays bf16 only on a device that runs it natively, fp16 only on a GPU; fp32 stays fp32."""
    cpu = torch.device("cpu")
    assert inference_precision("bf16", cpu) == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no")
    assert inference_precision("fp16", cpu) == inference_precision("no", cpu) == "no"


def test_model_errors_are_one_line(finished_run, tmp_path, capsys):
    """An unfinished run, damaged weights, a folder without images, more classes than the model
    has, a device this machine lacks, and a Hub id not in the offline cache each end with one
    `error:` line and exit status 2."""
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text('{"width": 8}')
    (tmp_path / "damaged" / "model.safetensors").write_bytes(b"\x07" * 100)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text(json.dumps(Config(width=8).to_dict()))
    (tmp_path / "empty").mkdir()
    image = tmp_path / "a.png"
    Image.fromarray(make_images(np.array([1]), 0)[0]).save(image)
    for argv, fragment in [
        ([str(tmp_path / "unfinished"), str(image)], "is a run without model.safetensors (unfinished)"),
        ([str(tmp_path / "damaged"), str(image)], "could not be loaded (SafetensorError: "),
        ([finished_run["run_dir"], str(tmp_path / "empty")], "holds no image files"),
        ([finished_run["run_dir"], str(image), "--device", "cuda:99"], "--device cuda:99: no such device here"),
        ([finished_run["run_dir"], str(image), "--top-k", "11"], "--top-k 11 exceeds the model's 10 classes"),
        (["nobody/no-such-model", str(image)], "MODEL nobody/no-such-model: no directory here and no Hub model loaded (HF_HUB_OFFLINE=1"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["predict", *argv])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and err.startswith("error: ") and fragment in err and "\n" not in err
