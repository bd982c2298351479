"""Cluster drills that must run isolated: ``ray up``/``ray down`` over SSH, and two Ray nodes on
this machine that lose one of them.

Run only through ``tests/test_cluster.py``, which starts it in its own PID, mount and network
namespaces, under a bash as PID 1 (:data:`NAMESPACE`)::

    unshare --pid --fork --mount-proc --net -- bash -c '"$@"; exit $?' drill \
        python tests/namespace_drill.py launcher WORK

The bash reaps the processes Ray daemonizes when they exit; a Python PID 1 would leave them
zombies, which ``ray stop`` waits for until the end of its 16 s grace period.

Why: ``ray stop`` (which ``ray down`` runs on the head) kills every Ray process it can see,
whoever started it, and Ray keeps machine-wide state in ``/tmp/ray`` (``ray_current_cluster`` is
what ``address="auto"`` reads) and listens on fixed ports (6379, 8265). In these namespaces it
sees only this drill's processes, its own ``/tmp/ray`` (a bind mount of ``WORK/ray-tmp``), its own
loopback network and its own home (``WORK/home``, root's home in a private copy of
``/etc/passwd``, so sshd logs in there): nothing of the machine's other Ray instances, nor of the
test suite's. When the namespace's PID 1 exits, the kernel kills whatever is left in it.

Each drill writes ``WORK/result.json`` (timings, exit codes, what it saw); the tests assert on it.
Subcommands: ``launcher`` (sshd on 127.0.0.1, ``ray up``/``exec``/``rsync-down``/``down`` of
cluster.local.yaml) and ``two-nodes`` (a head with ``driver`` and a worker node; the worker
node's raylet SIGKILLed mid-trial and started again).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # ray_auth, beside this file

from ray_auth import dashboard_auth  # noqa: E402

BIN = Path(sys.executable).parent  #: the project's virtual environment (ray, python)
#: What marks a Ray process (binaries and scripts under site-packages/ray, renamed workers).
RAY_MARKERS = ("site-packages/ray/", "ray::", "raylet", "gcs_server")
#: The command prefix that isolates a drill (the tests put ``python namespace_drill.py ...`` after).
NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--net", "--")
NAMESPACE += ("bash", "-c", '"$@"; exit $?', "drill")
#: Epochs of the two-node drill's trials (see :func:`two_nodes`).
TWO_NODE_EPOCHS = 5
#: The tiny study of both drills: 2 grid trials, 1 Train worker each, seconds per epoch.
SPACE = """
base = "base.toml"
[study]
name = "tiny"
sampler = "grid"
num_samples = 2
scheduler = "none"
max_t = {epochs}
grace_period = 1
workers_per_trial = {workers}
cpus_per_worker = {cpus}
max_concurrent_trials = 1
reference = false
max_failures = {max_failures}
[params."loss.alpha"]
type = "categorical"
choices = [0.1, 1.0]
"""


# ---- isolation ----------------------------------------------------------------------------------
def run(cmd: Sequence[str | Path], log: Path, timeout: float = 300, **kw: Any) -> tuple[int, float]:
    """Run ``cmd`` (output appended to ``log``); return its exit code and wall seconds."""
    start = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        try:
            rc = subprocess.run(
                [str(c) for c in cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=timeout,
                **kw,
            ).returncode
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"{' '.join(map(str, cmd))[:200]}: no exit in {timeout:.0f} s"
            ) from None
    return rc, time.perf_counter() - start


def must(*cmd: str | Path) -> None:
    """Run a setup command that cannot fail."""
    subprocess.run([str(c) for c in cmd], check=True)


def isolate(work: Path) -> Path:
    """Loopback up, a private /tmp/ray and a private home for root; returns the home."""
    if os.getppid() != 1 or Path("/proc/1/comm").read_text().strip() != "bash":
        sys.exit("namespace_drill.py must run under NAMESPACE's bash, PID 1 (see the docstring)")
    must("ip", "link", "set", "lo", "up")
    ray_tmp = work / "ray-tmp"
    ray_tmp.mkdir()
    Path("/tmp/ray").mkdir(exist_ok=True)  # the mount point; the bind makes it private here
    must("mount", "--bind", ray_tmp, "/tmp/ray")
    home = work / "home"
    home.mkdir(mode=0o700)
    lines = Path("/etc/passwd").read_text().splitlines()
    fields = [line.split(":") for line in lines]
    rows = [[*f[:5], str(home), *f[6:]] if f[0] == "root" else f for f in fields]
    (work / "passwd").write_text("".join(":".join(f) + "\n" for f in rows))
    must("mount", "--bind", work / "passwd", "/etc/passwd")
    (work / "tmp").mkdir()
    # Nothing of the caller's Ray: the suite's own local Ray exports RAY_API_SERVER_ADDRESS, which
    # would point this drill's state API calls at a port in another network namespace.
    for key in [k for k in os.environ if k.startswith(("RAY_", "TUNE_")) or k == "VIRTUAL_ENV"]:
        os.environ.pop(key)
    os.environ.update(
        HOME=str(home),
        TMPDIR=str(work / "tmp"),  # other programs' temporary files
        RAY_TMPDIR="/tmp",  # Ray's: the private /tmp/ray (it would follow TMPDIR otherwise,
        # and the pytest path makes its AF_UNIX socket paths longer than the 107 bytes allowed)
        PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return home


def ray_processes() -> list[str]:
    """Command lines of the live (not zombie) Ray processes this namespace can see."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(m in cmd for m in RAY_MARKERS):
            found.append(f"{proc.info['pid']}: {cmd[:160]}")
    return found


