"""Planning a sweep: the grid checked, its trials listed, each with a stable key.

    sweep = plan("cnn", {"conv_channels": [(), (16,), (32, 64)]}, seeds=(0, 1))

``plan`` refuses a bad grid with a ConfigError naming the value, before anything
trains or is written. A sweep is the product of the grid's values, times the
seeds; each trial has a key made of everything that changes what is trained
(model kind, dataset, training-set size, every hyperparameter, seed), so a
sweep run again recognises the trials it already has. ``parse_values`` and
``parse_seeds`` read the command line's text into the same values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digits import registry, store
from digits.errors import ConfigError

SWEEPS_DIR = ".sweeps"  # under the runs dir; hidden, so never listed as a run
RESULTS_FILE = "results.csv"
# A bigger grid is almost certainly a typo: 200 trials of a small CNN on 10,000
# images take about 3 hours on the 2-core machine.
MAX_TRIALS = 200
MAX_SEED = 2**32 - 1  # scikit-learn's and NumPy's legacy seeds stop here


def sweeps_dir() -> Path:
    """Where sweeps keep their tables: ``<runs dir>/.sweeps``."""
    return store.runs_dir() / SWEEPS_DIR


# -- the grid ---------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One configuration and seed of a sweep."""

    key: str  # stable: kind, dataset, training-set size, hyperparameters, seed
    label: str  # the swept values, e.g. "conv 32-64 · hidden 100"
    config: dict[str, Any]  # the swept hyperparameters' values
    seed: int
    params: dict[str, Any]  # every hyperparameter given to train_run
    run_name: str

    @property
    def depth(self) -> int:
        return depth(self.params)

    @property
    def width(self) -> int:
        return width(self.params)


@dataclass(frozen=True)
class Sweep:
    """A checked grid: what ``plan`` returns and ``run_sweep`` runs."""

    name: str
    kind: str
    dataset: str
    grid: dict[str, tuple]  # hyperparameter -> the values tried
    seeds: tuple[int, ...]
    train_size: int | None
    params: dict[str, Any]  # fixed hyperparameters under the grid
    trials: tuple[Trial, ...]

    @property
    def folder(self) -> Path:
        return sweeps_dir() / self.name

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS_FILE

    @property
    def epochs(self) -> int:
        """Epochs per trial: the grid's max_iter, else the model kind's default."""
        model = registry.get(self.kind).build(**self.trials[0].params)
        return int(model.get_params()["max_iter"])


def depth(params: Mapping[str, Any]) -> int:
    """Hidden layers with weights: conv blocks plus dense hidden layers."""
    return len(params.get("conv_channels") or ()) + len(
        params.get("hidden_layer_sizes") or ()
    )


def width(params: Mapping[str, Any]) -> int:
    """Units of the widest dense hidden layer (0 without one).

    Conv channels are left out: a grid's depths usually add blocks of more
    channels, so counting them would make width follow depth.
    """
    return max(params.get("hidden_layer_sizes") or (), default=0)


def _short(name: str, value: Any) -> str:
    """A value as a label shows it: (32, 64) -> "32-64", () -> "none"."""
    if isinstance(value, tuple | list):
        return "-".join(map(str, value)) or "none"
    return str(value)


LABEL_NAMES = {"conv_channels": "conv", "hidden_layer_sizes": "hidden"}


def _label(config: Mapping[str, Any]) -> str:
    parts = [f"{LABEL_NAMES.get(k, k)} {_short(k, v)}" for k, v in config.items()]
    return " · ".join(parts) or "base"


