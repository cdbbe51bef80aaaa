"""The graded instruction suite: the embedded offline default data set.

Procedurally generated, seeded instruction triplets whose difficulty is known by
construction (levels 1-5) and whose answers are exact, so a tiny model can be
trained in minutes on a CPU and checked by exact match. It plays the role that
GPT-4-scored Alpaca plays in the paper: the level is the oracle difficulty score.

Levels (families):
  1  copy, upper-case, first word                       (one-step string copy)
  2  reverse a word, count words, add two digits        (one simple operation)
  3  sort numbers, add two 2-digit numbers, last letters (operation over a list / carry)
  4  multiply, sort words, count a letter               (harder single operation)
  5  two-step word problems, (a + b) * c - d           (multi-step reasoning)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from phasedsft.data.loaders import Loaded
from phasedsft.records import DataError, Example, SkipReport

WORDS = (
    "apple river stone cloud green table music light paper garden window orange "
    "silver forest yellow bread summer winter planet rabbit candle basket mirror "
    "ocean pencil rocket violet tiger lemon castle dragon falcon meadow"
).split()
NAMES = "Ana Ben Cara Dan Eva Finn Gus Hana Ivo Jo".split()
ITEMS = "apples books coins pens stamps shells cards marbles".split()

Task = Callable[[random.Random], tuple[str, str, str]]


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


# level 1
def copy_text(rng: random.Random) -> tuple[str, str, str]:
    s = " ".join(_words(rng, 2, 4))
    return "Repeat the input exactly.", s, s


def upper_case(rng: random.Random) -> tuple[str, str, str]:
    s = " ".join(_words(rng, 1, 3))
    return "Write the input in capital letters.", s, s.upper()


def first_word(rng: random.Random) -> tuple[str, str, str]:
    w = _words(rng, 3, 5)
    return "What is the first word of the input?", " ".join(w), w[0]


# level 2
def reverse_word(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(WORDS)
    return "Spell the word backwards.", w, w[::-1]


def count_words(rng: random.Random) -> tuple[str, str, str]:
    w = _words(rng, 2, 7)
    return "How many words are in the input?", " ".join(w), str(len(w))


def add_digits(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return "Add the two numbers.", f"{a} {b}", str(a + b)


# level 3
def sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    xs = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    return (
        "Sort the numbers in ascending order.",
        " ".join(map(str, xs)),
        " ".join(map(str, sorted(xs))),
    )


def add_two_digit(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return "Add the two numbers.", f"{a} {b}", str(a + b)


def last_letters(rng: random.Random) -> tuple[str, str, str]:
    w = _words(rng, 3, 5)
    return "Write the last letter of each word, in order.", " ".join(w), "".join(x[-1] for x in w)


# level 4
def multiply(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 19), rng.randint(2, 9)
    return "Multiply the two numbers.", f"{a} {b}", str(a * b)


def sort_words(rng: random.Random) -> tuple[str, str, str]:
    w = _words(rng, 3, 5)
    return "Sort the words in alphabetical order.", " ".join(w), " ".join(sorted(w))


def count_letter(rng: random.Random) -> tuple[str, str, str]:
    w = _words(rng, 2, 4)
    s = " ".join(w)
    letter = rng.choice(sorted(set(s.replace(" ", ""))))
    return (
        f"How many times does the letter '{letter}' appear in the input?",
        s,
        str(s.count(letter)),
    )


# level 5
def word_problem(rng: random.Random) -> tuple[str, str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes, per, lost = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 5)
    q = (
        f"{name} has {boxes} boxes with {per} {item} in each box. "
        f"{name} gives away {lost} {item}. How many {item} are left?"
    )
    return "Solve the word problem. Answer with a number.", q, str(boxes * per - lost)


def arithmetic_chain(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 5)
    d = rng.randint(0, (a + b) * c)
    return "Compute the expression.", f"({a} + {b}) * {c} - {d}", str((a + b) * c - d)


LEVELS: dict[int, tuple[Task, ...]] = {
    1: (copy_text, upper_case, first_word),
    2: (reverse_word, count_words, add_digits),
    3: (sort_numbers, add_two_digit, last_letters),
    4: (multiply, sort_words, count_letter),
    5: (word_problem, arithmetic_chain),
}


def generate_suite(
    n: int = 3000,
    seed: int = 0,
    level_weights: Sequence[float] = (0.35, 0.2, 0.15, 0.15, 0.15),
    split: str = "train",
    exclude_seed: int | None = None,
    exclude_n: int | None = None,
) -> Loaded:
    """Generate ``n`` distinct examples; ``score`` is the level, ``meta`` holds task and answer.

    ``exclude_seed``/``exclude_n`` name another split (e.g. the training split) whose
    triplets this one must not contain, so a held-out split is truly held out.
    """
    if n <= 0:
        raise DataError(f"graded suite: n must be positive, got {n}")
    if len(level_weights) != len(LEVELS) or min(level_weights) < 0 or sum(level_weights) <= 0:
        raise DataError(f"graded suite: level_weights must be {len(LEVELS)} non-negative numbers")
    excluded: set[tuple[str, str, str]] = set()
    if exclude_seed is not None:
        other = generate_suite(exclude_n or n, exclude_seed, level_weights, split="train")
        excluded = {(e.instruction, e.input, e.output) for e in other.examples}
    rng = random.Random(f"graded-{split}-{seed}")
    levels = sorted(LEVELS)
    seen: set[tuple[str, str, str]] = set()
    examples: list[Example] = []
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n:
            raise DataError(f"graded suite: could not draw {n} distinct examples")
        level = rng.choices(levels, weights=level_weights)[0]
        task = rng.choice(LEVELS[level])
        triplet = task(rng)
        if triplet in seen or triplet in excluded:
            continue
        seen.add(triplet)
        instruction, inp, out = triplet
        examples.append(
            Example(
                id=f"graded-{split}-{len(examples):05d}",
                instruction=instruction,
                input=inp,
                output=out,
                score=float(level),
                meta={"task": task.__name__, "level": level},
            )
        )
    return Loaded(examples, SkipReport(f"graded suite ({split}, seed {seed})"))
