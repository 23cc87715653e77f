"""The settings of many runs in a few lines: per kind and method, what every run shares and
what varies between runs (the report's settings section).

A run's spec.json holds every setting of its job (3 KB); a study of 10,000 runs embedding
each would make a page of 30 MB that nobody reads. Runs of one method differ in a few keys
(seed, fraction, job id, the pretraining they load), so :class:`SettingsSummary` keeps, per
(kind, method), one run's spec (the reference) and, for each top-level key whose value
differs in another run, the values it takes (for a mapping, the differing entries one level
down). Which run is the reference changes nothing shown: a key varies when the runs' values
differ, and the shared settings are equal in every run. The results index
(:mod:`bench.report.index`) keeps each run's differences and each group's reference, so a
later scan need not read the specs again. Each run's spec.json stays in its folder.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

SHOWN_VALUES = 12  # distinct values listed for a varying key; more are counted


# one way a spec differs from its group's reference: [key, value], the key "section" or,
# for an entry of a mapping section, "section.entry" (section names have no dot), the value
# as a Group keeps it (lists and mappings as their JSON text, :func:`_hashable`)
Difference = list
GroupKey = tuple[str, str]


def differences(reference: dict[str, Any], spec: dict[str, Any]) -> list[Difference]:
    """How ``spec`` differs from ``reference``: per top-level key, or for mappings in both,
    per entry one level down (JSON-ready, so a scan can keep it in the results index)."""
    found = []
    for key in reference.keys() | spec.keys():
        value, ref = spec.get(key), reference.get(key)
        if value == ref:
            continue
        if isinstance(value, dict) and isinstance(ref, dict):
            found += [
                [f"{key}.{entry}", _hashable(value.get(entry))]
                for entry in value.keys() | ref.keys()
                if value.get(entry) != ref.get(entry)
            ]
        else:
            found.append([key, _hashable(value)])
    return found


def _value_at(spec: dict[str, Any], key: str) -> Any:
    """The value of ``key`` ("section" or "section.entry") in ``spec``; None without one."""
    section, _, entry = key.partition(".")
    value = spec.get(section)
    if entry:
        return value.get(entry) if isinstance(value, dict) else None
    return value


@dataclass
class Group:
    """The runs of one (kind, method): how many, one run's spec (``first``, the reference)
    and for each key that differs from it (``section`` or ``section.entry``) the distinct
    values seen (lists and mappings as their JSON text, so they can be kept in a set);
    ``reference`` names the run ``first`` came from ([job id, spec.json signature]) when
    known."""

    runs: int
    first: dict[str, Any]
    varying: dict[str, set] = field(default_factory=dict)
    reference: list | None = None

    def add(self, spec: dict[str, Any]) -> list[Difference]:
        """Count ``spec``; return how it differs from the reference."""
        found = differences(self.first, spec)
        self.add_differences(found)
        return found

    def add_differences(self, found: list[Difference]) -> None:
        """Count a run that differs from the reference by ``found``."""
        self.runs += 1
        varying = self.varying
        for key, value in found:
            values = varying.get(key)
            if values is None:
                values = varying[key] = {_hashable(_value_at(self.first, key))}
            values.add(value)


@dataclass
class SettingsSummary:
    """Runs' specs grouped by (kind, method), in the order first seen. ``known``: reference
    specs a results index kept, still valid (group -> (spec, [job id, signature])); a group
    uses its known reference, so the differences the index kept of its runs still apply."""

    groups: dict[GroupKey, Group] = field(default_factory=dict)
    known: dict[GroupKey, tuple[dict[str, Any], list]] = field(default_factory=dict)

    def add(self, spec: dict[str, Any], reference: list | None = None):
        """Count ``spec`` (of the run ``reference`` names); return its group, how it differs
        from the group's reference and that reference's name."""
        key = (str(spec.get("kind", "?")), str(spec.get("method", "?")))
        group = self._group(key) or self.groups.setdefault(key, Group(0, spec, reference=reference))
        return key, group.add(spec), group.reference

    def add_known(self, key: GroupKey, found: list[Difference], reference: list) -> bool:
        """Count a run by the differences a results index kept (against ``reference``);
        False (nothing counted) when its group's reference is another."""
        group = self._group(key)
        if group is None or group.reference is None or group.reference != reference:
            return False
        group.add_differences(found)
        return True

    def _group(self, key: GroupKey) -> Group | None:
        if key not in self.groups and key in self.known:
            spec, reference = self.known[key]
            self.groups[key] = Group(0, spec, reference=reference)
        return self.groups.get(key)

    def references(self) -> list[list]:
        """[kind, method, [job id, signature], spec] of each group with a named reference."""
        return [[*key, g.reference, g.first] for key, g in self.groups.items() if g.reference]

    def html(self) -> str:
        """Per group: its run count, the keys that vary with their values, and the shared
        settings (the first run's spec without the varying keys) as JSON, folded."""
        parts = []
        for (kind, method), group in self.groups.items():
            varying = "".join(
                f"<li><code>{html.escape(key)}</code>: {html.escape(_values(values))}</li>"
                for key, values in sorted(group.varying.items())
            )
            shared = _without(group.first, group.varying)
            parts.append(
                f"<h3>{html.escape(kind)} {html.escape(method)}: {group.runs} run"
                f"{'s' * (group.runs != 1)}</h3>\n"
                + (f"<p>Varies between its runs:</p><ul>{varying}</ul>\n" if varying else "")
                + "<details><summary>settings every run shares</summary><pre>"
                + html.escape(json.dumps(shared, indent=2, sort_keys=True))
                + "</pre></details>"
            )
        return "\n".join(parts)


def _without(spec: dict[str, Any], varying: dict[str, set]) -> dict[str, Any]:
    """``spec`` less the varying keys (``section`` or ``section.entry``)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in spec.items() if k not in varying}
    for key in varying:
        section, _, entry = key.partition(".")
        if entry and isinstance(out.get(section), dict):
            out[section].pop(entry, None)
    return out


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _values(values: set) -> str:
    """``0, 1, 2`` or, past :data:`SHOWN_VALUES`, the first ones and how many in all."""
    ordered = sorted(map(str, values), key=_sort_key)
    if len(ordered) <= SHOWN_VALUES:
        return ", ".join(ordered)
    return f"{', '.join(ordered[:SHOWN_VALUES])}, ... ({len(ordered)} values)"


def _sort_key(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
