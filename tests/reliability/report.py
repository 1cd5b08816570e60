"""What a reliability scenario measured: named figures, each with its target and verdict."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("quick", "full")


@dataclass
class Check:
    """One figure: what it measures, its value, the target it must meet and whether it did."""

    name: str
    value: Any
    target: str
    ok: bool
    unit: str = ""
    timing: bool = False  # a speed/latency target: the bench script enforces it, tests only print it

    def render(self) -> str:
        value = f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)
        mark = "ok  " if self.ok else ("SLOW" if self.timing else "FAIL")
        unit = f" {self.unit}" if self.unit else ""
        return f"  [{mark}] {self.name}: {value}{unit}" + (f"  (target {self.target})" if self.target else "")


@dataclass
class Report:
    """Figures of one scenario run; ``ok`` when every check met its target."""

    scenario: str
    profile: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def check(self, name: str, value: Any, ok: bool, target: str = "", unit: str = "", *,
              timing: bool = False) -> Any:
        """Record a figure with its verdict; returns the value.

        ``timing=True`` marks a latency or speed target: scripts/bench_reliability.py fails on
        it, the CI tests print it but do not fail on it (shared machines are noisy).
        """
        self.checks.append(Check(name, value, target, bool(ok), unit, timing))
        return value

    def figure(self, name: str, value: Any, unit: str = "") -> Any:
        """Record a figure that has no target (context for the reader)."""
        self.checks.append(Check(name, value, "", True, unit))
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def done(self) -> Report:
        self.seconds = time.monotonic() - self.started
        return self

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def render(self) -> str:
        head = f"== {self.scenario} ({self.profile}, {self.seconds:.1f} s): {'PASS' if self.ok else 'FAIL'}"
        lines = [head, *(check.render() for check in self.checks)]
        lines += [f"  note: {text}" for text in self.notes]
        return "\n".join(lines)

    def value(self, name: str) -> Any:
        """The value of the named check (tests assert on single figures)."""
        for check in self.checks:
            if check.name == name:
                return check.value
        raise KeyError(f"{self.scenario} has no figure {name!r}; it has {[c.name for c in self.checks]}")


def assert_passed(report: Report) -> None:
    """Fail a test with every figure shown when any non-timing check missed its target."""
    print(report.render())  # shown by pytest -rP / on failure
    assert report.checks, f"{report.scenario} measured nothing"
    missed = [check for check in report.checks if not check.ok and not check.timing]
    assert not missed, "\n" + report.render()
