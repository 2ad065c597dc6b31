"""The job file: validation that names keys, overrides, prices and the job hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import PRICES_AS_OF, JobFileError, Price, parse_job

BASE = """
input: prompts/*.jsonl
output: out/
endpoint:
  url: https://mistral-large-xyz.eastus2.inference.ai.azure.com/
  model: mistral-large-2407
prompt:
  template: "Translate to Italian: {text}"
params: {max_tokens: 256, temperature: 0.2}
"""


class TestParseJob:
    """parse_job turns YAML into a JobSpec or one error naming each bad key."""

    @pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "jobs").glob("*.yaml")), ids=lambda p: p.name)
    def test_the_deployments_job_files_are_valid(self, path: Path) -> None:
        spec = parse_job(path.read_text(), source=str(path))
        assert spec.all_endpoints and spec.prompt.template

    def test_a_key_from_a_secret_block(self) -> None:
        spec = parse_job(BASE.replace("  model: mistral-large-2407", "  model: mistral-large-2407\n"
                                                                     "  api_key_secret: mistral-large-key"))
        assert spec.all_endpoints[0].api_key_secret == "mistral-large-key"
        with pytest.raises(JobFileError, match="endpoint.api_key_secret"):
            parse_job(BASE.replace("  model: mistral-large-2407", "  model: mistral-large-2407\n  api_key_secret: ''"))

    def test_defaults_and_normalization(self) -> None:
        spec = parse_job(BASE)
        (endpoint,) = spec.all_endpoints
        assert endpoint.url == "https://mistral-large-xyz.eastus2.inference.ai.azure.com"
        assert endpoint.api == "mistral"
        assert endpoint.api_key_env == "AZURE_MISTRAL_KEY"
        assert (endpoint.tokens_per_minute, endpoint.requests_per_minute) == (200_000, 1_000)
        assert spec.params.max_tokens == 256

    @pytest.mark.parametrize(
        ("extra", "named"),
        [
            ("colour: blue\n", "unknown key `colour`"),
            ("params: {max_tokens: 5, temprature: 0.1}\n", "unknown key `params.temprature`"),
            ("budget_usd: -1\n", "`budget_usd`"),
        ],
    )
    def test_errors_name_the_key(self, extra: str, named: str) -> None:
        text = BASE.replace("params: {max_tokens: 256, temperature: 0.2}\n", "") + extra
        with pytest.raises(JobFileError, match=named.replace("[", r"\[")):
            parse_job(text)

    def test_endpoint_typo_is_named(self) -> None:
        with pytest.raises(JobFileError, match=r"unknown key `endpoint.api_key`"):
            parse_job(BASE.replace("  model: mistral-large-2407", "  model: mistral-large-2407\n  api_key: sk-123"))

    def test_unknown_model_lists_known_ones(self) -> None:
        with pytest.raises(JobFileError, match=r"endpoint.model.*unknown model 'gpt-4'.*mistral-nemo"):
            parse_job(BASE.replace("mistral-large-2407", "gpt-4"))

    def test_exactly_one_endpoint_form(self) -> None:
        both = BASE + "endpoints:\n  - {url: http://127.0.0.1:1, model: mistral-nemo}\n"
        with pytest.raises(JobFileError, match="exactly one of `endpoint` or `endpoints`"):
            parse_job(both)

    def test_several_endpoints(self) -> None:
        text = BASE.replace("endpoint:\n  url: https://mistral-large-xyz.eastus2.inference.ai.azure.com/\n"
                            "  model: mistral-large-2407\n",
                            "endpoints:\n  - {url: http://a.example, model: mistral-nemo, api_key_env: K1}\n"
                            "  - {url: http://b.example, model: mistral-nemo, api_key_env: K2}\n")
        assert [e.api_key_env for e in parse_job(text).all_endpoints] == ["K1", "K2"]

    def test_not_yaml(self) -> None:
        with pytest.raises(JobFileError, match="not valid YAML"):
            parse_job("input: [unclosed", source="job.yaml")


class TestOverridesAndPrices:
    """CLI overrides, price overrides and the job hash."""

    def test_overrides(self) -> None:
        spec = parse_job(BASE).with_overrides(input="a.jsonl", output="o/", endpoint_url="http://127.0.0.1:9/")
        assert (spec.input, spec.output, spec.all_endpoints[0].url) == ("a.jsonl", "o/", "http://127.0.0.1:9")

    def test_builtin_and_overridden_prices(self) -> None:
        spec = parse_job(BASE)
        assert spec.price("mistral-large-2407") == Price(2.0, 6.0)
        assert spec.price("Mistral-Nemo") == Price(0.15, 0.15)
        custom = parse_job(BASE + "prices: {mistral-large-2407: {input_per_mtok: 1.5, output_per_mtok: 4}}\n")
        assert custom.price("mistral-large-2407") == Price(1.5, 4.0)
        assert Price(2.0, 6.0).cost(1_000_000, 500_000) == pytest.approx(5.0)

    def test_job_hash_follows_what_changes_results(self) -> None:
        base = parse_job(BASE)
        assert base.job_hash() == base.with_overrides(output="elsewhere/").job_hash()
        assert base.job_hash() != parse_job(BASE.replace("max_tokens: 256", "max_tokens: 257")).job_hash()
        assert base.job_hash() != parse_job(BASE.replace("Italian", "French")).job_hash()


SMALL_2503 = ("model:\n  name: mistral-small-2503\n  tokenizer: tekken\n  context_tokens: 131072\n"
              "  prices: {input_per_mtok: 0.1, output_per_mtok: 0.3}\n")


class TestModels:
    """Built-in models by every spelling, and models a job describes itself."""

    @pytest.mark.parametrize(("name", "canonical", "tokenizer"), [
        ("mistral-large-2411", "mistral-large-2411", "v7"),
        ("Mistral-Large-2411", "mistral-large-2411", "v7"),
        ("mistral-large-latest", "mistral-large-2411", "v7"),
        ("mistral-small-2409", "mistral-small-2409", "tekken"),
        ("ministral-8b-latest", "ministral-8b-2410", "tekken"),
        ("codestral-2405", "codestral-2405", "v3"),
        ("pixtral-12b", "pixtral-12b-2409", "tekken-240911"),
    ])
    def test_builtin_names_and_aliases(self, name: str, canonical: str, tokenizer: str) -> None:
        spec = parse_job(BASE.replace("mistral-large-2407", name))
        info = spec.model_for(spec.all_endpoints[0])
        assert (info.name, info.tokenizer, info.exact) == (canonical, tokenizer, True)

    def test_unknown_model_says_how_to_add_one(self) -> None:
        with pytest.raises(JobFileError, match=r"`endpoint.model`: unknown model 'mistral-small-2503'; known: "
                                               r".*mistral-large-2411.*add a `model:` block"):
            parse_job(BASE.replace("mistral-large-2407", "mistral-small-2503"))

    def test_a_job_model_block_is_approximate_and_priced(self) -> None:
        spec = parse_job(BASE.replace("mistral-large-2407", "mistral-small-2503") + SMALL_2503)
        info = spec.model_for(spec.all_endpoints[0])
        assert (info.tokenizer, info.context_tokens, info.exact, info.price_as_of) == ("tekken", 131072, False, None)
        assert spec.price("mistral-small-2503") == Price(0.1, 0.3)
        assert spec.prices_as_of() == "job"
        overridden = parse_job(BASE.replace("mistral-large-2407", "mistral-small-2503") + SMALL_2503
                               + "prices: {mistral-small-2503: {input_per_mtok: 0.2, output_per_mtok: 0.6}}\n")
        assert overridden.price("mistral-small-2503") == Price(0.2, 0.6)

    def test_an_endpoint_may_describe_its_own_model(self) -> None:
        block = ("{name: mistral-medium-2505, tokenizer: v7, context_tokens: 131072, exact: false, "
                 "prices: {input_per_mtok: 0.4, output_per_mtok: 2}}")
        spec = parse_job(BASE.replace("model: mistral-large-2407", f"model: {block}"))
        endpoint = spec.all_endpoints[0]
        assert endpoint.model == "mistral-medium-2505"
        assert spec.model_for(endpoint).tokenizer == "v7" and spec.price("mistral-medium-2505") == Price(0.4, 2.0)

    def test_a_tokenizer_file_or_a_shipped_name(self, tmp_path: Path) -> None:
        tokenizer = tmp_path / "tekken.json"
        tokenizer.write_text("{}")
        spec = parse_job(BASE.replace("mistral-large-2407", "mistral-small-2503")
                         + SMALL_2503.replace("tokenizer: tekken", f"tokenizer: {tokenizer}") + "  exact: true\n")
        assert spec.model_for(spec.all_endpoints[0]).exact
        with pytest.raises(JobFileError, match=r"`model.tokenizer`: 'v9' is neither a tokenizer mistral-common ships"):
            parse_job(BASE.replace("mistral-large-2407", "mistral-small-2503")
                      + SMALL_2503.replace("tokenizer: tekken", "tokenizer: v9"))

    def test_prices_as_of_is_the_oldest_builtin_figure(self) -> None:
        assert parse_job(BASE).prices_as_of() == PRICES_AS_OF.isoformat()
        assert parse_job(BASE.replace("mistral-large-2407", "mistral-large-2411")).prices_as_of() == "2024-11-18"
