"""The answer pool: earlier answers found by row identity (id + request digest), never by position."""

from __future__ import annotations

from typing import Any

from flows.resume import AnswerPool
from schemas import Params, request_digest


def answer(row_id: str, digest: str, status: str = "ok", cost: float = 0.01, text: str = "x") -> dict[str, Any]:
    return {"id": row_id, "request_digest": digest, "status": status, "completion": text, "cost_usd": cost}


class TestAnswerPool:
    """Take by identity; final answers before errors; retry-errors leaves errors out."""

    def test_identity_is_id_and_request(self) -> None:
        pool = AnswerPool()
        pool.add(answer("a", "d1", text="first"))
        assert pool.take("a", "d2") is None  # same id, another request: its answer does not belong
        assert pool.take("b", "d1") is None
        taken = pool.take("a", "d1")
        assert taken is not None and taken["completion"] == "first"
        assert pool.take("a", "d1") is None and pool.size == 0

    def test_identical_rows_take_one_answer_each(self) -> None:
        pool = AnswerPool()
        pool.add(answer("a", "d", text="one"))
        pool.add(answer("a", "d", text="two"))
        assert {pool.take("a", "d")["completion"], pool.take("a", "d")["completion"]} == {"one", "two"}  # type: ignore[index]

    def test_a_final_answer_wins_over_an_error(self) -> None:
        pool = AnswerPool()
        pool.add(answer("a", "d", status="error"))
        pool.add(answer("a", "d", status="ok", text="retried"))
        taken = pool.take("a", "d")
        assert taken is not None and taken["status"] == "ok"

    def test_retry_errors_leaves_errors_out(self) -> None:
        pool = AnswerPool(retry_errors=True)
        pool.add(answer("a", "d", status="error"))
        pool.add(answer("b", "d", status="filtered"))
        assert pool.take("a", "d") is None and pool.take("b", "d") is not None

    def test_retry_errors_asks_invalid_labels_again_and_a_plain_resume_keeps_them(self) -> None:
        retrying, resuming = AnswerPool(retry_errors=True), AnswerPool()
        for pool in (retrying, resuming):
            pool.add(answer("a", "d", status="invalid"))
        assert retrying.take("a", "d") is None
        taken = resuming.take("a", "d")
        assert taken is not None and taken["status"] == "invalid"

    def test_rows_without_identity_are_never_reused(self) -> None:
        pool = AnswerPool()
        pool.add({"id": None, "request_digest": None, "status": "error", "cost_usd": 0.0})
        pool.add(answer("a", "d", cost=0.25))
        assert pool.size == 1 and pool.cost_usd == 0.25 and pool.by_status()["ok"] == 1


class TestRequestDigest:
    """Equal requests, equal digests; any change to messages or params, another digest."""

    def test_changes(self) -> None:
        messages = ({"role": "user", "content": "hi"},)
        base = request_digest(messages, Params())
        assert base == request_digest(({"role": "user", "content": "hi"},), Params())
        assert base != request_digest(({"role": "user", "content": "hi!"},), Params())
        assert base != request_digest(messages, Params(max_tokens=7))
        assert len(base) == 32
