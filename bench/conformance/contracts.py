"""One contract's outcome, and the helpers every conformance check shares."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import ConfigError
from bench.datasets.base import DatasetError


@dataclass(frozen=True)
class Contract:
    """One contract's outcome: ``status`` PASS, FAIL or SKIP (not checked: what it needs
    failed), and one line that says what was found or what to fix."""

    name: str
    status: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "PASS"

    def __str__(self) -> str:
        return f"{self.status} {self.name}: {self.message}"


def passed(name: str, message: str) -> Contract:
    return Contract(name, "PASS", message)


def failed(name: str, message: str) -> Contract:
    return Contract(name, "FAIL", " ".join(message.split()))  # one line


def guarded(name: str, check: Callable[[], Contract]) -> Contract:
    """``check()``, or a FAIL that names the exception it raised (foreign code may raise
    anything; one contract failing must not hide the others)."""
    try:
        return check()
    except Unavailable as why:
        return Contract(name, "SKIP", str(why))
    except DatasetError as error:
        return failed(name, str(error))  # names the file and the command that fixes it
    except ConfigError:
        raise  # bad input, reported as such by the caller
    except Exception as error:  # noqa: BLE001
        return failed(name, what_raised(error))


def what_raised(error: BaseException) -> str:
    """One line: the exception and the function (and file) that raised it, so a FAIL names
    the hook to fix; an unimplemented hook says so by name."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code if frame is not None else None
    where = f"{code.co_qualname} ({Path(code.co_filename).name}:{frame.tb_lineno})" if code else ""
    if isinstance(error, NotImplementedError) and code is not None:
        return f"hook {code.co_qualname} is not implemented (NotImplementedError); define it"
    lines = str(error).strip().splitlines()
    detail = f": {lines[0]}" if lines else ""
    return f"raised {type(error).__name__}{detail}" + (f" in {where}" if where else "")


def selected(contracts: tuple[str, ...], only: Iterable[str] | None) -> tuple[str, ...]:
    """The contracts to run after the first (the gate, which always runs): all, or those
    named in ``only``, which may name the gate too (ConfigError for other names)."""
    if only is None:
        return contracts[1:]
    only = tuple(only)
    unknown = [name for name in only if name not in contracts]
    if unknown or not only:
        raise ConfigError(
            f"unknown contract {', '.join(map(repr, unknown)) or '(none given)'}; valid "
            f"contracts: {', '.join(contracts)}"
        )
    return tuple(name for name in contracts[1:] if name in only)


class Unavailable(Exception):
    """What a contract needs (a step, a reference run) failed in an earlier contract."""


class Shared:
    """Results several contracts use, computed once when first needed; one that failed
    makes the later contracts that need it SKIP instead of failing again."""

    def __init__(self) -> None:
        self._values: dict[str, object] = {}
        self._failed: set[str] = set()

    def get(self, what: str, compute: Callable[[], object]):
        """The shared result ``what`` (its description, also its key)."""
        if what in self._failed:
            raise Unavailable(f"needs {what}, which failed above")
        if what not in self._values:
            try:
                self._values[what] = compute()
            except Exception:
                self._failed.add(what)
                raise
        return self._values[what]


def run_gated(first: str, names: tuple[str, ...], check: object, skip: str) -> Iterator[Contract]:
    """Contract ``first``, then each of ``names``, as they complete: contract ``a-b`` is
    ``check.a_b()``; when ``first`` does not pass, the others SKIP with reason ``skip``."""
    gate = guarded(first, getattr(check, first.replace("-", "_")))
    yield gate
    for name in names:
        if gate.ok:
            yield guarded(name, getattr(check, name.replace("-", "_")))
        else:
            yield Contract(name, "SKIP", skip)


@contextlib.contextmanager
def one_cpu_thread():
    """torch on one CPU thread while active: the checks' tiny tensors gain nothing from
    intra-op threads, and on a busy machine lose much to them (on 2 shared cores a check
    ran 6x slower with two threads than with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
