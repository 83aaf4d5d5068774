"""Data contracts: the run's file names live in one module; typed records of its files."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pufferfiber.io import checkpoints as ck
from pufferfiber.io import runfiles
from pufferfiber.io.schemas import (
    FIBERS_FORMAT,
    FIDELITY_FORMAT,
    TRAINER_STATE_FORMAT,
    FibersHeader,
    Fidelity,
    SchemaError,
    TimelineEntry,
    TrainerState,
    read_fidelity,
    write_fidelity,
)

PACKAGE = Path(__file__).resolve().parents[1] / "pufferfiber"

# The names runfiles owns, as string literals in source code.
_LITERALS = [
    '"metrics.jsonl"', '"trainer_state.pt"', '"fidelity.json"', '"fibers.pkl"', '"log.out"',
    '"log_collapsed.out"', '"breaking.jsonl"', '"redo.jsonl"', '"fibers_timeline.json"',
    '".pufferfiber.lock"', '"sweep.json"', '"summary.csv"', '"results.json"', '"eval.json"',
    'f"model_{', '"collapsed_model_thr_', "collapsed_model_thr_(",
]  # fmt: skip


def test_no_module_spells_a_run_file_name() -> None:
    """Every run file name comes from runfiles: no other module writes it as a literal."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "runfiles.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(lit in line for lit in _LITERALS):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


def test_one_run_folder_regex() -> None:
    from pufferfiber.experiments import report

    assert report.RUN_NAME is runfiles.RUN_DIR_RE  # the report and find_run agree
    for name in ("beam_rider-5eed0001", "puffer_breakout-0123abcd", "cartpole-deadbeef"):
        m = runfiles.RUN_DIR_RE.match(name)
        assert m is not None and runfiles.run_dir_name(m["env"], m["id"]) == name
    for name in ("beam_rider-5eed001", "Beam-5eed0001", "beam rider-5eed0001", "x-5EED0001"):
        assert runfiles.RUN_DIR_RE.match(name) is None


def test_names_and_patterns_agree() -> None:
    name = runfiles.checkpoint_name(51)
    m = runfiles.CHECKPOINT_RE.match(name)
    assert name == "model_000051.pt" and m is not None and int(m["epoch"]) == 51
    assert runfiles.COLLAPSED_MODEL_RE.match(runfiles.collapsed_model_name(51))
    folder = runfiles.collapse_dir_name("03", 51)
    assert runfiles.COLLAPSE_DIR_RE.match(folder)["tt"] == "03"  # type: ignore[index]
    with tempfile.TemporaryDirectory() as tmp:  # mkstemp's names, as atomic writes make them
        for target in (name, runfiles.TRAINER_STATE, runfiles.METRICS):
            _, temp = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=tmp)
            assert runfiles.STALE_TEMP_RE.match(Path(temp).name), temp
        _, other = tempfile.mkstemp(prefix=".fibers_timeline.json.", suffix=".tmp", dir=tmp)
        assert not runfiles.STALE_TEMP_RE.match(Path(other).name)


# ---------------------------------------------------------------- fidelity.json


def _fidelity_dict() -> dict:
    return {
        "env": "cartpole",
        "threshold": 0.3,
        "flatten_colours": "positions",
        "collapsed_layers": ["linear1", "lstm"],
        "fibers": {"linear1": 3, "lstm": 5},
        "sizes": {"linear1": 8, "lstm": 16},
        "params_before": 1000,
        "params_after": 250,
        "params_fraction": 0.25,
        "kl": 0.01,
        "value_mae": 0.2,
        "value_mean_abs": 4.0,
        "steps": 512,
        "episodes": 2,
        "return_mean": 180.0,
        "return_std": 5.0,
        "returns": [175.0, 185.0],
        "epoch": 6,
        "criterion": {"name": "weight"},
    }


def test_fidelity_written_and_read_through_the_record(tmp_path: Path) -> None:
    written = write_fidelity(tmp_path / runfiles.FIDELITY, _fidelity_dict())
    raw = json.loads((tmp_path / runfiles.FIDELITY).read_text())
    assert raw["format"] == FIDELITY_FORMAT and raw["criterion"] == {"name": "weight"}
    assert {k: raw[k] for k in _fidelity_dict()} == _fidelity_dict()  # nothing lost
    back = read_fidelity(tmp_path / runfiles.FIDELITY)
    assert back == written and back.kl == 0.01 and back.params_fraction == 0.25
    assert back.return_mean == 180.0 and back.fibers == {"linear1": 3, "lstm": 5}


def test_fidelity_of_earlier_files_and_other_tools() -> None:
    old = {"threshold": 0.3, "mean_return": 12.5, "metrics": {"policy_kl": 0.5, "value_error": 2}}
    f = Fidelity.from_dict(old)
    assert (f.return_mean, f.kl, f.value_mae) == (12.5, 0.5, 2.0)
    empty = Fidelity.from_dict({"return_mean": None})
    assert empty.return_mean is None and math.isnan(empty.kl) and math.isnan(empty.params_fraction)
    with pytest.raises(SchemaError, match="kl is str"):
        Fidelity.from_dict({"kl": "small"}, "f.json")
    with pytest.raises(SchemaError, match="unknown fidelity format"):
        Fidelity.from_dict({"format": "pufferfiber.fidelity/9"})


