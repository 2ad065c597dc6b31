"""How fast ``promptbatch estimate`` counts prompt tokens, and that the counts are exact.

Writes a JSONL prompt set of ~300-token news-style prompts (a system prompt and a
template, as a translation job has), then for each tokenizer:

- runs the estimate's counting pass (``flows.estimate.count_prompts``: read, build
  rows, count with the model's tokenizer) over the whole set and prints rows/s;
- times mistral-common's ``encode_chat_completion`` (the reference) on a slice;
- checks the pass's prompt total against the reference on that slice: equal, or it exits 1.

Examples:

    python -m benchmarks.tokens                        # 200,000 rows, Tekken (Nemo) and SentencePiece v3 (Large 2407)
    python -m benchmarks.tokens --rows 200000 --models mistral-large-2402
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from flows.estimate import count_prompts
from flows.logs import configure
from schemas import job_from_dict, model_info
from workers.tokens import TokenCounter, words

WORDS = (
    "council budget debate rain weekend flooding museum renovation galleries researchers walks sleep quality "
    "national team final extra fans streets train services cities repairs farmers harvest government energy "
    "prices measures schools funding laboratories festival visitors library tools restaurants vegetarian airport "
    "holidays volunteers beach bridge river spring company profits quarter inflation election parliament minister "
    "hospital doctors nurses patients vaccine climate emissions wind solar battery electric vehicles housing rents"
).split()
GLUE = "the a of to in and on for with after before during about against between across over under".split()


def vocabulary(size: int, seed: int = 7) -> tuple[list[str], list[float]]:
    """The words above and made-up ones to ``size`` words, with Zipf cumulative weights (rank⁻¹).

    Real prompt sets have vocabularies of hundreds of thousands of words with a long
    tail: the made-up words keep the token counter's word cache from looking better
    than it would on real text.
    """
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["qu", "th", "sch", "ng", "é", "ü", "ñ"]
    made_up = {"".join(rng.choices(syllables, k=rng.randint(1, 5))) for _ in range(size * 2)}
    words = list(dict.fromkeys([*WORDS, *sorted(made_up)]))[:size]
    rng.shuffle(words)
    cumulative, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1 / rank
        cumulative.append(total)
    return words, cumulative


def sentence(rng: random.Random, vocab: tuple[list[str], list[float]]) -> str:
    words = rng.choices(vocab[0], cum_weights=vocab[1], k=rng.randint(8, 18))
    for i in range(0, len(words), 2):
        words[i] = rng.choice(GLUE)
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), f"{int(10 ** rng.uniform(0.3, 6)):,}")  # small numbers are common
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), rng.choice(["Città", "naïve", "über", "—", "€", "(2026)"]))
    if rng.random() < 0.3:
        i = rng.randrange(len(words))
        words[i] = words[i].capitalize() + rng.choice([",", "", "'s", ":"])
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "?", "!"])


def write_prompts(path: Path, rows: int, target_tokens: int, seed: int = 0, vocabulary_size: int = 200_000) -> None:
    """News-style paragraphs of about ``target_tokens`` tokens, varying ±50%."""
    rng = random.Random(seed)
    vocab = vocabulary(vocabulary_size)
    with path.open("w") as f:
        for i in range(rows):
            sentences = max(1, round(rng.uniform(0.5, 1.5) * target_tokens / 31))
            text = " ".join(sentence(rng, vocab) for _ in range(sentences))
            f.write(json.dumps({"id": f"row-{i}", "text": text, "section": "news"}, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tokens", type=int, default=300, help="Average prompt length to aim for.")
    parser.add_argument("--models", default="mistral-nemo-2407,mistral-large-2407")
    parser.add_argument("--processes", type=int, default=None,
                        help="Counting processes beside this one (default: one per core but one; 0: none).")
    parser.add_argument("--reference-rows", type=int, default=2_000, help="Rows timed and checked the reference way.")
    args = parser.parse_args()
    configure()
    print(f"machine: {os.cpu_count()} cores; {args.rows:,} rows of ~{args.tokens} tokens")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, args.rows, args.tokens)
        for model in args.models.split(","):
            spec = job_from_dict({
                "input": str(prompts), "output": str(Path(tmp) / "out"),
                "endpoint": {"url": "http://127.0.0.1:9", "model": model},
                "prompt": {"system": "You are a helpful assistant that translates English to Italian.",
                           "template": "Translate to Italian: {text}"},
                "params": {"max_tokens": 512},
            })
            name = model_info(model).name
            TokenCounter(model).prompt_tokens([{"role": "user", "content": "warm up"}])  # load the tokenizer
            counting = count_prompts.fn(spec, [str(prompts)], processes=args.processes)
            counts = counting.counts[name]

            head = Path(tmp) / "head.jsonl"
            with prompts.open() as src, head.open("w") as dst:
                for _, line in zip(range(args.reference_rows), src, strict=False):
                    dst.write(line)
            fast_head = count_prompts.fn(spec.model_copy(update={"input": str(head)}), [str(head)])
            counter = TokenCounter(model)
            rows = [json.loads(line) for line in head.open()]
            started = time.perf_counter()
            reference = sum(counter.reference_prompt_tokens(
                [{"role": "system", "content": spec.prompt.system or ""},
                 {"role": "user", "content": f"Translate to Italian: {r['text']}"}]) for r in rows)
            reference_rate = len(rows) / (time.perf_counter() - started)
            cache = words(model_info(model).tokenizer)
            exact = reference == fast_head.counts[name].prompt_tokens
            failed |= not exact
            average = counts.prompt_tokens / max(1, counts.rows)
            print(f"{name} ({model_info(model).tokenizer}): {counting.rows_per_s:,.0f} rows/s counted "
                  f"({counting.total_rows:,} rows, {average:.0f} prompt tokens on average, "
                  f"{counting.seconds:.2f} s); encode_chat_completion {reference_rate:,.0f} rows/s; "
                  f"first {len(rows):,} rows {'equal' if exact else 'DIFFER'}: "
                  f"{fast_head.counts[name].prompt_tokens:,} vs reference {reference:,}; this process's word cache "
                  f"{cache.size():,} words, {cache.misses():,} misses, {cache.whole:,} texts encoded whole")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
