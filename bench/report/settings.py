"""The settings of many runs in a few lines: per kind and method, what every run shares and
what varies between runs (the report's settings section).

A run's spec.json holds every setting of its job (3 KB); a study of 10,000 runs embedding
each would make a page of 30 MB that nobody reads. Runs of one method differ in a few keys
(seed, fraction, job id, the pretraining they load), so :class:`SettingsSummary` keeps, per
(kind, method), the first run's spec and, for each top-level key whose value differs in a
later run, the values it takes (for a mapping, the differing entries one level down). Each
run's spec.json stays in its folder.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

SHOWN_VALUES = 12  # distinct values listed for a varying key; more are counted


@dataclass
class Group:
    """The runs of one (kind, method): how many, the first one's spec, and for each varying
    key (``section`` or ``section.entry``) the distinct values seen (lists and mappings as
    their JSON text, so they can be kept in a set)."""

    runs: int
    first: dict[str, Any]
    varying: dict[str, set] = field(default_factory=dict)

    def add(self, spec: dict[str, Any]) -> None:
        self.runs += 1
        for key in self.first.keys() | spec.keys():
            value, reference = spec.get(key), self.first.get(key)
            if value == reference:
                continue
            if isinstance(value, dict) and isinstance(reference, dict):
                for entry in value.keys() | reference.keys():
                    if value.get(entry) != reference.get(entry):
                        self._seen(f"{key}.{entry}", reference.get(entry), value.get(entry))
            else:
                self._seen(key, reference, value)

    def _seen(self, key: str, reference: Any, value: Any) -> None:
        values = self.varying.get(key)
        if values is None:
            values = self.varying[key] = {_hashable(reference)}
        values.add(_hashable(value))


@dataclass
class SettingsSummary:
    """Runs' specs grouped by (kind, method), in the order first seen."""

    groups: dict[tuple[str, str], Group] = field(default_factory=dict)

    def add(self, spec: dict[str, Any]) -> None:
        key = (str(spec.get("kind", "?")), str(spec.get("method", "?")))
        if key in self.groups:
            self.groups[key].add(spec)
        else:
            self.groups[key] = Group(1, spec)

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
