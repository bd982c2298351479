"""A study across datasets, without Ray: ``[study].datasets`` / ``--dataset`` / several ``--space``
become one study per dataset folder, bad combinations are refused before Ray starts, the shipped
Amazon study files pass the dry run on local prepared folders, and leaderboards merge into one
table with a ``dataset`` column (each dataset ranked on its own)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from study import run_search
from study.leaderboard import build_rows, format_table, merge, read_leaderboard, write_leaderboard
from study.plan import StudyOptions, merged_leaderboard, prepare
from study.records import TrialRecord
from study.search_space import dataset_studies, load_search_spec
from vlm2rec.config import flatten, to_dict
from vlm2rec.data.schema import PreparedDataset, write_dataset

REPO = Path(__file__).resolve().parents[1]
AMAZON_SPACES = [REPO / "search_spaces" / n for n in ("paper_amazon.toml", "qwen3vl_amazon.toml")]
BACKBONES = {
    "paper_amazon": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen3vl_amazon": "Qwen/Qwen3-VL-2B-Instruct",
}

BASE = """
seed = 0
[data]
path = "{data}"
prepare_if_missing = false
history_length = 3
[data.synthetic]
users = 60
items = 32
shapes = 4
brands = 4
colours = 2
min_length = 5
max_length = 10
image_size = 16
[embedder]
name = "tiny-clip"
finetune = "full"
[train]
epochs = 2
batch_size = 16
"""

SPACE = """
base = "base.toml"
[study]
name = "{name}"
metric = "{metric}"
{datasets}
num_samples = 2
max_t = 2
grace_period = 1
workers_per_trial = 1
cpus_per_worker = 0.5
[params."loss.alpha"]
type = "float"
low = 0.1
high = 1.0
log = true
"""


@pytest.fixture
def folder(tiny_dataset: PreparedDataset, tmp_path: Path) -> Callable[[str], Path]:
    """``folder(name)``: a prepared dataset folder ``<tmp>/data/<name>`` shaped like a converted
    Amazon category (the tiny benchmark's tables under a non-synthetic name)."""

    def make(name: str) -> Path:
        meta = {"name": f"amazon2018-{name}", "source": "amazon2018", "timestamp_unit": "s"}
        out = tmp_path / "data" / name
        write_dataset(out, tiny_dataset.items, tiny_dataset.interactions, meta)
        return out

    return make


def write_space(
    root: Path,
    *,
    name: str = "cross",
    datasets: list[Path] | None = None,
    data: Path | None = None,
    metric: str = "val/ndcg@10",
    extra: str = "",
) -> Path:
    """A tiny study file (``datasets``: its ``[study].datasets``) beside its base; returns it."""
    listed = f"datasets = {[str(d) for d in datasets]}" if datasets is not None else ""
    (root / "base.toml").write_text(BASE.format(data=data or root / "data" / "base"))
    path = root / f"{name}.toml"
    path.write_text(SPACE.format(name=name, metric=metric, datasets=listed) + extra)
    return path


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@pytest.fixture(autouse=True)
def _no_ray_start() -> Iterator[None]:
    """Nothing here may start Ray (a shared instance from another test file may already run)."""
    before = _ray_up()
    yield
    assert _ray_up() == before


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run_search.main(argv) == run_search.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ---- one study per dataset ---------------------------------------------------------------------
def test_datasets_become_one_study_each_with_its_own_folder_and_data(
    tmp_path: Path, folder: Callable[[str], Path]
) -> None:
    toys, sports = folder("toys"), folder("sports")
    space = write_space(tmp_path, datasets=[toys, sports])
    plans = prepare(StudyOptions(spaces=(space,), storage=tmp_path / "studies"))
    assert [p.name for p in plans] == ["cross-toys", "cross-sports"]
    assert [p.folder.root for p in plans] == [
        (tmp_path / "studies" / n).resolve() for n in ("cross-toys", "cross-sports")
    ]
    assert [p.spec.base_config().data.path for p in plans] == [str(toys), str(sports)]
    assert [p.spec.study.datasets for p in plans] == [(str(toys),), (str(sports),)]
    assert merged_leaderboard(plans) == (tmp_path / "studies" / "cross.parquet").resolve()
    assert "data " + str(toys) in plans[0].text()


def test_dataset_option_replaces_the_list_and_name_option_keeps_the_suffix(
    tmp_path: Path, folder: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder("toys")
    folder("office")
    space = write_space(tmp_path, datasets=[tmp_path / "data" / "toys"])
    monkeypatch.chdir(tmp_path)  # relative folders are relative to the working directory
    options = StudyOptions(spaces=(space,), name="mine", datasets=("data/office",))
    (plan,) = prepare(options)
    assert plan.name == "mine-office" and plan.group == "mine"
    assert plan.spec.base_config().data.path == str(tmp_path / "data" / "office")
    assert merged_leaderboard([plan]) is None  # one study: its own leaderboard is the table


def test_several_spaces_run_in_order_and_name_the_merged_table(
    tmp_path: Path, folder: Callable[[str], Path]
) -> None:
    toys = folder("toys")
    a = write_space(tmp_path, name="a", datasets=[toys])
    b = write_space(tmp_path, name="b", data=toys)  # no list: the base's data.path, no suffix
    plans = prepare(StudyOptions(spaces=(a, b), storage=tmp_path / "studies"))
    assert [p.name for p in plans] == ["a-toys", "b"]
    assert merged_leaderboard(plans) == (tmp_path / "studies" / "a+b.parquet").resolve()


def test_a_dry_run_of_two_datasets_checks_each_and_names_the_merged_table(
    tmp_path: Path, folder: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, datasets=[folder("toys"), folder("sports")])
    argv = ["--space", str(space), "--storage", str(tmp_path / "studies"), "--dry-run"]
    assert run_search.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("preflight ok") == 2 and "(study cross-sports)" in out
    assert f"merged leaderboard: {(tmp_path / 'studies' / 'cross.parquet').resolve()}" in out
    assert not (tmp_path / "studies").exists()  # a dry run creates nothing


# ---- refused before Ray ------------------------------------------------------------------------
def test_the_same_dataset_twice_is_refused(
    tmp_path: Path, folder: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    toys = folder("toys")
    line = _refused(["--space", str(write_space(tmp_path, datasets=[toys, toys]))], capsys)
    assert "cross.toml: study.datasets" in line and "both end in folder 'toys'" in line
    other = tmp_path / "elsewhere" / "toys"  # another folder of the same name: same study name
    argv = ["--space", str(write_space(tmp_path)), "--dataset", str(toys), "--dataset", str(other)]
    line = _refused(argv, capsys)
    assert "--dataset:" in line and "both end in folder 'toys'" in line


def test_a_missing_dataset_folder_is_refused_naming_it(
    tmp_path: Path, folder: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "data" / "sports"
    line = _refused(
        ["--space", str(write_space(tmp_path, datasets=[folder("toys"), missing]))], capsys
    )
    assert f"dataset {missing} does not exist" in line and "cross.toml" in line


@pytest.mark.parametrize(
    "extra",
    [
        '[fixed]\n"data.path" = "/x"\n',
        '[params."data.path"]\ntype = "categorical"\nchoices = ["/x"]\n',
    ],
    ids=["fixed", "searched"],
)
def test_datasets_beside_a_data_path_of_the_space_is_refused(
    tmp_path: Path,
    folder: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    extra: str,
) -> None:
    toys = folder("toys")
    line = _refused(["--space", str(write_space(tmp_path, datasets=[toys], extra=extra))], capsys)
    assert "study.datasets and" in line and '"data.path" both name the dataset' in line
    plain = write_space(tmp_path, extra=extra)  # the file alone is fine; --dataset conflicts
    line = _refused(["--space", str(plain), "--dataset", str(toys), "--dry-run"], capsys)
    assert "--dataset and" in line and "keep one" in line


def test_two_studies_in_one_folder_or_with_two_rankings_are_refused(
    tmp_path: Path, folder: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, data=folder("toys"))
    line = _refused(["--space", str(space), "--space", str(space)], capsys)
    assert "would share the study folder" in line
    other = write_space(tmp_path, name="other", data=tmp_path / "data" / "toys", metric="val/mrr")
    line = _refused(["--space", str(space), "--space", str(other)], capsys)
    assert "rank by different metrics" in line


# ---- the shipped Amazon study files ------------------------------------------------------------
@pytest.mark.parametrize("space", AMAZON_SPACES, ids=[p.name for p in AMAZON_SPACES])
def test_shipped_amazon_study_passes_the_dry_run_on_local_folders(
    space: Path,
    tmp_path: Path,
    folder: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file as shipped, its four /mnt/shared folders replaced by two local ones (--dataset),
    on a pretend 8-GPU machine; no model is loaded or downloaded (the hub is switched off)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # What the machine offers, also when an earlier test left the suite's Ray up in this process.
    eight_gpus = ({"CPU": 64.0, "GPU": 8.0}, " on this machine")
    monkeypatch.setattr(run_search, "_offered", lambda address, log=None: eight_gpus)
    toys, sports = folder("toys"), folder("sports")
    argv = ["--space", str(space), "--storage", str(tmp_path / "studies"), "--dry-run"]
    assert run_search.main([*argv, "--dataset", str(toys), "--dataset", str(sports)]) == 0
    out = capsys.readouterr().out
    name = space.stem
    assert f"study '{name}-toys'" in out and f"study '{name}-sports'" in out
    assert out.count("preflight ok: 2 trial(s) fit at once on this machine") == 2  # 8 // 4 GPUs
    assert f"embedder {BACKBONES[name]}, data {toys}" in out
    assert "searched:\n    loss.alpha" in out


def test_paper_study_is_the_papers_setting_on_four_categories() -> None:
    spec = load_search_spec(REPO / "search_spaces" / "paper_amazon.toml")
    assert {p.path for p in spec.params} == {"loss.alpha", "loss.temperature", "loss.beta"}
    cfg = spec.base_config()
    e = cfg.embedder
    assert (e.name, e.finetune, e.fusion, e.dtype) == (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "lora",
        "external",
        "bf16",
    )
    assert e.gradient_checkpointing and cfg.data.history_length == 10
    assert cfg.train.epochs == 3 == spec.study.max_t and cfg.eval.sampled_negatives == 100
    studies = dataset_studies(spec)
    assert len(studies) == 4 and len({s.study.name for s in studies}) == 4
    assert all(s.base_config().data.path == s.study.datasets[0] for s in studies)


def test_qwen3vl_study_differs_from_the_paper_study_in_the_backbone_only() -> None:
    paper = load_search_spec(REPO / "search_spaces" / "paper_amazon.toml")
    qwen3 = load_search_spec(REPO / "search_spaces" / "qwen3vl_amazon.toml")
    a, b = flatten(to_dict(paper.base_config())), flatten(to_dict(qwen3.base_config()))
    assert {k for k in a if a[k] != b[k]} == {"embedder.name"}
    assert b["embedder.name"] == "Qwen/Qwen3-VL-2B-Instruct"
    assert qwen3.params == paper.params
    differ = {
        f.name
        for f in dataclasses.fields(paper.study)
        if getattr(paper.study, f.name) != getattr(qwen3.study, f.name)
    }
    assert differ == {"name"}


# ---- the merged table --------------------------------------------------------------------------
def _record(trial: str, dataset: str, alpha: float, ndcg: float) -> TrialRecord:
    return TrialRecord(
        trial,
        params={"loss.alpha": alpha},
        history=[{"epoch": 1, "val/ndcg@10": ndcg}],
        config={"data": {"path": f"/mnt/shared/data/{dataset}"}, "loss": {"alpha": alpha}},
    )


def _study(name: str, dataset: str, scores: dict[str, tuple[float, float]]) -> pa.Table:
    records = [_record(t, dataset, a, v) for t, (a, v) in scores.items()]
    kinds = {"loss.alpha": "float"}
    return build_rows(records, study=name, metric="val/ndcg@10", mode="max", param_kinds=kinds)


def test_merged_table_has_a_dataset_column_and_ranks_each_dataset_on_its_own() -> None:
    toys = _study("p-toys", "amazon2018-toys", {"t1": (0.1, 0.30), "t2": (2.0, 0.10)})
    sports = _study("p-sports", "amazon2018-sports", {"s1": (0.1, 0.05), "s2": (2.0, 0.08)})
    merged = merge([toys, sports])
    rows = [(r["dataset"], r["rank"], r["trial_id"]) for r in merged.to_pylist()]
    assert rows == [
        ("amazon2018-sports", 1, "s2"),  # 0.08 ranks first on its own data despite toys' 0.30
        ("amazon2018-sports", 2, "s1"),
        ("amazon2018-toys", 1, "t1"),
        ("amazon2018-toys", 2, "t2"),
    ]
    text = format_table(merged, "val/ndcg@10", top=1)  # the best of each dataset
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["rank", "study", "dataset"] and len(lines) == 3
    assert "amazon2018-sports" in lines[1] and "amazon2018-toys" in lines[2]


def test_leaderboard_cli_merges_two_studies_into_one_table(tmp_path: Path) -> None:
    toys = _study("p-toys", "amazon2018-toys", {"t1": (0.1, 0.30), "t2": (2.0, 0.10)})
    sports = _study("p-sports", "amazon2018-sports", {"s1": (0.1, 0.05), "s2": (2.0, 0.08)})
    for name, t in (("p-toys", toys), ("p-sports", sports)):
        write_leaderboard(t, tmp_path / name / "leaderboard.parquet")
    out = tmp_path / "p.parquet"
    cmd = [
        sys.executable,
        "study/leaderboard.py",
        str(tmp_path / "p-toys"),
        str(tmp_path / "p-sports"),
    ]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split()[:3] == ["rank", "study", "dataset"] and "loss.alpha" in header
    assert [r.split()[:3] for r in rows] == [
        ["1", "p-sports", "amazon2018-sports"],
        ["2", "p-sports", "amazon2018-sports"],
        ["1", "p-toys", "amazon2018-toys"],
        ["2", "p-toys", "amazon2018-toys"],
    ]
    assert read_leaderboard(out).column("dataset").to_pylist()[0] == "amazon2018-sports"


def test_dataset_of_a_record_comes_from_its_config_or_params() -> None:
    assert _record("t", "amazon2018-toys", 0.1, 0.2).dataset == "amazon2018-toys"
    as_json = TrialRecord("t", config='{"data": {"path": "data/beauty18/"}}')
    assert as_json.dataset == "beauty18"
    assert TrialRecord("t", params={"data.path": "/d/x"}).dataset == "x"  # rebuilt from Tune
    assert TrialRecord("t").dataset is None
