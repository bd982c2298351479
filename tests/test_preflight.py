"""Bad input to ``run_search.py``: each one is exit code 2 and ONE ``error:`` line naming the problem,
before any Ray trial starts (Ray is never even initialised here); the checks live in study/plan.py."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from study import plan, run_search
from study.search_space import load_search_spec
from vlm2rec.data.schema import PreparedDataset

BASE = """
seed = 0
[data]
path = "{data}"
prepare_if_missing = {prepare}
history_length = 3
[data.synthetic]
seed = 0
users = 60
items = 32
shapes = 4
brands = 4
colours = 2
min_length = 5
max_length = 10
image_size = 16
[embedder]
name = "{model}"
finetune = "full"
[train]
epochs = 2
batch_size = 16
"""

SPACE = """
base = "base.toml"
[study]
name = "pf"
num_samples = 2
max_t = 2
grace_period = 1
workers_per_trial = {workers}
cpus_per_worker = 0.5
gpus_per_worker = {gpus}
[params."loss.alpha"]
type = "float"
low = {low}
high = 1.0
log = {log}
"""


def _write(
    root: Path,
    *,
    data: Path | None = None,
    prepare: bool = True,
    model: str = "tiny-clip",
    workers: int = 2,
    gpus: float = 0,
    low: float = 0.1,
    log: bool = True,
    base_edit: tuple[str, str] = ("", ""),
    space_edit: tuple[str, str] = ("", ""),
) -> list[str]:
    """A valid tiny study (then optionally broken by one text edit); returns the argv."""
    base = BASE.format(
        data=data or root / "data", prepare=str(prepare).lower(), model=model
    ).replace(*base_edit)
    space = SPACE.format(workers=workers, gpus=gpus, low=low, log=str(log).lower())
    (root / "base.toml").write_text(base)
    (root / "space.toml").write_text(space.replace(*space_edit))
    return ["--space", str(root / "space.toml"), "--storage", str(root / "studies")]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line; return that line."""
    assert run_search.main(argv) == run_search.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def _ray_up() -> bool:
    ray = sys.modules.get("ray")  # imported only if some test (here or elsewhere) needed it
    return bool(ray is not None and ray.is_initialized())


@pytest.fixture(autouse=True)
def _no_ray_start() -> Iterator[None]:
    """Nothing here may start Ray (a shared instance from another test file may already run)."""
    before = _ray_up()
    yield
    assert _ray_up() == before


@pytest.fixture
def dataset(tiny_dataset: PreparedDataset, tmp_path: Path) -> Path:
    """A writable copy of the session's tiny synthetic dataset (same knobs as BASE)."""
    return Path(shutil.copytree(tiny_dataset.path, tmp_path / "copied"))


# ---- the valid study passes --------------------------------------------------------------------
def test_valid_study_dry_run_passes_preflight(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path, data=dataset, prepare=False)
    assert run_search.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "preflight ok" in out.out and out.err == ""


# ---- config files ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "edit", "expect"),
    [
        ("space", ("num_samples = 2", "num_sampels = 2"), "study.num_sampels"),
        ("space", ("workers_per_trial = 2", "workers_per_trial = 0"), "study.workers_per_trial"),
        ("space", ('name = "pf"', 'name = "a/b"'), "study.name"),
        ("base", ("epochs = 2", "epoch = 2"), "train.epoch"),
        ("base", ("epochs = 2", "epochs = 0"), "train.epochs"),
        ("base", ('finetune = "full"', 'finetune = "fulll"'), "embedder.finetune"),
        ("base", ("batch_size = 16", 'batch_size = "16"'), "train.batch_size"),
    ],
)
def test_unknown_key_or_out_of_range_value_names_file_and_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    edit: tuple[str, str],
    expect: str,
) -> None:
    argv = _write(tmp_path, **{f"{where}_edit": edit})  # type: ignore[arg-type]
    line = _refused(argv, capsys)
    assert expect in line and f"{where}.toml" in line


