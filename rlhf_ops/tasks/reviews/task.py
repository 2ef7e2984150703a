"""The review-writing task of the gold-oracle testbed: prompts, splits and a review grammar.

A prompt asks for a short review of an item (a hotel, a laptop, ...) focusing on one aspect
(service, price, ...). Completions come from `ReviewGrammar`, a small stochastic grammar with a
few hundred plain-ASCII words, so that tiny models trained on CPU can learn it. The grammar's
output is of mixed quality on purpose: about 30% of samples carry one flaw (repetition, off-topic,
no ending, overlong, too short) that the gold reward in `rlhf_ops.tasks.reviews.gold` penalises.

Prompt variety comes from 4 templates x 11 item namings ("the hotel", "Luigi's hotel", ...) x
5 style hints over 12 items x 8 aspects: 21,120 distinct prompts, all parseable back to
(item, aspect) with `parse_prompt`.
"""

from __future__ import annotations

import functools
import random
import re

ITEMS: list[str] = [
    "the pizza place", "the hotel", "the laptop", "the cafe", "the phone", "the bakery",
    "the gym", "the bookstore", "the museum", "the headphones", "the sushi bar", "the car",
]
ASPECTS: list[str] = [
    "service", "price", "food", "staff", "battery", "location", "cleanliness", "design",
]
# Owner names give "Luigi's hotel" variants of "the hotel"; None means the plain "the hotel".
NAMES: list[str | None] = [
    None, "Luigi", "Maria", "Sam", "Anna", "Omar", "Kenji", "Rosa", "Ben", "Lena", "Victor",
]
HINTS: list[str] = [
    "", " Keep it short.", " Be honest.", " Use simple words.",
    " Mention what you liked or disliked.",
]
# {x} is the (possibly named) item, {aspect} the aspect, {hint} one of HINTS.
TEMPLATES: list[str] = [
    "Write a short review of {x}, focusing on the {aspect}.{hint}\nReview:",
    "Review {x}. Talk about the {aspect}.{hint}\nReview:",
    "Give your opinion of {x}'s {aspect}.{hint}\nReview:",
    "What did you think of the {aspect} at {x}?{hint}\nReview:",
]


def _noun(item: str) -> str:
    return item[len("the "):]


def _render_item(item: str, name: str | None) -> str:
    return item if name is None else f"{name}'s {_noun(item)}"


def make_prompt(item: str, aspect: str, *, template: int = 0, name: str | None = None,
                hint: int = 0) -> str:
    """Render a prompt; the completion follows it and starts with a space."""
    if item not in ITEMS:
        raise ValueError(f"unknown item {item!r}; expected one of {ITEMS}")
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")
    if name not in NAMES:
        raise ValueError(f"unknown name {name!r}; expected one of {NAMES}")
    return TEMPLATES[template].format(x=_render_item(item, name), aspect=aspect,
                                      hint=HINTS[hint])


@functools.cache
def _prompt_regexes() -> list[re.Pattern[str]]:
    alt = lambda words: "|".join(re.escape(w) for w in words)  # noqa: E731
    names = alt([n for n in NAMES if n is not None])
    x = rf"(?:the|(?:{names})'s) (?P<noun>{alt([_noun(i) for i in ITEMS])})"
    aspect = rf"(?P<aspect>{alt(ASPECTS)})"
    hint = rf"(?:{alt([h for h in HINTS if h])})?"
    out = []
    for template in TEMPLATES:
        parts = re.split(r"(\{x\}|\{aspect\}|\{hint\})", template)
        subs = {"{x}": x, "{aspect}": aspect, "{hint}": hint}
        out.append(re.compile("".join(subs.get(p, re.escape(p)) for p in parts)))
    return out


def parse_prompt(prompt: str) -> tuple[str, str]:
    """Recover (item, aspect) from any prompt this module renders."""
    for regex in _prompt_regexes():
        m = regex.fullmatch(prompt)
        if m:
            return "the " + m.group("noun"), m.group("aspect")
    raise ValueError(f"not a testbed prompt: {prompt!r}")


@functools.cache
def all_prompt_rows() -> tuple[tuple[str, str, str, str], ...]:
    """Every distinct prompt as (prompt_id, prompt, item, aspect), in a fixed order.

    The position in this order is part of prompt_id, so ids are stable across seeds.
    """
    rows = []
    for item in ITEMS:
        for aspect in ASPECTS:
            for t in range(len(TEMPLATES)):
                for name in NAMES:
                    for h in range(len(HINTS)):
                        pid = f"p{len(rows):05d}-{_noun(item).replace(' ', '_')}-{aspect}"
                        prompt = make_prompt(item, aspect, template=t, name=name, hint=h)
                        rows.append((pid, prompt, item, aspect))
    return tuple(rows)