def _canonical(value: Any) -> Any:
    """Tuples for layer lists (they arrive as lists from JSON and widgets)."""
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_value(spec: registry.ModelKind, name: str, value: Any) -> None:
    """ConfigError naming ``name`` and ``value`` unless the value is usable."""
    try:
        hp = spec.hyperparameter(name)
    except ConfigError:
        hp = None  # a parameter the dashboard does not offer: the estimator checks
    problem = None
    if hp is None:
        pass
    elif hp.type == "layers":
        if not isinstance(value, tuple) or any(v < 1 for v in value):
            problem = "each layer needs a positive whole number of units/channels"
    elif hp.type == "choice":
        if value not in hp.choices:
            problem = f"choose from {', '.join(map(str, hp.choices))}"
    elif hp.type == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problem = "it must be a whole number, 0 or more"
        elif name != "random_state" and value < 1:
            problem = "it must be 1 or more"
    elif hp.type in ("float", "log"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = "it must be a number"
        elif not math.isfinite(value) or value < 0 or (hp.type == "log" and value == 0):
            problem = (
                "it must be a finite number above 0"
                if hp.type == "log"
                else ("it must be a finite number, 0 or more")
            )
    if problem:
        raise ConfigError(f"Invalid value {value!r} for {name}: {problem}.")


def _key(kind: str, dataset: str, train_size: int | None, params: Mapping) -> str:
    text = json.dumps(
        store.jsonable(
            {"kind": kind, "dataset": dataset, "train_size": train_size, **params}
        ),
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def plan(
    kind: str,
    grid: Mapping[str, Iterable],
    *,
    dataset: str = "mnist",
    seeds: Sequence[int] = (0,),
    train_size: int | None = None,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Sweep:
    """Check a grid and list its trials; ConfigError before anything runs.

    grid : hyperparameter -> the values to try, e.g. ``{"conv_channels": [(),
        (32,)], "hidden_layer_sizes": [(100,)]}``; every combination is a
        configuration, trained once per seed (``random_state``).
    params : fixed hyperparameters for every trial (e.g. ``max_iter``).
    name : the sweep's name (sanitised); by default one made from the kind,
        dataset and a hash of every trial's key, so that the same sweep resumes
        where it left off and any other grid (another value, seed, epoch count
        or training-set size) gets a table of its own. Give a name to make a
        grid with more values or seeds add to an earlier table.
    """
    spec = registry.get(kind)
    fixed = {k: _canonical(v) for k, v in dict(params or {}).items()}
    values: dict[str, tuple] = {}
    for hp_name, raw in dict(grid).items():
        if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
            raise ConfigError(
                f"The grid's values for {hp_name} must be a list, got {raw!r}."
            )
        options = tuple(dict.fromkeys(_canonical(v) for v in raw))
        if not options:
            raise ConfigError(
                f"The grid gives no values for {hp_name}; give at least one, or "
                f"leave it out."
            )
        values[hp_name] = options
    if "random_state" in values or "random_state" in fixed:
        raise ConfigError("Seeds are set with seeds=, not as random_state.")
    seeds = _check_seeds(seeds)
    if train_size is not None and train_size < 1:
        raise ConfigError(f"train_size must be at least 1; got {train_size}.")
    n_trials = math.prod(len(v) for v in values.values()) * len(seeds)
    if n_trials > MAX_TRIALS:
        raise ConfigError(
            f"The grid has {n_trials} trials "
            f"({' x '.join(str(len(v)) for v in values.values())} configurations x "
            f"{len(seeds)} seeds); the limit is {MAX_TRIALS}. Try fewer values or "
            f"seeds, or split it into several sweeps."
        )
    # Unknown names fail in spec.params, bad values here: all before any training.
    spec.params(**fixed, **{k: v[0] for k, v in values.items()})
    for hp_name, value in itertools.chain(
        fixed.items(), ((k, v) for k, vs in values.items() for v in vs)
    ):
        _check_value(spec, hp_name, value)
    swept = [k for k, v in values.items() if len(v) > 1]
    planned = []  # (config, seed, every hyperparameter, key)
    for combo in itertools.product(*values.values()):
        config = dict(zip(values, combo, strict=True))
        for seed in seeds:
            hyper = spec.params(**fixed, **config, random_state=seed)
            key = _key(kind, dataset, train_size, hyper)
            planned.append((config, seed, hyper, key))
    if name is None:
        # From every trial's key, so from everything that changes what is trained
        # (kind, dataset, training-set size, every value, seeds, epochs): the same
        # command resumes its own table, and no other grid shares it. Sorted, so
        # that the order values are given in does not matter.
        keys = " ".join(sorted(key for *_, key in planned))
        digest = hashlib.sha256(keys.encode()).hexdigest()[:8]
        name = f"sweep-{kind}-{Path(dataset).stem}-{digest}"
    name = store.sanitize_name(name)
    trials = []
    for config, seed, hyper, key in planned:
        label = _label({k: config[k] for k in swept})
        trials.append(
            Trial(
                key=key,
                label=label,
                config=config,
                seed=seed,
                params=hyper,
                run_name=store.sanitize_name(f"{name}-{label}-s{seed}"),
            )
        )
    return Sweep(
        name=name,
        kind=kind,
        dataset=dataset,
        grid=values,
        seeds=seeds,
        train_size=train_size,
        params=fixed,
        trials=tuple(trials),
    )


def _check_seeds(seeds: Iterable) -> tuple[int, ...]:
    """Seeds as distinct ints in 0..MAX_SEED; ConfigError naming the bad one.

    At most MAX_TRIALS are taken from ``seeds``, so that ``range(10**9)`` is
    refused at once instead of being listed.
    """
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
        raise ConfigError(f"Seeds must be a list of whole numbers; got {seeds!r}.")
    taken = list(itertools.islice(seeds, MAX_TRIALS + 1))
    if len(taken) > MAX_TRIALS:
        raise ConfigError(
            f"More than {MAX_TRIALS} seeds; a sweep has at most {MAX_TRIALS} trials."
        )
    checked = []
    for seed in taken:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ConfigError(f"Seed {seed!r} is not a whole number.")
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(
                f"Seeds must be between 0 and {MAX_SEED}; got {int(seed)}."
            )
        checked.append(int(seed))
    unique = tuple(dict.fromkeys(checked))
    if not unique:
        raise ConfigError("A sweep needs at least one seed.")
    return unique


def parse_values(hp: registry.Hyperparameter, text: str) -> list:
    """The grid values of a command-line flag; ConfigError if any is invalid.

    Layer lists are written in parentheses, ``"(),(16,),(32,64)"``, or separated
    by semicolons, ``"30;100;128,64"``; other values by commas or semicolons,
    ``"0.001,0.01"``.
    """
    text = text.strip()
    if hp.type == "layers":
        if "(" in text or ")" in text:
            groups = re.findall(r"\(([^()]*)\)", text)
            rest = re.sub(r"\(([^()]*)\)", "", text)
            if not groups or rest.strip(" ,;"):
                raise ConfigError(
                    f"Cannot read {text!r} as a list of {hp.name}: write each in "
                    f'parentheses, e.g. "(),(16,),(32,64)".'
                )
        else:
            groups = text.split(";")
            if any(not group.strip() for group in groups):
                # An empty flag or ";;" is a slip, not a request for no layers.
                raise ConfigError(
                    f"No value given for {hp.name} in {text!r}: separate layer "
                    f'lists with ";" (e.g. "30;100;128,64"), and write "()" for '
                    f"none."
                )
        return [hp.parse(group) for group in groups]
    parts = [p for p in re.split(r"[;,]", text) if p.strip()]
    if not parts:
        raise ConfigError(f"No values given for {hp.name}.")
    return [hp.parse(p) for p in parts]


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "3" -> (0, 1, 2); "0,5,7" -> (0, 5, 7); ConfigError for anything else.

    A count runs from 1 to MAX_TRIALS; a listed seed from 0 to MAX_SEED, each
    listed once (a repeat would train the same model twice).
    """
    how = "give a count (--seeds 3) or a list (--seeds 0,5,7)"
    parts = [p for p in re.split(r"[;,\s]+", text.strip()) if p]
    if not parts:
        raise ConfigError(f"No seeds given: {how}.")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"Cannot read seeds {text!r}: {how}.") from None
    if len(numbers) == 1:
        count = numbers[0]
        if count < 1:
            raise ConfigError(
                f"The number of seeds must be 1 or more; got {text!r}. To train "
                f"one given seed, list it with another (--seeds 0,5)."
            )
        if count > MAX_TRIALS:
            raise ConfigError(
                f"{count} seeds is more than a sweep's {MAX_TRIALS} trials; give "
                f"fewer (e.g. --seeds 3)."
            )
        return tuple(range(count))
    repeated = [n for n, times in Counter(numbers).items() if times > 1]
    if repeated:
        raise ConfigError(
            f"Seed {repeated[0]} is listed more than once in {text!r}; list each "
            f"seed once."
        )
    return _check_seeds(numbers)