@pytest.mark.parametrize(
    ("low", "log", "expect"),
    [(2.0, False, "must be < high"), (1.0, False, "must be < high"), (0.0, True, "log")],
)
def test_empty_or_log_invalid_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], low: float, log: bool, expect: str
) -> None:
    line = _refused(_write(tmp_path, low=low, log=log), capsys)
    assert 'params."loss.alpha".low' in line and expect in line


# ---- dataset -----------------------------------------------------------------------------------
#: A real (not dry) run imports Ray and Tune before refusing: seconds on a loaded machine.
DRY_AND_REAL = [True, pytest.param(False, marks=pytest.mark.slow)]


@pytest.mark.parametrize("dry_run", DRY_AND_REAL)
def test_missing_dataset_without_prepare_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    missing = tmp_path / "no-such-data"
    argv = _write(tmp_path, data=missing, prepare=False)
    line = _refused([*argv, "--dry-run"] if dry_run else argv, capsys)
    assert str(missing) in line and "prepare_if_missing = false" in line
    assert not missing.exists()


def test_missing_dataset_with_prepare_is_fine_in_a_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path, data=tmp_path / "later", prepare=True)
    assert run_search.main([*argv, "--dry-run"]) == 0
    assert not (tmp_path / "later").exists()  # a dry run builds nothing


def test_dataset_failing_validation_names_the_file(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dataset / "meta.json").write_text("{not json")
    argv = _write(tmp_path, data=dataset, prepare=False)
    line = _refused([*argv, "--dry-run"], capsys)
    assert str(dataset / "meta.json") in line and "invalid JSON" in line


@pytest.mark.slow
def test_dataset_failing_validation_stops_a_real_run_before_ray(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    del meta["fingerprint"]
    (dataset / "meta.json").write_text(json.dumps(meta))
    line = _refused(_write(tmp_path, data=dataset, prepare=False), capsys)
    assert str(dataset / "meta.json") in line and "fingerprint" in line


# ---- model path --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("/abs/model", True),
        ("./rel/model", True),
        ("../model", True),
        ("~/models/x", True),
        ("models/qwen/ckpt", True),
        ("Qwen/Qwen2-VL-2B-Instruct", False),
        ("tiny-clip", False),
    ],
)
def test_looks_like_path(name: str, is_path: bool) -> None:
    assert plan.looks_like_path(name) is is_path


@pytest.mark.parametrize("name", ["{root}/no-model", "./no-such-model-dir", "~/no/such/model"])
def test_missing_model_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    name = name.format(root=tmp_path)
    line = _refused([*_write(tmp_path, model=name), "--dry-run"], capsys)
    assert f"embedder.name = {name!r}" in line and "does not exist" in line


def test_hub_id_and_existing_model_folder_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_search.main([*_write(tmp_path, model="org/model"), "--dry-run"]) == 0
    (tmp_path / "m").mkdir()
    assert run_search.main([*_write(tmp_path, model=str(tmp_path / "m")), "--dry-run"]) == 0
    assert capsys.readouterr().err == ""


def test_missing_searched_model_choice_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path)
    choice = tmp_path / "gone"
    with (tmp_path / "space.toml").open("a") as fh:
        fh.write('[params."embedder.name"]\ntype = "categorical"\n')
        fh.write(f'choices = ["tiny-clip", "{choice}"]\n')
    text = (tmp_path / "space.toml").read_text().replace("num_samples = 2", "num_samples = 4")
    (tmp_path / "space.toml").write_text(text)
    assert run_search.main([*argv, "--dry-run"]) == 0  # only those trials fail; the study goes on
    err = capsys.readouterr().err
    assert err.startswith("warning:") and str(choice) in err


# ---- resources ---------------------------------------------------------------------------------
def test_preflight_counts_trials_that_fit(tmp_path: Path) -> None:
    _write(tmp_path)
    spec = load_search_spec(tmp_path / "space.toml")
    assert plan.trial_resources(spec) == {"CPU": 1.5, "GPU": 0.0}
    assert plan.preflight(spec, {"CPU": 4.0, "GPU": 0.0}) == 2
    with pytest.raises(plan.PreflightError, match=r"CPU=1\.5"):
        plan.preflight(spec, {"CPU": 1.0})