def prompt_splits(seed: int, n_train: int, n_eval: int,
                  n_gold_eval: int) -> dict[str, list[dict]]:
    """Disjoint train / eval / gold_eval prompt sets, deterministic in `seed`."""
    sizes = {"train": n_train, "eval": n_eval, "gold_eval": n_gold_eval}
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    pool = all_prompt_rows()
    if sum(sizes.values()) > len(pool):
        raise ValueError(f"asked for {sum(sizes.values())} prompts ({sizes}) "
                         f"but only {len(pool)} distinct prompts exist")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [
            {"prompt": pool[i][1], "item": pool[i][2], "aspect": pool[i][3],
             "prompt_id": pool[i][0], "split": split}
            for i in order[start:start + n]
        ]
        start += n
    return out


# ---- review grammar -------------------------------------------------------------------------

# Sentiment levels -2..2; adjectives chosen from words VADER scores (except level 0, where
# VADER-neutral words keep the compound score near 0).
ADJ = {
    2: ["amazing", "excellent", "wonderful", "fantastic", "perfect", "great", "superb",
        "outstanding", "brilliant", "lovely"],
    1: ["good", "nice", "pleasant", "friendly", "helpful", "comfortable", "clean", "solid"],
    0: ["okay", "average", "normal", "ordinary", "simple", "plain"],
    -1: ["bad", "poor", "dull", "boring", "weak", "noisy", "disappointing"],
    -2: ["terrible", "awful", "horrible", "disgusting", "useless", "rude"],
}
ADV = {2: ["really", "truly", "very"], 1: ["quite", "pretty", "very"], 0: ["mostly", "fairly"],
       -1: ["quite", "rather", "a bit"], -2: ["really", "truly", "very"]}
LEVEL_WEIGHTS = {-2: 0.15, -1: 0.2, 0: 0.2, 1: 0.25, 2: 0.2}
# Openings always name both the item ({I}/{i}) and the aspect ({a}).
OPENINGS = [
    "The {a} at {i} was {adv} {adj}.", "I thought the {a} at {i} was {adj}.",
    "{I} has {adj} {a}.", "We tried {i} and the {a} was {adv} {adj}.",
    "At {i}, the {a} was {adj}.", "My visit to {i} showed that the {a} is {adj}.",
]
FOLLOW_UPS = {
    2: ["I loved it and would happily come back.", "Everything felt {adj} from start to finish.",
        "I would recommend it to all my friends.", "It was the best visit in a long time.",
        "My family was very happy.", "The {o} was {adj} too."],
    1: ["I would come back again.", "It was a nice visit overall.", "The {o} was {adj} too.",
        "My friends liked it as well.", "I enjoyed the visit."],
    0: ["It was an ordinary visit.", "Nothing really stood out.", "I might come back some day.",
        "The {o} was {adj} as well.", "The {o} was good but the rest was bad."],
    -1: ["I was a bit disappointed.", "I probably would not come back.",
         "The {o} was {adj} too.", "It was not worth the money.", "Sadly it was a weak visit."],
    -2: ["I hated it and will never come back.", "It was the worst visit in years.",
         "Do not go there.", "I was really angry about that.", "The {o} was {adj} as well."],
}
FILLER = ["We went there last week.", "It was busy on the weekend.",
          "We stayed for about an hour.", "My sister came with me.",
          "We walked there from the station."]
OFF_TOPIC = ["The weather was {adj} today.", "We walked to the park with our dog.",
             "My neighbor bought a new bike.", "The movie last night was {adj}.",
             "The train was late again."]
SHORT = {2: ["Great.", "Amazing!", "Loved it."], 1: ["Good.", "Nice one."], 0: ["It was okay."],
         -1: ["Bad.", "Not good."], -2: ["Terrible.", "Awful!"]}
FLAWS = ["repetition", "off_topic", "no_ending", "overlong", "too_short"]


