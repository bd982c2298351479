"""Study TOML loading: strictness, corner validation, conversions to Tune and Optuna."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest

from study.search_space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpaceError,
    SearchSpec,
    StudySettings,
    corner_points,
    describe,
    load_search_spec,
    make_sampler,
    to_optuna_distributions,
    to_tune_param_space,
)
from vlm2rec.config import RunConfig, to_dict

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.toml"))

BASE = """
seed = 3
[loss]
alpha = 0.5
beta = 0.1
temperature = 0.07
[train]
epochs = 6
batch_size = 128
"""

STUDY = """
base = "base.toml"
[study]
name = "t"
max_t = 6
[fixed]
"optim.lr" = 0.002
[params."loss.alpha"]
type = "float"
low = 0.05
high = 4.0
log = true
[params."loss.penalty_variant"]
type = "categorical"
choices = ["reweight", "hard_negative"]
[params."train.batch_size"]
type = "int"
low = 64
high = 256
step = 64
"""


def write_study(tmp_path: Path, body: str = STUDY, base: str = BASE) -> Path:
    (tmp_path / "base.toml").write_text(base)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(body))
    return path


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_loads_params_fixed_and_base(tmp_path: Path) -> None:
    spec = load_search_spec(write_study(tmp_path))
    assert spec.params == (
        FloatParam("loss.alpha", 0.05, 4.0, log=True),
        CategoricalParam("loss.penalty_variant", ("reweight", "hard_negative")),
        IntParam("train.batch_size", 64, 256, step=64),
    )
    cfg = spec.base_config()
    assert (cfg.seed, cfg.optim.lr, cfg.train.batch_size) == (3, 0.002, 128)
    run = spec.run_config({"loss.alpha": 1.5, "train.batch_size": np.int64(192)})
    assert run.loss.alpha == 1.5 and run.train.batch_size == 192 and run.optim.lr == 0.002
    assert type(run.train.batch_size) is int  # numpy scalars from Tune become plain ints


def test_reference_params_zero_alpha_beta_and_base_values(tmp_path: Path) -> None:
    spec = load_search_spec(write_study(tmp_path))
    ref = spec.reference_params()
    assert ref == {
        "loss.alpha": 0.0,
        "loss.beta": 0.0,
        "loss.penalty_variant": "reweight",
        "train.batch_size": 128,
    }
    cfg = spec.run_config(ref)
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.temperature) == (0.0, 0.0, 0.07)


def test_base_is_optional_and_defaults_to_run_config(tmp_path: Path) -> None:
    body = replace_once(STUDY, 'base = "base.toml"\n', "")
    body = replace_once(body, "max_t = 6", f"max_t = {RunConfig().train.epochs}")
    spec = load_search_spec(write_study(tmp_path, body))
    assert to_dict(spec.base) == to_dict(RunConfig())


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("max_t = 6", "max_t = 6\nnum_sample = 3", r"study\.num_sample.*did you mean num_samples"),
        ("step = 64", "step = 64\nlgo = true", r"lgo.*did you mean.*log"),
        ('base = "base.toml"', 'base = "base.toml"\nbogus = 1', r"unknown key bogus"),
        ("log = true", "log = 1", r'params\."loss\.alpha"\.log: expected bool'),
        ("low = 0.05", 'low = "0.05"', r"low: expected float"),
        ("low = 64", "low = 64.0", r"low: expected int"),
        ("low = 0.05", "low = 5.0", r"low: must be < high"),
        ("low = 0.05", "low = 0.0", r"must be > 0 for log = true"),
        ('["reweight", "hard_negative"]', "[]", r"choices: must not be empty"),
        ('["reweight", "hard_negative"]', '["reweight", "soft"]', r"penalty_variant.*soft"),
        ('["reweight", "hard_negative"]', '["reweight", 1]', r"mixes strings"),
        ('type = "float"', 'type = "flaot"', r"flaot.*did you mean float"),
        (
            '[params."loss.alpha"]',
            '[params."loss.alpah"]',
            r'params\."loss\.alpah": not a config path; did you mean loss\.alpha',
        ),
        ('[params."loss.alpha"]', '[params."loss"]', r'params\."loss": not a config path'),
        ('"optim.lr" = 0.002', '"optim.rl" = 0.002', r'\[fixed\] "optim\.rl": not a config path'),
        ("max_t = 6", 'max_t = 6\nsampler = "bayes"', r"study\.sampler: expected one of"),
        ("max_t = 6", 'max_t = 6\nscheduler = "hyperband"', r"study\.scheduler"),
        ("max_t = 6", "max_t = 5", r"max_t = 5 but train\.epochs = 6"),
        ("max_t = 6", 'max_t = 6\nmetric = "test/ndcg@10"', r"study\.metric: must be a val/"),
        ('"optim.lr" = 0.002', '"optim.lr" = -1.0', r"\[fixed\].*optim\.lr: must be > 0"),
        ('"optim.lr" = 0.002', '"loss.alpha" = 1.0', r'params\."loss\.alpha": also set in'),
        ("step = 64", "step = 48", r"multiples of step=48"),
        ("high = 256", "high = 8", r"low: must be < high"),
        ('base = "base.toml"', 'base = "missing.toml"', r"missing\.toml does not exist"),
    ],
)
def test_invalid_study_names_file_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = write_study(tmp_path, replace_once(STUDY, old, new))
    with pytest.raises(SearchSpaceError, match=expected) as info:
        load_search_spec(path)
    assert str(path) in str(info.value)


def test_corner_rejected_by_config_names_the_point(tmp_path: Path) -> None:
    # batch_size low = 1 passes the range checks but TrainConfig needs >= 2 (in-batch negatives).
    body = replace_once(STUDY, "low = 64\nhigh = 256\nstep = 64", "low = 1\nhigh = 256")
    with pytest.raises(SearchSpaceError, match=r"train\.batch_size.*must be >= 2"):
        load_search_spec(write_study(tmp_path, body))


def test_float_param_on_int_field_is_rejected(tmp_path: Path) -> None:
    body = replace_once(STUDY, 'type = "int"', 'type = "float"')
    body = replace_once(body, "step = 64\n", "")
    body = replace_once(body, "low = 64\n", "low = 64.0\n")
    with pytest.raises(SearchSpaceError, match=r"train\.batch_size: expected int"):
        load_search_spec(write_study(tmp_path, body))


def test_grid_needs_categorical_params_and_matching_num_samples(tmp_path: Path) -> None:
    body = replace_once(STUDY, "max_t = 6", 'max_t = 6\nsampler = "grid"')
    with pytest.raises(SearchSpaceError, match=r"loss\.alpha.*grid sampler needs categorical"):
        load_search_spec(write_study(tmp_path, body))
    grid = """
    [study]
    name = "g"
    sampler = "grid"
    scheduler = "none"
    num_samples = 5
    seeds = [0, 1, 2]
    [params."loss.alpha"]
    type = "categorical"
    choices = [0.0, 0.5]
    """
    with pytest.raises(SearchSpaceError, match=r"num_samples = 5 but the grid has 6 points"):
        load_search_spec(write_study(tmp_path, grid))
    spec = load_search_spec(
        write_study(tmp_path, grid.replace("num_samples = 5", "num_samples = 6"))
    )
    assert spec.params[-1] == CategoricalParam("seed", (0, 1, 2))
    assert spec.grid_size() == 6


def test_several_seeds_need_grid_and_one_seed_is_fixed(tmp_path: Path) -> None:
    body = replace_once(STUDY, "max_t = 6", "max_t = 6\nseeds = [0, 1]")
    with pytest.raises(SearchSpaceError, match=r"study\.seeds: several seeds need sampler"):
        load_search_spec(write_study(tmp_path, body))
    spec = load_search_spec(write_study(tmp_path, body.replace("[0, 1]", "[7]")))
    assert spec.base_config().seed == 7 and all(p.path != "seed" for p in spec.params)


def test_corner_points_cover_every_combination(tmp_path: Path) -> None:
    spec = load_search_spec(write_study(tmp_path))
    points = list(corner_points(spec))
    assert len(points) == 2 * 2 * 2
    assert {(p["loss.alpha"], p["train.batch_size"]) for p in points} == {
        (0.05, 64),
        (0.05, 256),
        (4.0, 64),
        (4.0, 256),
    }


def test_tune_param_space_bounds_match_optuna(tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    spec = load_search_spec(write_study(tmp_path))
    space = to_tune_param_space(spec)
    assert isinstance(space["loss.alpha"], tune.search.sample.Float)
    # Ray's own converter applied to our Tune domains must give exactly our Optuna distributions.
    converted = OptunaSearch.convert_search_space(space)
    assert converted == to_optuna_distributions(spec)
    rng = np.random.default_rng(0)
    samples = space["train.batch_size"].sample(size=400, random_state=rng)
    assert set(samples) == {64, 128, 192, 256}
    alphas = np.asarray(space["loss.alpha"].sample(size=400, random_state=rng))
    assert alphas.min() >= 0.05 and alphas.max() <= 4.0


def test_int_without_step_and_log_int_inclusive_bounds() -> None:
    spec = SearchSpec(
        "mem",
        StudySettings(name="m", scheduler="none"),
        RunConfig(),
        {},
        (IntParam("train.epochs", 1, 3), IntParam("eval.every_epochs", 1, 4, log=True)),
    )
    space = to_tune_param_space(spec)
    rng = np.random.default_rng(1)
    assert set(space["train.epochs"].sample(size=300, random_state=rng)) == {1, 2, 3}
    assert set(space["eval.every_epochs"].sample(size=300, random_state=rng)) == {1, 2, 3, 4}
    dists = to_optuna_distributions(spec)
    assert (dists["train.epochs"].low, dists["train.epochs"].high) == (1, 3)


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("gp", optuna.samplers.GPSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
    ],
)
def test_make_sampler_seeded(tmp_path: Path, sampler: str, cls: type) -> None:
    body = replace_once(STUDY, "max_t = 6", f'max_t = 6\nsampler = "{sampler}"\nsampler_seed = 5')
    spec = load_search_spec(write_study(tmp_path, body))
    needs = {"gp": "scipy", "cmaes": "cmaes"}.get(sampler)
    if needs and importlib.util.find_spec(needs) is None:
        with pytest.raises(SearchSpaceError, match=f"pip install {needs}"):
            make_sampler(spec)
        return
    assert isinstance(make_sampler(spec), cls)
    if sampler in ("tpe", "random"):
        # Same seed, same first suggestions: the study is reproducible.
        dists = to_optuna_distributions(spec)

        def first(n: int) -> list[dict[str, object]]:
            study = optuna.create_study(sampler=make_sampler(spec))
            return [study.ask(dists).params for _ in range(n)]

        assert first(3) == first(3)


@pytest.mark.parametrize(("given", "expected"), [("", 3), ("n_startup_trials = 5\n", 5)])
def test_tpe_leaves_its_random_start_after_a_third_of_the_trials(
    tmp_path: Path, given: str, expected: int
) -> None:
    """Optuna's default (10 random trials) would make a small study a pure random search."""
    body = replace_once(STUDY, "max_t = 6", f"max_t = 6\nnum_samples = 8\n{given}")
    spec = load_search_spec(write_study(tmp_path, body))
    assert spec.study.startup_trials == expected
    sampler = make_sampler(spec)
    assert sampler._n_startup_trials == expected
    # the (expected + 1)-th trial is TPE's: it differs from what random sampling would draw
    dists = to_optuna_distributions(spec)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    rand = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(expected):
        trial = study.ask(dists)
        study.tell(trial, float(trial.params["loss.alpha"]))
        rand.ask(dists)
    assert study.ask(dists).params != rand.ask(dists).params
    with pytest.raises(SearchSpaceError, match=r"study\.n_startup_trials: must be >= 0"):
        bad = replace_once(STUDY, "max_t = 6", "max_t = 6\nn_startup_trials = -1")
        load_search_spec(write_study(tmp_path, bad))


