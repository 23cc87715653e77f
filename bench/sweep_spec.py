"""What a sweep runs, as the command line and experiment files give it: :class:`SweepSpec`.

Apart from :mod:`bench.sweep` (which checks and plans it against the method and dataset
registries, and so imports torch) so that reading an experiment file, and the commands that
only read results (``table``, ``report``, ``status``), stay light.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SweepSpec:
    """What to run. ``methods=None`` means every registered method that can run here;
    ``seeds=None`` means the preset's seeds; ``overrides`` are ``section.field=value``
    strings (``--set``); ``plugins`` are modules to import first (``--plugin``,
    :mod:`bench.plugins`). An explicitly empty list is an error. ``experiment``: the
    experiment file that planned the sweep, relative to the results folder
    (:mod:`bench.experiment`); each job's spec.json names it; not part of any job id."""

    methods: tuple[str, ...] | None = None
    datasets: tuple[str, ...] = ("synthetic",)
    fractions: tuple[float, ...] = (0.01, 0.1)
    seeds: tuple[int, ...] | None = None
    preset: str = "quick"
    overrides: tuple[str, ...] = field(default_factory=tuple)
    plugins: tuple[str, ...] = field(default_factory=tuple)
    experiment: str | None = None
