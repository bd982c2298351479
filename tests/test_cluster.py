"""``ray up`` for real: cluster.local.yaml against an sshd on 127.0.0.1, a 2-trial study through
``ray exec --address auto``, its leaderboard fetched with ``ray rsync-down``, then ``ray down``.

The drill runs in its own PID, mount and network namespaces (tests/namespace_drill.py says why):
``ray down`` runs ``ray stop``, which kills every Ray process it can see. About 2.5 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from namespace_drill import NAMESPACE, TWO_NODE_EPOCHS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
#: Commands the drills need and the Debian packages that bring them (.ci/run installs these).
TOOLS = {
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "rsync": "rsync",
    "ip": "iproute2",
    "unshare": "util-linux",
    "mount": "mount",
}


def run_drill(mode: str, work: Path, timeout: float) -> dict[str, Any]:
    """Run ``namespace_drill.py MODE WORK`` isolated; its result.json (the log on failure)."""
    if os.geteuid() != 0:
        pytest.skip("the cluster drills need root: sshd, and PID/mount/network namespaces")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    assert not missing, f"install the Debian packages {missing} (.ci/run does)"
    work.mkdir(mode=0o700)  # sshd's StrictModes: the home inside must not be open to others
    cmd = [*NAMESPACE, sys.executable, str(HERE / "namespace_drill.py"), mode, str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    result_file = work / "result.json"
    assert result_file.exists(), f"the drill died (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(result_file.read_text())
    assert proc.returncode == 0, f"the drill raised (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "failed" not in result, result["failed"]
    return result


def test_ray_up_exec_rsync_down_and_down_over_ssh(tmp_path: Path) -> None:
    work = tmp_path / "launcher"
    result = run_drill("launcher", work, timeout=540)
    log = (work / "launcher.log").read_text()
    for step in ("token", "up", "rsync_up", "exec", "rsync_down", "down"):
        assert result[f"{step}_rc"] == 0, f"{step} failed:\n{log[-6000:]}"
    # The head came up as cluster.yaml's does: the `driver` resource, token authentication.
    (offered,) = [line for line in log.splitlines() if line.startswith("ray:  ")]
    assert "driver 64" in offered, offered
    assert result["auth"] == {"mode": "token", "without_token": 401, "with_token": 200}
    rows = pq.read_table(work / "leaderboard.parquet").to_pylist()
    assert sorted(r["param.loss.alpha"] for r in rows) == [0.1, 1.0]
    assert {(r["status"], r["epochs"]) for r in rows} == {("completed", 1)}
    # cluster.local.yaml's setup put the node's environment on the login shell's PATH.
    assert 'export PATH="$HOME/vlm2rec-venv/bin:$PATH"' in result["bashrc"]
    # `ray down` ended every Ray process the drill had started, and there were some.
    assert result["alive_before_down"] > 0 and result["survivors"] == []
    print(
        "ray up {up_s:.0f} s, rsync-up {rsync_up_s:.0f} s, exec (2-trial study) {exec_s:.0f} s, "
        "rsync-down {rsync_down_s:.0f} s, down {down_s:.0f} s".format(**result)
    )


def test_study_across_two_nodes_survives_losing_the_worker_node(tmp_path: Path) -> None:
    """A head with `driver` and a worker node on this machine (told apart by node id: both have
    the same IP). Train workers run on the worker node, where the study folder is mounted
    read-only; checkpoints go to --train-storage. After the first trial's first checkpoint the
    worker node's raylet is SIGKILLed; the node is started again once the head marks it dead,
    and the trial resumes from that checkpoint. About 2 minutes."""
    work = tmp_path / "nodes"
    result = run_drill("two-nodes", work, timeout=560)
    log = (work / "study.log").read_text()
    assert result["head_rc"] == 0 and result["driver_rc"] == 0, log[-6000:]
    head = {n for n, is_head, _ in result["nodes_before"] if is_head}
    (lost,) = {n for n, is_head, _ in result["nodes_before"] if not is_head}
    states = {n: state for n, _, state in result["nodes_after"]}
    (new,) = {n for n, state in states.items() if state == "ALIVE"} - head
    assert states[lost] == "DEAD"
    placed: dict[str, set[str]] = {}
    for cls, node, _ in result["actors"]:
        placed.setdefault(cls, set()).add(node)
    assert placed["RayTrainWorker"] == {lost, new}  # never on the head
    assert placed["TrainController"] == head and placed["ImplicitFunc"] == head  # drivers stay
    assert result["worker_write_rc"] != 0  # the worker node cannot write the study folder
    killed = result["killed_trial"]
    rows = pq.read_table(work / "studies" / "tiny" / "leaderboard.parquet").to_pylist()
    assert sorted(r["trial_id"] for r in rows) == sorted({r["trial_id"] for r in rows})
    assert killed in {r["trial_id"] for r in rows} and len(rows) == 2
    assert {(r["status"], r["epochs"]) for r in rows} == {("completed", TWO_NODE_EPOCHS)}
    assert all(r["checkpoint_path"].startswith(str(work / "shared-train")) for r in rows)
    # Resumed from the first checkpoint: every epoch of the killed trial reported exactly once.
    for epoch in range(1, TWO_NODE_EPOCHS + 1):
        assert log.count(f" search-{killed}  epoch {epoch}/") == 1, log[-6000:]
    assert result["optuna"] == {"COMPLETE": 2}  # no trial left RUNNING
    assert result["survivors"] == []
    walls = {r["trial_id"]: r["wall_s"] for r in rows}
    (other,) = set(walls) - {killed}
    done = result["checkpointed_epoch_at_kill"]
    assert 1 <= done < TWO_NODE_EPOCHS  # killed mid-trial, after its first checkpoint
    print(
        f"node loss: killed {result['kill_at_s']:.0f} s into the study, during epoch {done + 1} "
        f"(epoch {done} checkpointed: the part of epoch {done + 1} done before the kill was "
        f"trained again, no finished epoch); marked dead after {result['detect_s']:.1f} s, "
        f"node back after "
        f"{result['restart_s']:.1f} s, epoch {done + 1} reported {result['resumed_s']:.1f} s "
        f"after the kill; killed trial {walls[killed]:.0f} s vs {walls[other]:.0f} s "
        f"untouched; study wall {result['wall_s']:.0f} s"
    )
