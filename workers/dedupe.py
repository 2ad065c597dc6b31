"""Identical requests paid once: the first row with a request digest is sent, its copies take its answer.

Rows are known by ``request_digest`` (their messages and parameters; the model and the job's
settings are the job's own). In input order, the first row with a digest is sent; a later row
with the same digest either takes the answer at once (it has come) or waits for it. Answers
known before the run (an earlier run's, or a kept part's) count as come. A copy's record is its
original's answer with its own id, ``duplicate_of`` naming the row whose answer it carries, and
no tokens, cost or attempts of its own.

Memory: one entry per distinct digest seen (its original's id), and the answer — our columns
only — of each distinct request answered in this run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Plan = Literal["send", "wait", "copy"]
#: The columns a copy has of its own (its answer is its original's).
_ZEROED = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0.0, "attempts": 0,
           "latency_ms": None}


def copy_record(original: Mapping[str, Any], row_id: str) -> dict[str, Any]:
    """The record of a copy of ``original``'s request: its answer, the copy's id, ``duplicate_of``, no cost."""
    origin = original.get("duplicate_of") or original.get("id")
    return {**original, **_ZEROED, "id": row_id, "duplicate_of": origin}


@dataclass
class Duplicates(Generic[T]):
    """Plans each row of a run: send it, have it wait for its original, or copy an answer that is in.

    ``lookup`` finds an answer an earlier run left for a digest (``None`` when there is none).
    """

    lookup: Callable[[str], Mapping[str, Any] | None] = lambda digest: None
    _sent: dict[str, str] = field(default_factory=dict)
    _answers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    _waiting: dict[str, list[T]] = field(default_factory=dict)
    copies: int = 0

    def plan(self, digest: str, row_id: str, row: T) -> tuple[Plan, Mapping[str, Any] | None]:
        """What to do with a row: ``("send", None)``, ``("wait", None)`` (held here), or ``("copy", answer)``."""
        answer = self._answers.get(digest)
        if answer is None and digest not in self._sent:
            answer = self.lookup(digest)
            if answer is not None:
                self._answers[digest] = answer
        if answer is not None:
            self.copies += 1
            return "copy", answer
        if digest in self._sent:
            self.copies += 1
            self._waiting.setdefault(digest, []).append(row)
            return "wait", None
        self._sent[digest] = row_id
        return "send", None

    def known(self, digest: str, answer: Mapping[str, Any]) -> None:
        """An answer taken from an earlier run for a row of this one: later copies take it too."""
        self._answers.setdefault(digest, answer)

    def answered(self, digest: str, answer: Mapping[str, Any]) -> list[T]:
        """The original's answer is in: keep it for later copies; the copies that waited for it."""
        self._answers[digest] = answer
        return self._waiting.pop(digest, [])

    @property
    def waiting(self) -> int:
        """Copies still waiting for their original's answer."""
        return sum(len(rows) for rows in self._waiting.values())
