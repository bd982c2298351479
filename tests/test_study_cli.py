"""study/cli.py (``vlm2rec-study``): each subcommand is its script's ``main``; usage and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from study import cli
from study.leaderboard import build_rows, write_leaderboard
from study.records import TrialRecord


def test_leaderboard_command_is_the_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = TrialRecord("t1", params={"loss.alpha": 0.5}, history=[{"epoch": 1, "val/ndcg@10": 0.3}])
    table = build_rows(
        [rec], study="s", metric="val/ndcg@10", mode="max", param_kinds={"loss.alpha": "float"}
    )
    write_leaderboard(table, tmp_path / "s" / "leaderboard.parquet")
    assert cli.main(["leaderboard", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["1", "search", "completed"]  # one study: no id columns
    assert cli.main(["leaderboard", str(tmp_path / "nope")]) == 2  # the script's own exit code


def test_usage_help_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in cli.COMMANDS)
    assert cli.main([]) == 2
    assert cli.main(["serve"]) == 2
    assert "unknown command 'serve'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    assert capsys.readouterr().out.startswith("usage: vlm2rec-study report")
