"""``promptbatch demo``: the whole pipeline on embedded defaults, nothing to configure.

Writes a small translation prompt set and a job file into a local folder, starts the
simulator on 127.0.0.1 with the quota of a real serverless deployment, and runs the
job as a Prefect flow against it. The job file it leaves behind is a starting point
for a real one.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import yaml

_SENTENCES = (
    "The city council approved the new budget after a long debate.",
    "Heavy rain is expected across the north of the country this weekend.",
    "The museum will reopen next month after two years of renovation.",
    "Researchers found that regular walks improve sleep quality.",
    "The national team won the final match in extra time.",
    "Train services between the two cities will resume on Monday.",
    "A new bridge over the river is planned for the spring.",
    "The company reported higher profits for the third quarter.",
    "Schools will receive additional funding for science laboratories.",
    "The festival attracted more visitors than ever before.",
    "Farmers are worried about the long period without rain.",
    "The library now lends tools as well as books.",
    "Local restaurants are adding more vegetarian dishes to their menus.",
    "The airport expects record traffic during the holidays.",
    "Volunteers cleaned the beach early on Sunday morning.",
    "The government announced new measures to reduce energy prices.",
)

DEMO_KEY_ENV = "PROMPTBATCH_DEMO_KEY"
DEMO_MODEL = "mistral-large-2407"


def write_demo(folder: Path, rows: int, endpoint_url: str) -> Path:
    """Write the demo's prompt set and job file into ``folder``; return the job file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    with prompts.open("w") as f:
        for i in range(rows):
            sentence = _SENTENCES[i % len(_SENTENCES)]
            f.write(json.dumps({"id": f"news-{i:05d}", "text": f"{sentence} (item {i})", "section": "news"}) + "\n")
    job = {
        "input": str(prompts),
        "output": str(folder / "output"),
        "endpoint": {
            "url": endpoint_url,
            "api": "mistral",
            "model": DEMO_MODEL,
            "api_key_env": DEMO_KEY_ENV,
            "tokens_per_minute": 200_000,
            "requests_per_minute": 1_000,
        },
        "prompt": {
            "system": "You are a helpful assistant that translates English to Italian.",
            "template": "Translate to Italian: {text}",
        },
        "params": {"max_tokens": 128, "temperature": 0.2},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def demo_key() -> str:
    """A throwaway key shared by the demo's simulator and client."""
    return "demo-" + secrets.token_hex(12)
