"""Study TOML -> :class:`SearchSpec` (pure, Ray-free) -> Tune param space / Optuna distributions.

A study file names a base run config, study settings, fixed overrides and searched parameters::

    base = "base/synthetic.toml"      # path relative to the study file
    [study]                           # StudySettings fields
    name = "default"
    [fixed]                           # dotted config path -> value, applied to the base
    "train.epochs" = 6
    [params."loss.alpha"]             # dotted config path -> distribution
    type = "float"
    low = 0.05
    high = 4.0
    log = true

Loading is strict, and goes through the same machinery as run configs (``vlm2rec.config.from_dict``:
each table is a frozen dataclass, so an unknown key gets a did-you-mean and a wrong type names the
key): an unknown key anywhere, a wrong type, an empty range, a parameter path that is not a config
path, or a corner value that the run config rejects is a :class:`SearchSpaceError` naming the file
and the key. Every corner (each float/int bound, each categorical choice, in all combinations) is
built into a :class:`~vlm2rec.config.RunConfig` at load time, so a study never discovers a bad
value hours into a cluster run; the base run config itself is resolved once, when the spec is
made. ``ray.tune`` and ``optuna`` are imported lazily by the conversion functions only.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import math
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from study.records import plain
from vlm2rec.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    flatten,
    from_dict,
    load_config,
    to_dict,
    unknown_key,
)

__all__ = [
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Param",
    "SearchSpaceError",
    "SearchSpec",
    "StudySettings",
    "check_datasets",
    "corner_points",
    "dataset_studies",
    "describe",
    "load_search_spec",
    "make_sampler",
    "param_kind",
    "to_optuna_distributions",
    "to_tune_param_space",
    "trial_config",
]

Sampler = Literal["tpe", "random", "gp", "cmaes", "grid"]
Scheduler = Literal["asha", "none"]
ParamKind = Literal["float", "int", "string", "bool"]
#: Beyond this many corner combinations, corners are checked one parameter at a time.
MAX_CORNER_COMBINATIONS = 4096


class SearchSpaceError(ConfigError):
    """A study file is invalid; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """The ``[study]`` table: what to optimise, how to sample and schedule, what a trial gets."""

    name: str  #: study name = folder under the storage path
    metric: str = "val/ndcg@10"  #: reported metric Tune/Optuna/ASHA optimise (a val/ key)
    mode: Literal["max", "min"] = "max"  #: maximise or minimise `metric`
    num_samples: int = 8  #: searched trials (the reference trial comes on top)
    sampler: Sampler = "tpe"  #: Optuna sampler
    sampler_seed: int = 0  #: seed of the sampler
    #: tpe/gp/cmaes: trials sampled at random before the model takes over (default: a third of
    #: num_samples; Optuna's own default of 10 would make a small study a random search)
    n_startup_trials: int | None = None
    scheduler: Scheduler = "asha"  #: ASHA early stopping or none
    max_t: int = 6  #: ASHA: last epoch a trial may reach
    grace_period: int = 2  #: ASHA: epochs before a trial can be stopped
    reduction_factor: float = 2.0  #: ASHA: 1/eta of trials survive each rung
    time_budget_s: float = 0.0  #: wall-clock budget of the whole study (0 = none)
    workers_per_trial: int = 2  #: Ray Train data-parallel workers per trial
    gpus_per_worker: float = 0.0  #: GPUs per worker (0 = CPU training)
    cpus_per_worker: float = 0.5  #: logical CPUs per worker (fractional on small machines)
    max_concurrent_trials: int = 1  #: trials running at once (0 = free GPUs // GPUs per trial)
    max_failures: int = 2  #: Train worker-group restarts per trial from its last checkpoint
    reference: bool = True  #: also run the alpha = beta = 0 baseline as its own trial
    seeds: tuple[int, ...] = ()  #: >1 seeds: a `seed` grid dimension (grid sampler only)
    #: dataset folders (relative ones to the working directory, as data.path): one study per
    #: folder, run one after another, named `<name>-<folder name>`, its data.path set to it
    datasets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_datasets(self.datasets, "study.datasets")
        checks = [
            (bool(self.name) and "/" not in self.name, "name", "must be a non-empty folder name"),
            (self.metric.startswith("val/"), "metric", "must be a val/ key (test/ would leak)"),
            (self.num_samples >= 1, "num_samples", "must be >= 1"),
            (self.startup_trials >= 0, "n_startup_trials", "must be >= 0"),
            (self.grace_period >= 1, "grace_period", "must be >= 1"),
            (self.max_t >= self.grace_period, "max_t", "must be >= grace_period"),
            (self.reduction_factor > 1, "reduction_factor", "must be > 1"),
            (self.time_budget_s >= 0, "time_budget_s", "must be >= 0"),
            (self.workers_per_trial >= 1, "workers_per_trial", "must be >= 1"),
            (self.gpus_per_worker >= 0, "gpus_per_worker", "must be >= 0"),
            (self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0 (Ray rejects CPU: 0)"),
            (self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0"),
            (self.max_failures >= 0, "max_failures", "must be >= 0"),
            (len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ConfigError(f"study.{key}: {msg}")

    @property
    def startup_trials(self) -> int:
        """``n_startup_trials``, or a third of ``num_samples`` (at least 1) when not given."""
        if self.n_startup_trials is not None:
            return self.n_startup_trials
        return max(1, round(self.num_samples / 3))


def check_datasets(datasets: Sequence[str], where: str) -> None:
    """Refuse a dataset list whose folders would not give each study its own folder: an entry
    without a folder name (``""``, ``"."``) or two entries ending in the same folder name (the
    same dataset twice, or two that the study names could not tell apart). ``where`` names the
    list in the message (``study.datasets``, ``--dataset``)."""
    seen: dict[str, str] = {}
    for entry in datasets:
        name = Path(entry).name
        if name in ("", ".", ".."):
            raise ConfigError(f"{where}: {entry!r} names no dataset folder")
        if name in seen:
            raise ConfigError(
                f"{where}: {seen[name]!r} and {entry!r} both end in folder {name!r}: each "
                "dataset's study is named after its folder, so they must differ"
            )
        seen[name] = entry


def _bad(path: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f'params."{path}".{key}: {msg}')


def _check_range(p: FloatParam | IntParam) -> None:
    if not p.low < p.high:
        raise _bad(p.path, "low", f"must be < high (got low={p.low}, high={p.high})")
    if p.log and p.low <= 0:
        raise _bad(
            p.path, "low", f"must be > 0 for log = true (got {p.low}); use a categorical for 0"
        )


@dataclasses.dataclass(frozen=True)
class FloatParam:
    """Uniform (or log-uniform) float in ``[low, high]``."""

    path: str  #: dotted config path
    low: float  #: lower bound (inclusive)
    high: float  #: upper bound
    log: bool = False  #: sample log-uniformly (needs low > 0)

    def __post_init__(self) -> None:
        _check_range(self)


@dataclasses.dataclass(frozen=True)
class IntParam:
    """Uniform integer in ``low, low + step, ..., high`` (both bounds inclusive)."""

    path: str  #: dotted config path
    low: int  #: lower bound (inclusive, a multiple of step)
    high: int  #: upper bound (inclusive, low + k * step)
    step: int = 1  #: grid step
    log: bool = False  #: sample log-uniformly (needs low > 0 and step = 1)

    def __post_init__(self) -> None:
        _check_range(self)
        if self.step < 1:
            raise _bad(self.path, "step", "must be >= 1")
        if self.step > 1 and (self.low % self.step or (self.high - self.low) % self.step):
            # Tune's qrandint rounds to multiples of step, Optuna counts from low: they agree
            # only when low and high both sit on the step grid.
            raise _bad(
                self.path,
                "step",
                f"low={self.low} and high={self.high} must be multiples of step={self.step}",
            )
        if self.log and self.step != 1:
            raise _bad(self.path, "log", "log = true needs step = 1")


@dataclasses.dataclass(frozen=True)
class CategoricalParam:
    """One of a list of values (all numbers, all strings or all booleans)."""

    path: str  #: dotted config path
    choices: tuple[Any, ...]  #: the values

    def __post_init__(self) -> None:
        if not self.choices:
            raise _bad(self.path, "choices", "must not be empty")
        if any(not isinstance(c, str | int | float | bool) for c in self.choices):
            raise _bad(self.path, "choices", "values must be strings, numbers or booleans")
        if param_kind(self) == "string" and not all(isinstance(c, str) for c in self.choices):
            raise _bad(
                self.path, "choices", f"mixes strings with other values: {list(self.choices)}"
            )
        if len(set(self.choices)) != len(self.choices):
            raise _bad(self.path, "choices", f"repeats a value: {list(self.choices)}")


Param = FloatParam | IntParam | CategoricalParam
_PARAM_CLASSES: dict[str, type[Any]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


def param_kind(param: Param) -> ParamKind:
    """Value type of a parameter's leaderboard column (``param.<path>``)."""
    if isinstance(param, FloatParam):
        return "float"
    if isinstance(param, IntParam):
        return "int"
    if all(isinstance(c, bool) for c in param.choices):
        return "bool"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in param.choices):
        return "int"
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in param.choices):
        return "float"
    return "string"


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any]) -> RunConfig:
    """A trial's run config: ``base`` (a run config as a dict) overridden by its sampled dotted-path
    ``params``, numpy scalars included (what the Tune driver and the study recorder both need)."""
    return apply_overrides(from_dict(base), {k: plain(v) for k, v in params.items()})


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A loaded study: base run config + fixed overrides + searched parameters.

    Making one checks that every ``[fixed]`` and ``[params]`` key is a config path and resolves
    ``base`` + ``fixed`` once (:meth:`base_config`); :func:`load_search_spec` checks the rest.
    """

    source: str  #: the study file (for messages)
    study: StudySettings  #: the [study] table
    base: RunConfig  #: the base run config as read (before `fixed`)
    fixed: Mapping[str, Any]  #: dotted-path overrides applied to `base`
    params: tuple[Param, ...]  #: searched parameters, in file order (`seed` last when from seeds)
    _config: RunConfig = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_paths(self)
        try:
            config = apply_overrides(self.base, self.fixed)
        except ConfigError as exc:
            raise SearchSpaceError(f"{self.source}: [fixed]: {exc}") from None
        object.__setattr__(self, "_config", config)  # frozen: set once, here

    def base_config(self) -> RunConfig:
        """Base run config with the ``[fixed]`` overrides applied."""
        return self._config

    def run_config(self, sampled: Mapping[str, Any]) -> RunConfig:
        """Run config of one trial: base + fixed + the sampled ``{path: value}``."""
        values = {k: plain(v) for k, v in sampled.items()}
        try:
            return apply_overrides(self._config, values)
        except ConfigError as exc:
            raise SearchSpaceError(f"{self.source}: sampled {values}: {exc}") from None

    def reference_params(self) -> dict[str, Any]:
        """Baseline trial: ``loss.alpha = loss.beta = 0``, other searched params at base values."""
        flat = _flat_config(self._config)
        ref = {p.path: flat[p.path] for p in self.params}
        ref.update({"loss.alpha": 0.0, "loss.beta": 0.0})
        return ref

    def param_kinds(self) -> dict[str, ParamKind]:
        """``{path: kind}`` of every searched parameter (leaderboard column types)."""
        return {p.path: param_kind(p) for p in self.params}

    @property
    def seeds_only(self) -> bool:
        """The study replicates one config over several seeds and searches nothing else: it
        runs as a plain Tune grid over ``seed``, without Optuna and without early stopping."""
        return [p.path for p in self.params] == ["seed"] and len(self.study.seeds) > 1

    def grid_size(self) -> int:
        """Number of points of the categorical grid (grid sampler only)."""
        return math.prod(len(p.choices) for p in self.params if isinstance(p, CategoricalParam))


def _flat_config(cfg: RunConfig) -> dict[str, Any]:
    return flatten(to_dict(cfg))


def _check_paths(spec: SearchSpec) -> None:
    """Every key must be a leaf config field (a table such as ``loss`` is not a value)."""
    leaves = list(_flat_config(RunConfig()))
    keys = [(f'params."{p.path}"', p.path) for p in spec.params]
    keys += [(f'[fixed] "{k}"', k) for k in spec.fixed]
    for where, path in keys:
        if path not in leaves:
            close = difflib.get_close_matches(path, leaves, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SearchSpaceError(f"{spec.source}: {where}: not a config path{hint}")
    for p in spec.params:
        if p.path in spec.fixed:
            raise SearchSpaceError(f'{spec.source}: params."{p.path}": also set in [fixed]')


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class _SpaceFile:
    """The top level of a study file, before its tables are read."""

    study: dict  #: the [study] table (StudySettings)
    base: str | None = None  #: base run config, relative to the study file
    fixed: dict = dataclasses.field(default_factory=dict)  #: {dotted path: value}, maybe nested
    params: dict = dataclasses.field(default_factory=dict)  #: {dotted path: parameter table}


def _load_param(path: str, table: Any) -> Param:
    where = f'params."{path}".'
    if not isinstance(table, Mapping) or "type" not in table:
        raise ConfigError(
            f"{where[:-1]}: expected a table with a `type` key "
            f'(quote dotted paths: [params."loss.alpha"])'
        )
    kind = table["type"]
    if kind not in _PARAM_CLASSES:
        raise unknown_key(str(kind), list(_PARAM_CLASSES), where=f"{where}type = ")
    body = {k: v for k, v in table.items() if k != "type"}
    return from_dict(body, _PARAM_CLASSES[kind], where=where, preset={"path": path})


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SearchSpaceError(f"study file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SearchSpaceError(f"{path}: invalid TOML: {exc}") from None


def load_search_spec(path: str | Path) -> SearchSpec:
    """Read and fully validate a study TOML file (see the module docstring for the format)."""
    source = Path(path)
    try:
        raw = from_dict(_read_toml(source), _SpaceFile)
        study = from_dict(raw.study, StudySettings, where="study.")
        params = [_load_param(str(k), v) for k, v in raw.params.items()]
    except SearchSpaceError:
        raise
    except ConfigError as exc:
        raise SearchSpaceError(f"{source}: {exc}") from None
    base = RunConfig()
    if raw.base is not None:
        try:
            base = load_config(source.parent / raw.base)
        except ConfigError as exc:
            raise SearchSpaceError(f"{source}: base = {raw.base!r}: {exc}") from None
    # Quoted ("train.epochs" = 6) and nested (train.epochs = 6) TOML keys both mean a dotted path.
    fixed = flatten(raw.fixed)
    params += _seed_param(source, study, fixed, params)
    spec = SearchSpec(str(source), study, base, fixed, tuple(params))
    _check_spec(source, spec)
    return spec


def _seed_param(
    source: Path, study: StudySettings, fixed: dict[str, Any], params: list[Param]
) -> list[Param]:
    """``seeds = [s]`` fixes the seed; several seeds become a ``seed`` grid dimension."""
    if not study.seeds:
        return []
    if "seed" in fixed or any(p.path == "seed" for p in params):
        raise SearchSpaceError(f"{source}: study.seeds: `seed` is also in [fixed] or [params]")
    if len(study.seeds) == 1:
        fixed["seed"] = study.seeds[0]
        return []
    if study.sampler != "grid":
        # A model-based sampler would treat the seed as a tunable knob, not as replication.
        raise SearchSpaceError(
            f"{source}: study.seeds: several seeds need sampler = 'grid' "
            f"(got {study.sampler!r}); use a single seed otherwise"
        )
    return [CategoricalParam("seed", study.seeds)]


def _check_spec(source: Path, spec: SearchSpec) -> None:
    base = spec.base_config()
    searched = {p.path for p in spec.params}
    try:
        _check_data_named_once(spec, "study.datasets", spec.study.datasets)
    except ConfigError as exc:
        raise SearchSpaceError(f"{source}: {exc}") from None
    if not spec.params:
        # Optuna would fail on its first suggestion, after Ray had started.
        raise SearchSpaceError(
            f"{source}: [params] is empty: nothing to search; add a table such as "
            '[params."loss.alpha"], or several study.seeds to replicate one config '
            "(for a single run: vlm2rec train --config ...)"
        )
    if (
        not spec.seeds_only  # a seeds-only study has no early stopping to misconfigure
        and spec.study.scheduler == "asha"
        and "train.epochs" not in searched
        and spec.study.max_t != base.train.epochs
    ):
        # ASHA's max_t below the epochs cuts every trial before its test pass; above, the
        # top rungs are never reached. Both silently change what the study measures.
        raise SearchSpaceError(
            f"{source}: study.max_t = {spec.study.max_t} but train.epochs = {base.train.epochs}: "
            "ASHA counts reported epochs, make them equal"
        )
    if spec.study.sampler == "grid":
        bad = [p.path for p in spec.params if not isinstance(p, CategoricalParam)]
        if bad:
            raise SearchSpaceError(
                f'{source}: params."{bad[0]}": the grid sampler needs categorical params only'
            )
        if spec.study.num_samples != spec.grid_size():
            raise SearchSpaceError(
                f"{source}: study.num_samples = {spec.study.num_samples} but the grid has "
                f"{spec.grid_size()} points"
            )
    for point in corner_points(spec):
        _check_point(source, base, point)
    if spec.study.reference:  # after the corners: reference_params needs valid paths
        _check_point(source, base, spec.reference_params())


def _check_data_named_once(spec: SearchSpec, where: str, datasets: Sequence[str]) -> None:
    """A dataset list sets ``data.path`` for each of its studies: a ``[fixed]`` or searched
    ``data.path`` beside it would name the data twice, and neither reading is obviously meant."""
    if not datasets:
        return
    if "data.path" in spec.fixed:
        raise ConfigError(f'{where} and [fixed] "data.path" both name the dataset; keep one')
    if any(p.path == "data.path" for p in spec.params):
        raise ConfigError(f'{where} and params."data.path" both name the dataset; keep one')


def dataset_studies(spec: SearchSpec, datasets: Sequence[str] | None = None) -> list[SearchSpec]:
    """One study per dataset folder of ``datasets`` (``None``: the file's ``[study].datasets``),
    each named ``<name>-<folder name>`` with ``data.path`` fixed to its folder and that folder as
    its only ``datasets`` entry; ``[spec]`` itself when there are none.

    A list given here (``--dataset``) replaces the file's and is checked as the file's is.
    """
    if datasets is None:
        datasets = spec.study.datasets
    else:
        check_datasets(datasets, "--dataset")
        _check_data_named_once(spec, "--dataset", datasets)
    if not datasets:
        return [spec]
    return [
        dataclasses.replace(
            spec,
            study=dataclasses.replace(
                spec.study, name=f"{spec.study.name}-{Path(d).name}", datasets=(d,)
            ),
            fixed={**spec.fixed, "data.path": d},
        )
        for d in datasets
    ]


def _check_point(source: Path, base: RunConfig, point: Mapping[str, Any]) -> None:
    try:
        apply_overrides(base, point)
    except ConfigError as exc:
        raise SearchSpaceError(f"{source}: params at {dict(point)}: {exc}") from None


def _corners(p: Param) -> tuple[Any, ...]:
    return p.choices if isinstance(p, CategoricalParam) else (p.low, p.high)


def corner_points(spec: SearchSpec) -> Iterator[dict[str, Any]]:
    """Every combination of bounds and choices (one parameter at a time if there are too many)."""
    corners = [_corners(p) for p in spec.params]
    if math.prod(len(c) for c in corners) <= MAX_CORNER_COMBINATIONS:
        for values in itertools.product(*corners):
            yield {p.path: v for p, v in zip(spec.params, values, strict=True)}
        return
    for p, values in zip(spec.params, corners, strict=True):
        for v in values:
            yield {p.path: v}


# ----------------------------------------------------------------------------- conversions


def to_tune_param_space(spec: SearchSpec) -> dict[str, Any]:
    """``{path: ray.tune domain}``; dotted keys stay flat (Tune only splits on ``/``)."""
    from ray import tune

    def domain(p: Param) -> Any:
        if isinstance(p, FloatParam):
            return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
        if isinstance(p, IntParam):
            if p.log:
                return tune.lograndint(p.low, p.high + 1)  # Tune's upper bound is exclusive
            if p.step > 1:
                return tune.qrandint(p.low, p.high, p.step)  # inclusive upper bound
            return tune.randint(p.low, p.high + 1)  # exclusive upper bound
        return tune.choice(list(p.choices))

    return {p.path: domain(p) for p in spec.params}


def to_optuna_distributions(spec: SearchSpec) -> dict[str, Any]:
    """``{path: optuna distribution}`` with the same support as :func:`to_tune_param_space`."""
    from optuna import distributions as od

    def dist(p: Param) -> Any:
        if isinstance(p, FloatParam):
            return od.FloatDistribution(p.low, p.high, log=p.log)
        if isinstance(p, IntParam):
            return od.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        return od.CategoricalDistribution(list(p.choices))

    return {p.path: dist(p) for p in spec.params}


_SAMPLER_NEEDS = {"gp": ("scipy", "GPSampler"), "cmaes": ("cmaes", "CmaEsSampler")}


def make_sampler(spec: SearchSpec) -> Any:
    """The Optuna sampler named by ``study.sampler``, seeded with ``study.sampler_seed``."""
    import optuna

    name, seed = spec.study.sampler, spec.study.sampler_seed
    if name in _SAMPLER_NEEDS:
        module, cls_name = _SAMPLER_NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise SearchSpaceError(
                f"{spec.source}: study.sampler = {name!r}: optuna's {cls_name} needs the "
                f"`{module}` package (pip install {module})"
            )
    if name == "grid":
        grid = {p.path: list(p.choices) for p in spec.params if isinstance(p, CategoricalParam)}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    return classes[name](seed=seed, n_startup_trials=spec.study.startup_trials)


def _describe_param(p: Param) -> str:
    if isinstance(p, CategoricalParam):
        return f"{p.path}: one of {list(p.choices)}"
    scale = "log" if p.log else "linear"
    step = f", step {p.step}" if isinstance(p, IntParam) and p.step > 1 else ""
    return f"{p.path}: {type(p).__name__[:-5].lower()} [{p.low}, {p.high}] {scale}{step}"


def _startup(s: StudySettings) -> str:
    models = s.sampler in ("tpe", "gp", "cmaes")
    return f", {s.startup_trials} random trials first" if models else ""


def describe(spec: SearchSpec) -> str:
    """Human-readable summary for ``--dry-run``."""
    s = spec.study
    sched = (
        f"asha(max_t={s.max_t}, grace={s.grace_period}, eta={s.reduction_factor:g})"
        if s.scheduler == "asha"
        else "none"
    )
    budget = f"{s.time_budget_s:g} s" if s.time_budget_s else "none"
    concurrent = s.max_concurrent_trials or "auto"
    data = (
        f"{', '.join(s.datasets)} (one study each)"
        if len(s.datasets) > 1
        else (s.datasets or (spec.base_config().data.path,))[0]
    )
    search = (
        f"  seeds only: one trial per seed {list(s.seeds)}, no sampler, no early stopping; "
        if spec.seeds_only
        else f"  sampler {s.sampler} (seed {s.sampler_seed}{_startup(s)}); scheduler {sched}; "
    )
    lines = [
        f"study {s.name!r} from {spec.source}",
        f"  optimise {s.metric} ({s.mode}); {s.num_samples} trials"
        + (" + reference (alpha = beta = 0)" if s.reference else ""),
        f"{search}time budget {budget}",
        f"  per trial {s.workers_per_trial} workers x ({s.cpus_per_worker:g} CPU, "
        f"{s.gpus_per_worker:g} GPU); {concurrent} concurrent",
        f"  embedder {spec.base_config().embedder.name}, data {data}",
        "  fixed: " + (", ".join(f"{k}={v!r}" for k, v in spec.fixed.items()) or "nothing"),
        "  searched:",
        *(f"    {_describe_param(p)}" for p in spec.params),
    ]
    return "\n".join(lines)