def test_grid_sampler_enumerates_full_grid_with_seeds() -> None:
    spec = load_search_spec(REPO / "search_spaces" / "ablation.toml")
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen: set[tuple[object, ...]] = set()

    def objective(trial: optuna.Trial) -> float:
        choices = [trial.suggest_categorical(p.path, list(p.choices)) for p in spec.params]  # type: ignore[union-attr]
        seen.add(tuple(choices))
        return 0.0

    study.optimize(objective, n_trials=spec.study.num_samples)
    assert len(seen) == 12 and {s[-1] for s in seen} == {0, 1, 2}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_study_loads_and_builds_its_corners(path: Path) -> None:
    spec = load_search_spec(path)
    points = list(corner_points(spec))
    assert points, "a study searches at least one parameter"
    for point in points:
        cfg = spec.run_config(point)
        for key, value in point.items():
            node: object = cfg
            for part in key.split("."):
                node = getattr(node, part)
            assert node == value
    if spec.study.reference:
        ref = spec.run_config(spec.reference_params())
        assert ref.loss.alpha == 0.0 and ref.loss.beta == 0.0
    text = describe(spec)
    assert spec.study.name in text and all(p.path in text for p in spec.params)


def test_default_study_searches_the_three_knobs_on_cpu() -> None:
    spec = load_search_spec(REPO / "search_spaces" / "default.toml")
    assert {p.path for p in spec.params} == {"loss.alpha", "loss.beta", "loss.temperature"}
    assert all(isinstance(p, FloatParam) and p.log for p in spec.params)
    assert spec.study.gpus_per_worker == 0 and spec.base_config().embedder.name.startswith("tiny")


def test_module_imports_without_ray() -> None:
    code = "import sys, study.search_space; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