class ReviewGrammar:
    """Stochastic review generator of mixed quality; deterministic given its seed."""

    def __init__(self, seed: int, flaw_rate: float = 0.3):
        self.rng = random.Random(seed)
        self.flaw_rate = flaw_rate

    def _fill(self, template: str, rng: random.Random, level: int, item: str, aspect: str) -> str:
        other = rng.choice([a for a in ASPECTS if a != aspect])
        text = template.format(a=aspect, i=item, I=item[0].upper() + item[1:], o=other,
                               adj=rng.choice(ADJ[level]), adv=rng.choice(ADV[level]))
        return text[0].upper() + text[1:]

    def _sentences(self, rng, level, item, aspect, n_follow):
        # Follow-ups are drawn without replacement so clean samples never repeat a clause.
        pool = FOLLOW_UPS[level] + FILLER[:2]
        picks = rng.sample(pool, min(n_follow, len(pool)))
        return [self._fill(rng.choice(OPENINGS), rng, level, item, aspect)] + [
            self._fill(p, rng, level, item, aspect) for p in picks]

    def sample_with_flaw(self, item: str, aspect: str,
                         rng: random.Random | None = None) -> tuple[str, str]:
        """One completion and the name of its flaw ("" for a clean sample)."""
        rng = rng or self.rng
        level = rng.choices(list(LEVEL_WEIGHTS), weights=list(LEVEL_WEIGHTS.values()))[0]
        flaw = rng.choice(FLAWS) if rng.random() < self.flaw_rate else ""
        sents = self._sentences(rng, level, item, aspect, rng.choice([1, 1, 2, 2, 3, 4]))
        if flaw == "repetition":
            if rng.random() < 0.5:  # a repeated clause
                k = rng.randrange(len(sents))
                sents[k + 1:k + 1] = [sents[k]] * rng.choice([1, 2, 3])
            else:  # a stuttered adjective ("great great great")
                adj = rng.choice(ADJ[level])
                sents.append(f"It was {' '.join([adj] * rng.choice([2, 3, 4]))}.")
        elif flaw == "off_topic":
            other_item = rng.choice([i for i in ITEMS if i != item])
            other_aspect = rng.choice([a for a in ASPECTS if a != aspect])
            if rng.random() < 0.5:
                sents = self._sentences(rng, level, other_item, other_aspect, len(sents) - 1)
            else:
                sents = [self._fill(t, rng, level, item, aspect)
                         for t in rng.sample(OFF_TOPIC, rng.choice([2, 3]))]
        elif flaw == "overlong":
            sents = self._sentences(rng, level, item, aspect, 8)
            sents += [self._fill(t, rng, level, item, aspect) for t in FILLER[2:]]
        elif flaw == "too_short":
            sents = [rng.choice(SHORT[level])]
        text = " ".join(sents)
        if flaw == "no_ending":
            words = text.split()
            cut = rng.randrange(max(4, len(words) // 2), len(words))
            text = " ".join(words[:cut]).rstrip(".,!?")
        return " " + text, flaw

    def sample(self, item: str, aspect: str, rng: random.Random | None = None) -> str:
        """One completion (with a leading space) for (item, aspect)."""
        return self.sample_with_flaw(item, aspect, rng)[0]

    def sample_many(self, item: str, aspect: str, n: int,
                    rng: random.Random | None = None) -> list[str]:
        return [self.sample(item, aspect, rng) for _ in range(n)]


def degenerate_texts(item: str, aspect: str) -> dict[str, str]:
    """Named completions that a sentiment-only proxy likes but the gold reward should not."""
    cap = item[0].upper() + item[1:]
    return {
        "good": f" The {aspect} at {item} was excellent and the staff were friendly."
                " I enjoyed my visit and would happily recommend it.",
        "neutral": f" The {aspect} at {item} was okay. It was an ordinary visit"
                   " and nothing really stood out.",
        "spam": " great great great great amazing amazing best best !!!",
        "off_topic": " The weather was lovely today and we walked to the park with our dog."
                     " It was a wonderful afternoon.",
        "overlong": f" The {aspect} at {item} was amazing. I loved it and would happily come"
                    " back. Everything felt wonderful from start to finish. The staff were"
                    " friendly and the price was fair. We went there last week with my sister"
                    " and we stayed for about an hour. It was the best visit in a long time."
                    " My family was very happy with it. I would recommend it to all my friends"
                    " and to everyone in town. The design was lovely, the location was perfect"
                    " and the cleanliness was excellent. We will surely come again next"
                    " summer and bring our whole family with us.",
        "no_ending": f" The {aspect} at {item} was really good and the staff were",
        "repetitive_positive": f" {cap} was great. {cap} was great. {cap} was great."
                               f" The {aspect} was great. The {aspect} was great.",
    }


def tokenizer_corpus(seed: int, n: int = 3000) -> list[str]:
    """`n` prompt+completion texts covering every template, naming, hint, item and aspect."""
    rng = random.Random(seed)
    grammar = ReviewGrammar(seed)
    kinds = sorted(degenerate_texts(ITEMS[0], ASPECTS[0]))
    texts = []
    for k in range(n):
        # Cycling indices (not random picks) guarantee that every template part appears.
        item, aspect = ITEMS[k % len(ITEMS)], ASPECTS[(k // len(ITEMS)) % len(ASPECTS)]
        prompt = make_prompt(item, aspect, template=k % len(TEMPLATES),
                             name=NAMES[k % len(NAMES)], hint=k % len(HINTS))
        if k % 5 == 4:
            completion = degenerate_texts(item, aspect)[kinds[(k // 5) % len(kinds)]]
        else:
            completion = grammar.sample(item, aspect, rng)
        texts.append(prompt + completion)
    return texts