def write_study(root: Path, epochs: int, workers: int, cpus: float, max_failures: int) -> None:
    """The tiny study (base + space) in ``root``; its data folder is built by the study."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TINY_STUDY_BASE

    root.mkdir(parents=True, exist_ok=True)
    base = TINY_STUDY_BASE.format(data="data").replace("epochs = 2", f"epochs = {epochs}")
    (root / "base.toml").write_text(base)
    (root / "space.toml").write_text(
        SPACE.format(epochs=epochs, workers=workers, cpus=cpus, max_failures=max_failures)
    )


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> float:
    """Poll ``cond``; the seconds it took, or SystemExit naming ``what``."""
    start = time.perf_counter()
    while not cond():
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
    return time.perf_counter() - start


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- the cluster launcher over SSH --------------------------------------------------------------
SSHD_CONFIG = """
ListenAddress 127.0.0.1
Port 22
HostKey {host_key}
PidFile {work}/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
PrintMotd no
"""


def start_sshd(work: Path, home: Path) -> subprocess.Popen[bytes]:
    """sshd on 127.0.0.1:22 of this namespace, accepting only a key made here for the drill."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    must("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "host_key")
    must("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ssh / "id_ed25519")
    shutil.copy(ssh / "id_ed25519.pub", ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    (work / "sshd_config").write_text(SSHD_CONFIG.format(host_key=work / "host_key", work=work))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    log = (work / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", work / "sshd_config"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_until(lambda: port_open(22), 30, "sshd on 127.0.0.1:22")
    return proc


def launcher_config(work: Path) -> Path:
    """cluster.local.yaml with this drill's head (127.0.0.1) and SSH user; nothing else changed."""
    cfg = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["auth"]["ssh_user"] = "root"
    path = work / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def launcher(work: Path, result: dict[str, Any]) -> None:
    """``ray up``, a 2-trial study through ``ray exec``, ``ray rsync-down``, ``ray down``."""
    home = isolate(work)
    result["home"] = str(home)
    sshd = start_sshd(work, home)
    log = work / "launcher.log"
    # The node's environment "made once" by cluster.local.yaml's setup: here, this project's.
    (home / "vlm2rec-venv").symlink_to(Path(sys.prefix))
    rc, _ = run(["ray", "get-auth-token", "--generate"], log)  # as the README says, once
    (home / ".ray" / "auth_token").chmod(0o600)
    result["token_rc"] = rc
    write_study(work / "tiny", epochs=1, workers=1, cpus=0.5, max_failures=0)
    cfg = launcher_config(work)
    study = (
        "cd ~/vlm2rec-study && python study/run_search.py --space ~/tiny/space.toml "
        "--storage ~/studies --address auto"
    )
    steps: list[tuple[str, list[str | Path], float]] = [
        ("up", ["ray", "up", "-y", "--no-config-cache", cfg], 180),
        ("rsync_up", ["ray", "rsync-up", cfg, f"{work / 'tiny'}/", "~/tiny/"], 60),
        ("exec", ["ray", "exec", cfg, study], 420),
    ]
    try:
        for name, cmd, timeout in steps:
            result[f"{name}_rc"], result[f"{name}_s"] = run(cmd, log, timeout, cwd=REPO)
            if result[f"{name}_rc"] != 0:
                break
        else:
            result["auth"] = dashboard_auth("127.0.0.1:8265", home / ".ray" / "auth_token")
            down = ["ray", "rsync-down", cfg, "~/studies/tiny/leaderboard.parquet", work]
            result["rsync_down_rc"], result["rsync_down_s"] = run(down, log, cwd=REPO)
        result["alive_before_down"] = len(ray_processes())
    finally:
        result["down_rc"], result["down_s"] = run(["ray", "down", "-y", cfg], log, cwd=REPO)
        time.sleep(1)  # ray stop has sent its signals; let the last ones exit
        result["survivors"] = ray_processes()
        result["bashrc"] = (home / ".bashrc").read_text() if (home / ".bashrc").exists() else ""
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(10)


# ---- two Ray nodes on one machine, one of them lost ----------------------------------------------
#: Every Ray process of the drill: token auth, and Train's controller polling its workers every
#: 0.5 s (as a local study runs it); the health checks that find a dead node keep Ray's defaults,
#: so the time to detect the loss is the one a real cluster has.
NODE_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "PYTHONUNBUFFERED": "1",
}


def mount_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def start_worker_node(study_dir: Path, log: Path) -> None:
    """A Ray worker node in a mount namespace of its own, where the study folder is read-only:
    the proof that only the driver (on the head) writes it. It offers the CPUs the Train workers
    ask for; the head keeps too few for one."""
    script = (
        f"mount --bind {study_dir} {study_dir} && mount -o remount,bind,ro {study_dir} && "
        "exec ray start --address=127.0.0.1:6379 --num-cpus=2"
    )
    rc, _ = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], log, 120)
    if rc != 0:
        raise SystemExit(f"the worker node did not start (rc {rc}); see {log}")


