"""The records table: one row per recipe, the median and range over its seeds, single seeds labelled."""

import dataclasses
import json
from pathlib import Path

import pytest

from resnet_ocp.config import Config
from resnet_ocp.errors import RunError
from resnet_ocp.records import group_runs, records_table

ZEN4 = {"device": "cpu", "device_name": "AMD EPYC", "cpu_capability": "AVX512", "mixed_precision": "bf16"}


def write_record(results: Path, name: str, cfg: Config, final: float, reached: dict, seconds: float = 600.0,
                 session: dict = ZEN4, suggested_lr: float | None = None) -> Path:
    """A record directory with what the table reads: config.json, summary.json, run.json."""
    run = results / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    first = {t: (None if e is None else {"epoch": e, "seconds": 60.0 * e}) for t, e in reached.items()}
    (run / "summary.json").write_text(json.dumps({"epochs": cfg.epochs, "final_accuracy": final, "seconds": seconds,
                                                  "first_reached": first}))
    (run / "run.json").write_text(json.dumps({"sessions": [session]}))
    if suggested_lr is not None:
        (run / "lr_finder.json").write_text(json.dumps({"suggested_lr": suggested_lr}))
    return run


def _row(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_three_seeds_give_the_median_and_range(tmp_path):
    """Directories named NAME-seed0/1/2 with one recipe are one row: final accuracy as median
    (min-max), minutes as median, a target reached by some seeds counted as "k of 3 seeds"."""
    cfg = Config.from_preset("fast", epochs=10, data="d")
    for seed, (final, e94, sec) in enumerate([(0.9412, 9, 700.0), (0.9391, None, 650.0), (0.9430, 10, 900.0)]):
        write_record(tmp_path, f"fast10-seed{seed}", cfg.replace(seed=seed), final, {"0.90": 4, "0.92": 6 + seed, "0.94": e94},
                     seconds=sec)
    row = _row(records_table(tmp_path), "fast10")
    assert row[1:4] == ["`--preset fast --epochs 10`", "[0](results/fast10-seed0), [1](results/fast10-seed1), [2](results/fast10-seed2)",
                        "94.12 (93.91-94.30)"]
    assert row[4:8] == ["epoch 4, 4.0 min", "epoch 7, 7.0 min", "epoch 9.5, 9.5 min (2 of 3 seeds)", "11.7"]
    assert row[8] == "AMD EPYC (AVX512), bf16"


def test_a_single_seed_is_labelled_as_one(tmp_path):
    """A recipe with one run says "(one seed)" beside its accuracy; the defaults' row says
    "defaults (range-test LR)" when the run's peak LR is its range test's suggestion."""
    write_record(tmp_path, "reference-24ep", Config(max_lr=0.0027, data="d"), 0.9305, {"0.90": 16, "0.92": 20, "0.94": None},
                 session={"device": "cpu", "device_name": "AMD EPYC", "cpu_capability": "AVX2", "mixed_precision": "no"},
                 suggested_lr=0.0027)
    row = _row(records_table(tmp_path), "reference-24ep")
    assert row[1:4] == ["defaults (range-test LR)", "[0](results/reference-24ep)", "93.05 (one seed)"]
    assert row[6] == "not reached" and row[8] == "AMD EPYC (AVX2), fp32"


def test_the_machine_column_names_the_cpu_and_its_bf16_unit(tmp_path):
    """The machine column drops /proc/cpuinfo's trademarks and names AMX where the CPU has it
    (the matrix unit decides bf16 speed there), else torch's CPU capability; seeds trained on two
    machines list both, and every minutes cell gives one median per machine in that order."""
    amx = {"device": "cpu", "device_name": "Intel(R) Xeon(R) Processor", "cpu_capability": "AVX512",
           "cpu_bf16": ["amx_bf16", "avx512_bf16"], "mixed_precision": "bf16"}
    avx2 = {"device": "cpu", "device_name": "AMD EPYC 7B13 64-Core Processor", "cpu_capability": "AVX2", "cpu_bf16": [],
            "mixed_precision": "no"}
    cfg = Config.from_preset("fast", epochs=10, data="d")
    for seed, session in enumerate([avx2, amx, amx]):
        run = write_record(tmp_path, f"fast10-seed{seed}", cfg.replace(seed=seed), 0.94, {"0.90": 4, "0.92": 6, "0.94": 10},
                           seconds=600.0 + 60 * seed, session=session)
        if session is avx2:  # five times slower: 5 min an epoch
            summary = json.loads((run / "summary.json").read_text())
            summary["seconds"] *= 5
            summary["first_reached"] = {t: {**r, "seconds": 5 * r["seconds"]} for t, r in summary["first_reached"].items()}
            (run / "summary.json").write_text(json.dumps(summary))
    row = _row(records_table(tmp_path), "fast10")
    assert row[8] == "AMD EPYC 7B13 64-Core (AVX2), fp32 / Intel Xeon (AMX), bf16"
    assert row[4] == "epoch 4, 20.0 / 4.0 min" and row[6] == "epoch 10, 50.0 / 10.0 min"
    assert row[7] == "50.0 / 11.5"  # minutes of epochs: the median per machine, in the machine column's order


def test_rows_are_ordered_longest_schedule_first(tmp_path):
    """Rows run from the longest schedule to the shortest, so the table reads as a trade of epochs."""
    for name, epochs in [("a5", 5), ("b24", 24), ("c10", 10)]:
        write_record(tmp_path, name, Config(epochs=epochs, peak_epoch=1, max_lr=0.1), 0.9, {"0.90": 1, "0.92": None, "0.94": None})
    names = [line.split("`")[1] for line in records_table(tmp_path).splitlines()[2:]]
    assert names == ["b24", "c10", "a5"]


def test_seeds_of_one_recipe_must_share_every_other_option(tmp_path):
    """Two seed directories of one name whose configs differ beyond the seed are refused with one
    line naming the option, so a median never mixes recipes."""
    cfg = Config.from_preset("fast")
    write_record(tmp_path, "fast-seed0", cfg, 0.92, {"0.90": 7, "0.92": 8, "0.94": None})
    write_record(tmp_path, "fast-seed1", cfg.replace(seed=1, epochs=9), 0.92, {"0.90": 7, "0.92": 8, "0.94": None})
    with pytest.raises(RunError, match=r"fast-seed1 and .*fast-seed0 differ in epochs: the seeds of recipe 'fast' must") as info:
        group_runs(tmp_path)
    assert "\n" not in str(info.value)
