"""The project's own instruction prompt set and capability anchors (data/instructions/), written once.

    python scripts/make_instructions.py            # rewrites data/instructions/{prompts,anchors}.jsonl

Prompts: 300 short, varied instructions in the conversational format (one user message), from task
templates the project wrote crossed with topics, in a seeded order, none repeated. Anchors: short
questions with one right answer of a few words (capitals, arithmetic, opposites, plurals, colours),
in the SFT conversational format, for `task.anchors`: greedy exact match and reference likelihood.
Deterministic: the same files every time (tests/test_user_task.py checks the shipped files match).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "instructions"

TASKS = [
    "Explain {t} to a ten-year-old in two sentences.",
    "Give three tips about {t}.",
    "Write a haiku about {t}.",
    "What is one common mistake people make with {t}?",
    "Describe {t} in one sentence.",
    "List two advantages and one disadvantage of {t}.",
    "Write a short, friendly message inviting a friend to try {t}.",
    "Summarize why {t} matters, in under thirty words.",
    "Ask me one good question about {t}.",
    "Give a simple step-by-step plan for getting started with {t}.",
    "Write a one-line slogan for {t}.",
    "What would a beginner need to know first about {t}?",
    "Compare {t} with something similar, briefly.",
    "Tell a very short story that involves {t}.",
    "Correct this sentence and explain the fix: 'me and him likes {t} alot.'",
]
TOPICS = [
    "cooking rice", "learning to swim", "saving money", "growing tomatoes", "riding a bike", "reading before bed",
    "drinking water", "public libraries", "recycling plastic", "learning a new language", "walking every day",
    "writing a diary", "making tea", "taking photos with a phone", "planning a trip", "keeping a houseplant alive",
    "playing chess", "cleaning a kitchen", "studying for an exam", "being on time",
]
ANCHORS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("What is 3 times 3?", "3 times 3 is 9."),
    ("What is 10 minus 4?", "10 minus 4 is 6."),
    ("What is half of 10?", "Half of 10 is 5."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("What is the opposite of big?", "The opposite of big is small."),
    ("What is the plural of cat?", "The plural of cat is cats."),
    ("What is the plural of child?", "The plural of child is children."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("What colour is the sky on a clear day?", "The sky is blue."),
    ("What colour is grass?", "Grass is green."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the first month of the year?", "The first month of the year is January."),
]


def prompts() -> list[dict]:
    rows = [t.format(t=topic) for t in TASKS for topic in TOPICS]
    random.Random(0).shuffle(rows)
    return [{"prompt": [{"role": "user", "content": r}]} for r in rows]


def anchors() -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in ANCHORS]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "prompts.jsonl", prompts())
    write(OUT / "anchors.jsonl", anchors())
    print(f"wrote {OUT / 'prompts.jsonl'} ({len(prompts())} prompts) and {OUT / 'anchors.jsonl'} ({len(anchors())})")


if __name__ == "__main__":
    main()