@pytest.mark.parametrize("dry_run", DRY_AND_REAL)
def test_gpu_trial_on_a_cpu_machine_is_refused_without_starting_ray(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool,
) -> None:
    monkeypatch.setattr(run_search, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    argv = _write(tmp_path, gpus=1)
    line = _refused([*argv, "--dry-run"] if dry_run else argv, capsys)
    assert "GPU=2" in line and "cluster has GPU=0" in line


def test_too_many_workers_for_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused([*_write(tmp_path, workers=100_000), "--dry-run"], capsys)  # real resources
    assert "one trial needs CPU=" in line


# ---- metrics no trial reports ------------------------------------------------------------------
def _add_eval(root: Path, body: str) -> None:
    with (root / "base.toml").open("a") as fh:
        fh.write(f"[eval]\n{body}\n")


def test_study_metric_no_trial_reports_is_refused_with_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path, space_edit=('name = "pf"', 'name = "pf"\nmetric = "val/ndcg@11"'))
    line = _refused([*argv, "--dry-run"], capsys)
    assert "study.metric = 'val/ndcg@11'" in line and "space.toml" in line
    assert "did you mean val/ndcg@10" in line


@pytest.mark.slow
def test_study_metric_no_trial_reports_stops_a_real_run_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path, space_edit=('name = "pf"', 'name = "pf"\nmetric = "val/recal@10"'))
    line = _refused(argv, capsys)
    assert "study.metric = 'val/recal@10'" in line and "val/recall@10" in line


def test_eval_metric_no_trial_reports_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path)
    _add_eval(tmp_path, 'metric = "train/los"')
    line = _refused([*argv, "--dry-run"], capsys)
    assert "eval.metric = 'train/los'" in line and "did you mean train/loss" in line


def test_sampled_protocol_metrics_exist_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampled = ('name = "pf"', 'name = "pf"\nmetric = "val/sampled5/hit@10"')
    argv = _write(tmp_path, space_edit=sampled)
    line = _refused([*argv, "--dry-run"], capsys)
    assert "val/sampled5/hit@10" in line
    _add_eval(tmp_path, "sampled_negatives = 5")
    assert run_search.main([*argv, "--dry-run"]) == 0


def test_oracle_metrics_count_only_on_synthetic_data(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    oracle = ('name = "pf"', 'name = "pf"\nmetric = "val/oracle/ndcg@10"')
    argv = _write(tmp_path, data=dataset, prepare=False, space_edit=oracle)
    assert run_search.main([*argv, "--dry-run"]) == 0  # the synthetic benchmark reports it
    meta = json.loads((dataset / "meta.json").read_text())
    (dataset / "meta.json").write_text(json.dumps({**meta, "name": "table"}))
    line = _refused([*argv, "--dry-run"], capsys)
    assert "val/oracle/ndcg@10" in line and "did you mean" in line


def test_study_metric_must_be_eval_metric_when_epochs_skip_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path, space_edit=('name = "pf"', 'name = "pf"\nmetric = "val/recall@10"'))
    assert run_search.main([*argv, "--dry-run"]) == 0  # every epoch validates: all keys there
    _add_eval(tmp_path, "every_epochs = 2")
    line = _refused([*argv, "--dry-run"], capsys)
    assert "eval.every_epochs = 2" in line and "eval.metric = 'val/ndcg@10'" in line


# ---- nothing to search ---------------------------------------------------------------------------
def _no_params(root: Path, study_lines: str = "") -> list[str]:
    argv = _write(root)
    text = (root / "space.toml").read_text()
    text = text[: text.index("[params.")].replace('name = "pf"', f'name = "pf"\n{study_lines}')
    (root / "space.toml").write_text(text)
    return argv


def test_space_with_nothing_to_search_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused([*_no_params(tmp_path), "--dry-run"], capsys)
    assert "space.toml" in line and "[params] is empty" in line
    line = _refused([*_no_params(tmp_path, "seeds = [4]"), "--dry-run"], capsys)  # one seed: fixed
    assert "[params] is empty" in line


