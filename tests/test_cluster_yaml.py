"""Every cluster YAML in the repo passes Ray's own `ray up` validation plus the project's checks."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}

#: node_config keys each provider forwards to its cloud API; anything else is a typo that Ray's
#: schema cannot see (node_config is free-form there) and the cloud rejects only at `ray up`.
NODE_CONFIG_KEYS = {
    "aws": {
        "InstanceType", "ImageId", "KeyName", "SubnetIds", "SubnetId", "SecurityGroupIds",
        "IamInstanceProfile", "BlockDeviceMappings", "InstanceMarketOptions", "TagSpecifications",
        "UserData", "Placement", "NetworkInterfaces", "EbsOptimized", "MetadataOptions",
        "CapacityReservationSpecification", "LaunchTemplate",
    },
    "gcp": {
        "machineType", "disks", "guestAccelerators", "scheduling", "serviceAccounts", "metadata",
        "labels", "networkInterfaces", "tags", "minCpuPlatform", "acceleratorType",
        "runtimeVersion", "networkConfig", "schedulingConfig", "serviceAccount",
    },
    "local": set(),
}  # fmt: skip


def cluster_files() -> list[Path]:
    """YAML files whose top level names a `provider`: what `ray up` would accept."""
    found = []
    for path in sorted([*REPO.rglob("*.yaml"), *REPO.rglob("*.yml")]):
        if SKIP_DIRS & set(path.relative_to(REPO).parts):
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "provider" in data:
            found.append(path)
    return found


FILES = cluster_files()


def ray_validate(raw: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before touching a cloud (docs/ARCHITECTURE.md, "Ray traps"): defaults,
    then the JSON schema.

    AWS fills each node type's `resources` from the instance type at `ray up`; the schema needs
    the key, so an absent one is given as empty here.
    """
    cfg = prepare_config(copy.deepcopy(raw))
    for node_type in cfg.get("available_node_types", {}).values():
        node_type.setdefault("resources", {})
    validate_config(cfg)
    return cfg


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_repo_ships_a_cluster_file() -> None:
    assert REPO / "cluster.yaml" in FILES


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES])
def test_ray_up_validation_passes(path: Path) -> None:
    cfg = ray_validate(load(path))
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES])
def test_node_config_keys_are_known(path: Path) -> None:
    raw = load(path)
    known = NODE_CONFIG_KEYS[raw["provider"]["type"]]
    for name, node_type in raw.get("available_node_types", {}).items():
        unknown = set(node_type.get("node_config", {})) - known
        assert not unknown, f"{path}: available_node_types.{name}.node_config: unknown {unknown}"


def dashboard_hosts(commands: list[str]) -> list[str]:
    hosts = []
    for command in commands:
        for part in command.split(";"):
            tokens = shlex.split(part)
            for i, tok in enumerate(tokens):
                if tok.startswith("--dashboard-host="):
                    hosts.append(tok.split("=", 1)[1])
                elif tok == "--dashboard-host" and i + 1 < len(tokens):
                    hosts.append(tokens[i + 1])
    return hosts


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES])
def test_dashboard_is_on_and_bound_to_loopback(path: Path) -> None:
    commands = load(path).get("head_start_ray_commands", [])
    assert not any(re.search(r"--include-dashboard[= ](false|0)", c) for c in commands), (
        f"{path}: the dashboard must stay on (it frees stopped trials' placement groups)"
    )
    hosts = dashboard_hosts(commands)
    assert hosts, f"{path}: head_start_ray_commands must pass --dashboard-host=127.0.0.1"
    assert set(hosts) <= {"127.0.0.1", "localhost"}, f"{path}: dashboard exposed on {hosts}"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES])
def test_docker_images_match_installed_ray(path: Path) -> None:
    docker = load(path).get("docker", {})
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    for image in images:
        repo, _, tag = image.partition(":")
        assert repo == "rayproject/ray", f"{path}: {image}: use rayproject/ray (ray-ml ended)"
        assert tag.split("-")[0] == ray.__version__, f"{path}: {image} != ray {ray.__version__}"


def test_drivers_pinned_to_head_and_gpus_on_workers() -> None:
    raw = load(REPO / "cluster.yaml")
    types = raw["available_node_types"]
    head = types.pop(raw["head_node_type"])
    assert head["resources"].get("driver", 0) >= 1 and head["resources"].get("GPU", 0) == 0
    assert types and all("driver" not in t["resources"] for t in types.values())
    assert {t["resources"]["GPU"] for t in types.values()} == {1, 4}
    assert any(t["node_config"].get("InstanceMarketOptions") for t in types.values())
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is never reclaimed
    assert any("pip install" in c and "vlm2rec-study" in c for c in raw["setup_commands"])
    assert "~/vlm2rec-study" in raw["file_mounts"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c.__setitem__("idle_timout_minutes", c.pop("idle_timeout_minutes")),
            "idle_timout",
        ),
        (lambda c: c["docker"].__setitem__("pull_befor_run", True), "pull_befor_run"),
        (lambda c: c["available_node_types"]["head"].__setitem__("min_worker", 0), "min_worker"),
    ],
    ids=["top-level", "docker", "node-type"],
)
def test_misspelt_key_fails_ray_validation(edit: Any, message: str) -> None:
    raw = load(REPO / "cluster.yaml")
    edit(raw)
    with pytest.raises(jsonschema.ValidationError, match=rf"Additional properties.*{message}"):
        ray_validate(raw)


def test_misspelt_node_config_key_fails_own_check() -> None:
    raw = load(REPO / "cluster.yaml")
    node_config = raw["available_node_types"]["gpu_1x"]["node_config"]
    node_config["InstanceTyp"] = node_config.pop("InstanceType")
    ray_validate(raw)  # Ray's schema lets node_config through: hence the project's own check
    unknown = set(node_config) - NODE_CONFIG_KEYS["aws"]
    assert unknown == {"InstanceTyp"}


def _ray_starts(commands: list[str]) -> list[str]:
    return [part for c in commands for part in c.split(";") if "ray start" in part]


def test_local_file_shares_the_start_commands_and_the_token() -> None:
    """cluster.local.yaml is cluster.yaml over SSH: the same start commands (so the same `driver`
    resource and auth mode), the token copied from the launching machine to every node."""
    aws, local = load(REPO / "cluster.yaml"), load(REPO / "cluster.local.yaml")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert local[key] == aws[key], key
    for raw in (aws, local):
        starts = _ray_starts(raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])
        assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in s for s in starts)
        (head,) = _ray_starts(raw["head_start_ray_commands"])
        assert "--resources='{\"driver\":64}'" in head
        assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
        assert "studies/" in raw["rsync_exclude"]  # local study outputs stay local
    assert local["provider"]["type"] == "local" and "docker" not in local
    # Ray runs commands in a login shell that sources ~/.bashrc: the venv must be on its PATH.
    assert any("vlm2rec-venv/bin" in c and ".bashrc" in c for c in local["setup_commands"])
