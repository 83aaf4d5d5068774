"""benchmarks/upstream_sps.py and its driver: the pure parts (argument checks, output parsing,
the ratio and median arithmetic, the timing loop, the build's PATH filter).

No build and no measurement runs here: those need the registry once and minutes of CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import upstream_driver
import upstream_sps


def test_defaults_and_game_list(tmp_path: Path) -> None:
    args = upstream_sps.parse_args(["--cache", str(tmp_path)])
    assert args.games == ["puffer_pong"]
    assert (args.rounds, args.seconds, args.torch_threads) == (3, 60.0, 2)
    argv = ["--game", " puffer_pong ,puffer_breakout", "--rounds", "5", "--cache", str(tmp_path)]
    args = upstream_sps.parse_args(argv)
    assert args.games == ["puffer_pong", "puffer_breakout"] and args.rounds == 5
    assert args.cache == tmp_path.resolve()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--game", "puffer_tetris"], "unknown game 'puffer_tetris'"),
        (["--game", ","], "no game"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--torch-threads", "0"], "--torch-threads must be at least 1"),
        (["--timeout", "-1"], "--timeout must be positive"),
        (["--cache", str(upstream_sps.REPO / "cache")], "inside the repository"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        upstream_sps.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_default_cache_is_outside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert upstream_sps.default_cache() == Path.home() / ".cache" / "pufferfiber" / "upstream"
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")
    assert upstream_sps.default_cache() == Path("/elsewhere/pufferfiber/upstream")


def test_parse_result_reads_the_last_result_line_among_dashboard_output() -> None:
    dashboard = (
        "\x1b[0;0H PufferLib 2.0.6  SPS 10.5k\nRESULT sps=1.0 steps=1 seconds=1.000 epochs=1\n"
    )
    out = dashboard + "SPS 3k\n" + upstream_driver.result_line(196_608, 8.0, 3) + "\n"
    result = upstream_sps.parse_result(out)
    assert (result.steps, result.seconds, result.epochs) == (196_608, 8.0, 3)
    assert result.sps == pytest.approx(24_576.0)


@pytest.mark.parametrize(
    "out",
    [
        "",
        "SPS 79k\n",
        "RESULT sps=abc steps=1 seconds=1 epochs=1\n",
        "RESULT sps=0.0 steps=0 seconds=0.000 epochs=0\n",
        "RESULT sps=1.0 steps=1 seconds=1.0\n",  # the old format, without epochs
    ],
)
def test_parse_result_refuses_output_without_a_usable_result(out: str) -> None:
    with pytest.raises(ValueError):
        upstream_sps.parse_result(out)


def test_ratio_line_format() -> None:
    line = upstream_sps.ratio_line("pufferlib-2.0.6", "puffer_pong", 22_600 / 11_000)
    assert line == "ratio pufferfiber/pufferlib-2.0.6 puffer_pong: 2.05"
    assert upstream_sps.ratio_line("pufferlib-3.0", "puffer_breakout", 0.5) == (
        "ratio pufferfiber/pufferlib-3.0 puffer_breakout: 0.50"
    )


def test_median_ratio_is_the_median_of_per_round_ratios() -> None:
    # ratios 0.5, 2.0, 1.0 -> median 1.0; the ratio of medians would be 20/20 = 1.0 too, so a
    # second case where they differ: ratios 1, 1, 4 (median 1) against medians 20 / 10 = 2.
    assert upstream_sps.median_ratio([10, 40, 20], [20, 20, 20]) == pytest.approx(1.0)
    assert upstream_sps.median_ratio([10, 20, 40], [10, 20, 10]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        upstream_sps.median_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        upstream_sps.median_ratio([], [])


def test_timed_skips_the_warm_up_and_runs_whole_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(upstream_driver.time, "perf_counter", lambda: next(clock))
    counter = {"steps": 0}

    def epoch() -> None:
        counter["steps"] += 1000

    steps, seconds, epochs = upstream_driver.timed(epoch, lambda: counter["steps"], 2.5)
    # the clock reads 0 at the start, then 1, 2, 3 after each timed epoch: 3 epochs, 3 s; the
    # warm-up's 1000 steps are not counted
    assert (steps, seconds, epochs) == (3000, 3.0, 3)


def test_env_kwargs_keep_only_what_the_upstream_constructor_takes() -> None:
    class Game:
        def __init__(self, num_envs: int = 1, frameskip: int = 1, width: int = 500) -> None:
            pass

    kwargs = upstream_driver.env_kwargs_for(Game, {"frameskip": 4, "brick_rows": 6}, 1024)
    assert kwargs == {"frameskip": 4, "num_envs": 1024}


def test_no_cuda_path_drops_folders_holding_nvcc(tmp_path: Path) -> None:
    cuda, plain = tmp_path / "cuda", tmp_path / "plain"
    cuda.mkdir()
    plain.mkdir()
    nvcc = cuda / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    assert upstream_sps.no_cuda_path(f"{cuda}:{plain}:") == str(plain)


def test_machine_and_load_are_one_line() -> None:
    assert "logical cores" in upstream_sps.machine()
    assert len(upstream_sps.load().split("/")) == 3