def test_damaged_fidelity_reads_as_unknown(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text('{"kl": [1, 2]}')
    (tmp_path / "c.json").write_text("[1, 2]")
    for name in ("a.json", "b.json", "c.json", "missing.json"):
        assert read_fidelity(tmp_path / name) is None


# ---------------------------------------------------------------- fibers.pkl header, timeline


def _fibers() -> dict:
    return {
        "format": FIBERS_FORMAT,
        "threshold": 0.3,
        "epoch": 6,
        "env": "cartpole",
        "params_before": 1000,
        "params_after": 250,
        "layers": [
            {"label": "linear1", "size": 8, "n_fibers": 3, "collapsed": True,
             "labels": np.zeros(8, dtype=np.int64)},
        ],
    }  # fmt: skip


def test_fibers_header() -> None:
    header = FibersHeader.from_dict(_fibers())
    assert header.layers[0].n_fibers == 3 and header.flatten_colours == "positions"
    bad = _fibers()
    bad["layers"][0]["size"] = True  # a bool is not a unit count
    with pytest.raises(SchemaError, match=r"layers\[0\]\.size is bool"):
        FibersHeader.from_dict(bad, "fibers.pkl")
    bad = _fibers()
    del bad["epoch"]
    with pytest.raises(SchemaError, match="epoch is missing"):
        FibersHeader.from_dict(bad)
    with pytest.raises(SchemaError, match="not a pufferfiber fibers file"):
        FibersHeader.from_dict({**_fibers(), "format": "other"})


def test_save_fibers_refuses_a_file_readers_could_not_use(tmp_path: Path) -> None:
    from pufferfiber.io.fibersfile import load_fibers, save_fibers

    save_fibers(tmp_path / "ok.pkl", _fibers())
    assert load_fibers(tmp_path / "ok.pkl")["params_after"] == 250
    bad = _fibers()
    del bad["params_after"]
    with pytest.raises(SchemaError, match="params_after is missing"):
        save_fibers(tmp_path / "bad.pkl", bad)
    assert not (tmp_path / "bad.pkl").exists()


def test_timeline_entry_round_trip() -> None:
    entry = TimelineEntry(3, 1536, {"lstm": 4}, {"lstm": 16}, 1000, 300, 2)
    assert TimelineEntry.from_dict(entry.to_dict()) == entry
    assert TimelineEntry.valid({**entry.to_dict(), "lstm_rounds": None})  # older caches
    assert not TimelineEntry.valid({**entry.to_dict(), "params_full": "many"})
    assert not TimelineEntry.valid({"epoch": 3})


# ---------------------------------------------------------------- trainer_state.pt


def test_trainer_state_has_a_format_and_is_validated(tmp_path: Path) -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    state = TrainerState(opt.state_dict(), epoch=4, global_step=2048, hooks={"Breaker": {"a": 1}})
    ck.save_trainer_state(tmp_path, state)
    raw = torch.load(tmp_path / runfiles.TRAINER_STATE, weights_only=True)
    assert raw["format"] == TRAINER_STATE_FORMAT and raw["hooks"] == {"Breaker": {"a": 1}}
    assert ck.read_trainer_state(tmp_path) == state


def test_trainer_state_of_earlier_versions_still_loads(tmp_path: Path) -> None:
    legacy = {"optimizer": {"state": {}, "param_groups": []}, "epoch": 2, "global_step": 64,
              "checkpoint": "model_000002.pt", "hooks": [{"born": {}}, None]}  # fmt: skip
    torch.save(legacy, tmp_path / runfiles.TRAINER_STATE)
    state = ck.read_trainer_state(tmp_path)
    assert state is not None and state.epoch == 2 and state.hooks == {"#0": {"born": {}}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"optimizer_state_dict": {}, "global_step": 10, "agent_step": 10, "update": 3},
         "PufferLib's trainer state, not pufferfiber's"),
        ({"format": "pufferfiber.trainer_state/7", "optimizer": {}, "epoch": 1},
         "unknown trainer state format"),
        ({"optimizer": {}, "epoch": -1}, "epoch is -1"),
        ({"epoch": 3}, "optimizer is missing"),
        ([1, 2], "not a trainer state file"),
    ],
)  # fmt: skip
def test_foreign_trainer_state_is_refused_in_one_line(
    tmp_path: Path, content: object, message: str
) -> None:
    torch.save(content, tmp_path / runfiles.TRAINER_STATE)
    with pytest.raises(ck.CheckpointError, match=re.escape(message)) as err:
        ck.load_trainer_state(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