def raylets() -> dict[str, int]:
    """{mount namespace: pid} of the live raylets: the head's shares this drill's namespace."""
    found = {}
    for proc in psutil.process_iter(["pid", "name", "status"]):
        if proc.info["name"] == "raylet" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found[mount_ns(proc.info["pid"])] = proc.info["pid"]
    return found


def nodes() -> list[dict[str, Any]]:
    from ray.util.state import list_nodes

    return [n.__dict__ for n in list_nodes(address="127.0.0.1:6379", detail=True)]


def first_report(study_dir: Path) -> str | None:
    """The trial id of the first record with a reported epoch (its checkpoint is persisted)."""
    for path in sorted((study_dir / "trials").glob("*.json")):
        try:
            if json.loads(path.read_text()).get("history"):
                return path.stem
        except (OSError, ValueError):
            continue
    return None


def kill_node_namespace(ns: str) -> list[str]:
    """SIGKILL what is left of a lost node (its log monitor outlives the raylet)."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and mount_ns(proc.info["pid"]) == ns:
                left.append(" ".join(proc.info["cmdline"] or [])[:120])
                proc.kill()
        except (OSError, psutil.Error):
            continue
    return left


def checkpointed_epoch(run_dir: Path) -> int:
    """The last epoch a Train run has persisted a checkpoint of (0 if none)."""
    epochs = [0]
    for progress in run_dir.glob("checkpoint_*/progress.json"):
        try:
            epochs.append(int(json.loads(progress.read_text())["progress"]["epoch"]))
        except (OSError, ValueError, KeyError):
            continue  # being written
    return max(epochs)


def optuna_states(db: Path) -> dict[str, int]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as con:
        return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


def two_nodes(work: Path, result: dict[str, Any]) -> None:
    """A 2-trial study on a head (`driver`) and a worker node; the worker node's raylet is
    SIGKILLed after the first trial's first checkpoint and the node is started again."""
    home = isolate(work)
    os.environ.update(NODE_ENV)
    log, study_log = work / "nodes.log", work / "study.log"
    run(["ray", "get-auth-token", "--generate"], log)
    (home / ".ray" / "auth_token").chmod(0o600)
    # 5 epochs: Train runs up to two reports ahead of the study's records (the bridge holds one,
    # the controller waits to put the next), so the first record can arrive with epoch 3 already
    # checkpointed; with 3 epochs a slow CI machine once killed a trial that had nothing left to
    # train, and the drill waited in vain for an epoch after the kill.
    write_study(work / "tiny", epochs=TWO_NODE_EPOCHS, workers=1, cpus=1.0, max_failures=2)
    study_dir, shared = work / "studies" / "tiny", work / "shared-train"
    study_dir.mkdir(parents=True)
    head = [
        "ray", "start", "--head", "--port=6379", "--num-cpus=1", "--resources={\"driver\":64}",
        "--dashboard-host=127.0.0.1",
    ]  # fmt: skip
    result["head_rc"], result["head_s"] = run(head, log, timeout=120)
    if result["head_rc"] != 0:
        raise SystemExit(f"the head did not start (rc {result['head_rc']}); see {log}")
    start_worker_node(study_dir, log)
    wait_until(lambda: len(raylets()) == 2, 60, "two raylets")
    ours = mount_ns(os.getpid())
    result["nodes_before"] = [(n["node_id"], n["is_head_node"], n["state"]) for n in nodes()]
    argv = [
        sys.executable,
        REPO / "study" / "run_search.py",
        "--space",
        work / "tiny" / "space.toml",
    ]
    argv += ["--storage", work / "studies", "--address", "auto", "--train-storage", shared]
    t0 = time.perf_counter()
    with study_log.open("wb") as out:
        driver = subprocess.Popen(
            [str(a) for a in argv], cwd=work, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: first_report(study_dir) is not None, 300, "the first epoch", 0.1)
        result["killed_trial"] = first_report(study_dir)
        (lost_ns,) = [ns for ns in raylets() if ns != ours]
        lost = {n["node_id"] for n in nodes() if not n["is_head_node"]}
        t_kill = time.perf_counter()
        os.kill(raylets()[lost_ns], signal.SIGKILL)
        done = checkpointed_epoch(shared / f"train-{result['killed_trial']}")
        result["checkpointed_epoch_at_kill"] = done
        if done >= TWO_NODE_EPOCHS:
            raise SystemExit(f"the trial had checkpointed all {done} epochs before the kill")
        result["kill_at_s"] = t_kill - t0
        result["detect_s"] = wait_until(
            lambda: all(n["state"] == "DEAD" for n in nodes() if n["node_id"] in lost), 120,
            "the head to mark the lost node dead", 0.25,
        )  # fmt: skip
        result["left_of_lost_node"] = kill_node_namespace(lost_ns)
        start_worker_node(study_dir, log)
        result["restart_s"] = time.perf_counter() - t_kill
        trial = study_dir / "trials" / f"{result['killed_trial']}.json"

        def trained_after_kill() -> bool:  # an epoch past the last checkpoint at the kill
            history = json.loads(trial.read_text())["history"]
            return any(h["epoch"] > done for h in history)

        wait_until(trained_after_kill, 300, "an epoch trained after the kill")
        result["resumed_s"] = time.perf_counter() - t_kill
        result["driver_rc"] = driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    result["wall_s"] = time.perf_counter() - t0
    (worker_ns,) = [ns for ns in raylets() if ns != ours]
    probe = ["nsenter", f"--mount=/proc/{raylets()[worker_ns]}/ns/mnt", "touch", study_dir / "x"]
    result["worker_write_rc"], _ = run(probe, log)
    result["nodes_after"] = [(n["node_id"], n["is_head_node"], n["state"]) for n in nodes()]
    from ray.util.state import list_actors

    actors = list_actors(address="127.0.0.1:6379", limit=10_000, detail=True)
    result["actors"] = [(a.class_name, a.node_id, a.state) for a in actors]
    result["optuna"] = optuna_states(study_dir / "optuna.db")
    result["checkpoints"] = sorted(
        str(p.relative_to(shared)) for p in shared.glob("*/checkpoint_*")
    )
    result["study_files"] = sorted(str(p.relative_to(study_dir)) for p in study_dir.rglob("*"))
    result["stop_rc"], _ = run(["ray", "stop"], log)
    time.sleep(1)
    result["survivors"] = ray_processes()


def main(argv: list[str]) -> int:
    mode, work = argv[0], Path(argv[1]).resolve()
    drills = {"launcher": launcher, "two-nodes": two_nodes}
    result: dict[str, Any] = {}
    try:
        drills[mode](work, result)
    except SystemExit as exc:  # a drill step timed out or found its setup wrong
        result["failed"] = str(exc)
    finally:
        (work / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