def test_seeds_only_study_runs_as_a_grid_without_optuna(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = 'seeds = [0, 1]\nsampler = "grid"\nscheduler = "none"'
    argv = _no_params(tmp_path, seeds)  # num_samples = 2: one trial per seed
    assert run_search.main([*argv, "--dry-run"]) == 0
    assert "seeds only: one trial per seed [0, 1], no sampler" in capsys.readouterr().out
    spec = load_search_spec(tmp_path / "space.toml")
    assert spec.seeds_only and [p.path for p in spec.params] == ["seed"]


def test_seeds_only_tune_setup_has_no_searcher_and_no_scheduler(tmp_path: Path) -> None:
    """What the seeds-only study hands Tune: a grid over the seeds, no Optuna, FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from study.records import StudyFolder
    from study.tune_runner import tune_setup

    _no_params(tmp_path, 'seeds = [0, 1]\nsampler = "grid"\nscheduler = "none"')
    spec = load_search_spec(tmp_path / "space.toml")
    folder = StudyFolder(tmp_path / "studies" / "pf")
    space, config = tune_setup("search", spec, folder, "pf", concurrent=1)
    assert space == {"seed": {"grid_search": [0, 1]}}
    assert config.search_alg is None and isinstance(config.scheduler, FIFOScheduler)
    assert config.num_samples == 1  # the grid makes one trial per seed
    assert config.reuse_actors  # no early stopping: a finished trial's process runs the next one
    assert not folder.optuna_db.exists()
    _write(tmp_path)  # a searched parameter: Optuna again, with its database
    folder.root.mkdir(parents=True)
    spec = load_search_spec(tmp_path / "space.toml")
    space, config = tune_setup("search", spec, folder, "pf", 1)
    from study.searcher import StudySearcher

    assert isinstance(config.search_alg, StudySearcher) and list(space) == ["loss.alpha"]
    assert folder.optuna_db.exists()
    # a trial ASHA stops aborts its Train run (study.bridge), so its process can run the next one
    assert spec.study.scheduler == "asha" and config.reuse_actors


# ---- storage: a dry run checks what a real run does ----------------------------------------------
@pytest.mark.parametrize("where", ["/proc/vlm2rec-x", "{root}/file-not-folder/sub"])
@pytest.mark.parametrize("dry_run", DRY_AND_REAL)
def test_unusable_storage_is_refused_by_dry_and_real_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, dry_run: bool
) -> None:
    (tmp_path / "file-not-folder").write_text("")
    storage = where.format(root=tmp_path)
    argv = [*_write(tmp_path), "--storage", storage]
    line = _refused([*argv, "--dry-run"] if dry_run else argv, capsys)
    assert f"study folder {storage}/pf is not writable" in line


def test_dry_run_creates_no_study_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _write(tmp_path)
    assert run_search.main([*argv, "--dry-run"]) == 0
    assert not (tmp_path / "studies").exists()


# ---- the token of a local Ray --------------------------------------------------------------------
def test_local_token_is_made_owner_only_and_a_readable_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.tune_runner import ensure_private_token

    monkeypatch.setenv("HOME", str(tmp_path))
    token = tmp_path / ".ray" / "auth_token"
    assert ensure_private_token({"RAY_AUTH_MODE": "disabled"}) is None and not token.exists()
    assert ensure_private_token({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"}) is None
    assert ensure_private_token({"RAY_AUTH_MODE": "token"}) == token
    text = token.read_text()
    assert len(text) == 64 and int(text, 16) >= 0  # 256 bits as hex, as Ray makes them
    assert token.stat().st_mode & 0o777 == 0o600
    assert ensure_private_token({"RAY_AUTH_MODE": "token"}) == token
    assert token.read_text() == text and capsys.readouterr().err == ""  # kept as it was
    token.chmod(0o644)
    ensure_private_token({"RAY_AUTH_MODE": "token"})
    assert f"warning: {token}" in capsys.readouterr().err and token.read_text() == text
