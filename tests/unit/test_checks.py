"""Checks at the edges: job files, ids, echoed secrets and usage figures."""

from __future__ import annotations

import pytest

from schemas import BadRowError, JobFileError, Params, PromptSpec, build_row, parse_job
from workers import Completion, TokenCounter, TransportError
from workers.client import parse_completion
from workers.redact import mask, mask_bytes
from workers.usage import checked_usage

BASE = "input: a.jsonl\noutput: out\n"
ENDPOINT = "{url: %s, model: mistral-large}"


class TestJobFile:
    """Duplicate keys, alias bombs and a deployment listed twice are refused, naming what."""

    def test_duplicate_key(self) -> None:
        with pytest.raises(JobFileError, match="duplicate key `output` \\(lines 2 and 4\\)"):
            parse_job(BASE + "endpoint: " + ENDPOINT % "http://x" + "\noutput: other\n")

    def test_alias_bomb(self) -> None:
        bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True))
        assert len(bomb) < 700
        with pytest.raises(JobFileError, match="expands to more than 10,000 YAML nodes"):
            parse_job(BASE + bomb)

    @pytest.mark.parametrize(("first", "second"), [
        ("https://x.example.com", "https://x.example.com/"),
        ("https://X.example.com:443/", "https://x.example.com"),
    ])
    def test_same_deployment_twice(self, first: str, second: str) -> None:
        text = BASE + f"endpoints: [{ENDPOINT % first}, {ENDPOINT % second}]\n"
        with pytest.raises(JobFileError, match="`endpoints\\[0\\]` and `endpoints\\[1\\]` are the same deployment"):
            parse_job(text)

    def test_distinct_deployments(self) -> None:
        text = BASE + f"endpoints: [{ENDPOINT % 'https://a.example.com'}, {ENDPOINT % 'https://b.example.com'}]\n"
        assert len(parse_job(text).all_endpoints) == 2


class TestIds:
    """Integer ids become text; booleans, floats and ints mixed with string ids are refused."""

    def row(self, value: object, mixed: bool = False) -> str:
        return build_row({"id": value, "messages": [{"role": "user", "content": "hi"}]}, 0, "f line 1",
                         PromptSpec(), Params(), mixed_ids=mixed).id

    def test_integer(self) -> None:
        assert self.row(7) == "7" and self.row("7") == "7"

    @pytest.mark.parametrize("value", [True, 1.5, {"a": 1}])
    def test_refused(self, value: object) -> None:
        with pytest.raises(BadRowError, match="field `id`: must be a string or an integer"):
            self.row(value)

    def test_mixed_with_strings(self) -> None:
        with pytest.raises(BadRowError, match="same id as \"7\""):
            self.row(7, mixed=True)


class TestMask:
    """Echoed credentials are masked whoever's they are; the known key in bytes too."""

    @pytest.mark.parametrize(("text", "gone"), [
        ("Authorization: Bearer sk-abc123def", "sk-abc123def"),
        ('{"headers": {"api-key": "zzz999yy"}}', "zzz999yy"),
        ("upstream said bearer tok-98765 no", "tok-98765"),
        ("x-api-key=k1234567&y=1", "k1234567"),
    ])
    def test_patterns(self, text: str, gone: str) -> None:
        assert gone not in mask(text) and "***" in mask(text)

    def test_plain_words_stay(self) -> None:
        assert mask("the bearer of good news") == "the bearer of good news"

    def test_bytes(self) -> None:
        assert mask_bytes(b'{"k": "a/b+c=="}', ["a/b+c=="]) == b'{"k": "***"}'


class TestUsage:
    """Missing usage is counted; negative, fractional or impossible usage is unreadable."""

    def completion(self, usage: object) -> Completion:
        body = ('{"choices": [{"message": {"content": "Ciao amico"}, "finish_reason": "stop"}]'
                + (f', "usage": {usage}' if usage is not None else "") + "}")
        return parse_completion(body.encode(), {})

    def test_missing_is_counted(self) -> None:
        counter = TokenCounter("mistral-large-2407")
        usage = checked_usage(self.completion(None), 20, 50, counter)
        assert usage.estimated and usage.prompt_tokens == 20
        assert usage.completion_tokens == len(counter.text_tokens("Ciao amico"))

    @pytest.mark.parametrize("usage", ['{"prompt_tokens": -1, "completion_tokens": 2}',
                                       '{"prompt_tokens": 10, "completion_tokens": 2.5}',
                                       '{"prompt_tokens": "ten", "completion_tokens": 2}'])
    def test_unreadable(self, usage: str) -> None:
        with pytest.raises(TransportError, match="unreadable answer"):
            self.completion(usage)

    @pytest.mark.parametrize(("prompt", "completion"), [(10**12, 3), (10, 10**12), (10, 67)])
    def test_beyond_the_request(self, prompt: int, completion: int) -> None:
        reported = self.completion(f'{{"prompt_tokens": {prompt}, "completion_tokens": {completion}}}')
        with pytest.raises(TransportError, match="unreadable answer"):
            checked_usage(reported, 10, 50, TokenCounter("mistral-large-2407"))

    def test_within_margin(self) -> None:
        reported = self.completion('{"prompt_tokens": 40, "completion_tokens": 52}')
        usage = checked_usage(reported, 10, 50, TokenCounter("mistral-large-2407"))
        assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (40, 52, False)
