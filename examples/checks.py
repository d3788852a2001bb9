"""Shared by the examples: named PASS/FAIL checks and the summary that gives the exit status."""

from __future__ import annotations


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.count = 0

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.count += 1
        if not ok:
            self.failed.append(name)
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f" ({detail})" if detail else ""))

    def summary(self) -> int:
        """Print the outcome; the process exit status (1 if any check failed)."""
        if self.failed:
            print(f"\nFAILED: {len(self.failed)} check(s): {', '.join(self.failed)}")
            return 1
        print(f"\nAll {self.count} checks passed.")
        return 0
