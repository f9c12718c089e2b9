"""Sentences for the synthetic corpus: a seeded template grammar (names, trades, things, places, times,
numbers) and ``make_splits``, which draws distinct sentences so dev and test never leak into train.

A recognizer trained on grammar sentences alone can learn to recite the grammar instead of listening.
``scrambled_sentence`` therefore shuffles a grammar sentence's words into an order the grammar never
produces (checked by ``is_grammatical``, a recogniser of the same grammar), for a share of the training
set and for a held-out "unseen word order" split.
"""

from __future__ import annotations

import random
import re

_NAMES = """JOHN MARY THOMAS SARAH JAMES ELIZABETH ROBERT ANNA WILLIAM MARGARET HENRY LUCY GEORGE
EMMA DAVID ALICE PETER CLARA SAMUEL HELEN ARTHUR GRACE EDWARD MARTHA CHARLES JANE FRANK ROSE
WALTER EDITH""".split()
_PEOPLE = """FARMER SAILOR TEACHER DOCTOR BAKER PAINTER DRIVER NURSE SOLDIER STUDENT WRITER SINGER
HUNTER CAPTAIN MINER PILOT KING QUEEN GIRL BOY NEIGHBOR MERCHANT GARDENER CARPENTER TAILOR JUDGE
CLERK WAITER MECHANIC SCIENTIST LAWYER BANKER POET DANCER PRINCE WIDOW STRANGER OFFICER ARTIST
ENGINEER""".split()
_PERSON_ADJ = """OLD YOUNG TALL SHORT QUIET BRAVE TIRED HAPPY ANGRY CLEVER KIND PROUD LAZY BUSY GENTLE
CAREFUL HUNGRY LONELY CHEERFUL NERVOUS HONEST FAMOUS ELDERLY CURIOUS""".split()
_THINGS = """BOAT HORSE APPLE LETTER BOOK CHAIR TABLE BASKET BOTTLE CANDLE HAT COAT WAGON LAMP KEY
RING BELL BOX DISH BRUSH CUP PLATE FLOWER STONE SHIP CART BLANKET MAP PAINTING WINDOW DOOR FENCE
CAKE PIE SHIRT GLOVE BOOT CLOCK WATCH COIN FEATHER RIBBON PENCIL DRUM VIOLIN KITE TOY SHELL LADDER
BUCKET ROPE SACK FLAG HAMMER NAIL ENVELOPE JACKET PARCEL TICKET""".split()
_THING_ADJ = """RED GREEN BLUE YELLOW WHITE BLACK BROWN HEAVY BRIGHT STRANGE WOODEN SILVER GOLDEN NEW
COLD WARM EMPTY BROKEN ANCIENT SMALL LARGE DUSTY SHINY PRETTY ROUND FRESH""".split()
_VERBS_T = """PAINTED CARRIED FOUND BOUGHT SOLD BUILT MENDED CLEANED OPENED CLOSED LOST WASHED COUNTED
DROPPED BROKE FIXED HID WATCHED CHOSE LIFTED PUSHED PULLED BORROWED RETURNED DELIVERED GATHERED
PACKED POLISHED SHARED TOOK BROUGHT KEPT MOVED ORDERED SENT DREW MADE WRAPPED CHECKED STOLE""".split()
_VERBS_I = """WALKED RAN SLEPT LAUGHED WAITED SANG DANCED WORKED SMILED CRIED SAT ARRIVED RESTED
SHOUTED WHISPERED TRAVELED STAYED STOOD HURRIED WANDERED SWAM CLIMBED LISTENED PRAYED""".split()
_ADVERBS = """SLOWLY QUICKLY QUIETLY LOUDLY CAREFULLY HAPPILY SUDDENLY GENTLY PATIENTLY BRAVELY
CALMLY EAGERLY NERVOUSLY PROUDLY SADLY SILENTLY FIRMLY WARMLY""".split()
_PLACES = """KITCHEN MARKET RIVER HARBOR STATION CHURCH VILLAGE FOREST GARDEN LIBRARY SCHOOL
HOSPITAL BAKERY FARM BARN CASTLE BRIDGE VALLEY HILL BEACH CITY SQUARE HALL COTTAGE PALACE MILL
FIELD HOTEL MUSEUM THEATER OFFICE SHOP CELLAR ATTIC ISLAND LAKE""".split()
_PREPS = "IN AT NEAR BEHIND BESIDE OUTSIDE ACROSS".split()
_TIMES = ["YESTERDAY", "TODAY", "LAST NIGHT", "THIS MORNING", "EVERY EVENING", "AT NOON", "AT MIDNIGHT",
          "LAST WEEK", "ON MONDAY", "ON FRIDAY", "ON SUNDAY", "IN JUNE", "IN OCTOBER", "AFTER DINNER"]
_UNITS = "TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
_TEENS = "TEN ELEVEN TWELVE FIFTEEN TWENTY".split()
_TENS = "TWENTY THIRTY FORTY FIFTY SIXTY".split()


def _plural(noun: str) -> str:
    if noun.endswith(("S", "SH", "CH", "X")):
        return noun + "ES"
    if noun.endswith("Y") and noun[-2] not in "AEIOU":
        return noun[:-1] + "IES"
    return noun + "S"


def _a(word: str) -> str:
    return ("AN " if word[0] in "AEIOU" else "A ") + word


def _subject(r: random.Random) -> str:
    if r.random() < 0.35:
        return r.choice(_NAMES)
    noun = r.choice(_PEOPLE)
    if r.random() < 0.6:
        noun = f"{r.choice(_PERSON_ADJ)} {noun}"
    return f"THE {noun}" if r.random() < 0.7 else _a(noun)


def _number(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.6:
        return r.choice(_UNITS)
    if kind < 0.8:
        return r.choice(_TEENS)
    return f"{r.choice(_TENS)} {r.choice(_UNITS)}"


def _object(r: random.Random) -> str:
    noun = r.choice(_THINGS)
    adj = f"{r.choice(_THING_ADJ)} " if r.random() < 0.5 else ""
    kind = r.random()
    if kind < 0.35:
        return f"{_number(r)} {adj}{_plural(noun)}"
    if kind < 0.6:
        return f"THE {adj}{noun}"
    if kind < 0.8:
        return _a(adj + noun)
    det = r.choice(["HIS", "HER", "THEIR", "SOME"])
    return f"{det} {adj}{_plural(noun) if det == 'SOME' or r.random() < 0.5 else noun}"


def _place(r: random.Random) -> str:
    return f"{r.choice(_PREPS)} THE {r.choice(_PLACES)}"


def _time(r: random.Random) -> str:
    return r.choice(_TIMES)


def _maybe(r: random.Random, p: float, make) -> list[str]:
    return [make(r)] if r.random() < p else []


def random_sentence(r: random.Random) -> str:
    """One sentence of 4–14 words, upper-case and without punctuation (LoquaciousSet style)."""
    while True:
        kind = r.randrange(6)
        if kind == 0:
            parts = [_subject(r), r.choice(_VERBS_T), _object(r), *_maybe(r, 0.5, _place), *_maybe(r, 0.3, _time)]
        elif kind == 1:
            parts = [_subject(r), r.choice(_VERBS_I), r.choice(_ADVERBS), *_maybe(r, 0.6, _place),
                     *_maybe(r, 0.3, _time)]
        elif kind == 2:
            parts = [_time(r), _subject(r), r.choice(_VERBS_I), _place(r)]
        elif kind == 3:
            parts = [_subject(r), "SAID THAT", _subject(r), r.choice(_VERBS_T), _object(r)]
        elif kind == 4:
            parts = ["THERE WERE", _number(r), _plural(r.choice(_THINGS)), _place(r)]
        else:
            parts = [_subject(r), r.choice(_VERBS_T), _object(r), "AND", r.choice(_VERBS_I), r.choice(_ADVERBS)]
        sentence = " ".join(parts)
        if 4 <= len(sentence.split()) <= 14:
            return sentence


def _alternatives(words) -> str:
    return "(?:" + "|".join(sorted(set(words), key=len, reverse=True)) + ")"


def _grammar_regex() -> re.Pattern:
    """A regular expression matching exactly the sentences ``random_sentence`` can produce."""
    things = list(_THINGS) + [_plural(t) for t in _THINGS]
    subject = (f"(?:{_alternatives(_NAMES)}|(?:THE|AN?) (?:{_alternatives(_PERSON_ADJ)} )?"
               f"{_alternatives(_PEOPLE)})")
    number = f"(?:{_alternatives(_UNITS + _TEENS)}|{_alternatives(_TENS)} {_alternatives(_UNITS)})"
    adj = f"(?:{_alternatives(_THING_ADJ)} )?"
    obj = (f"(?:{number} {adj}{_alternatives(things)}|(?:THE|AN?|HIS|HER|THEIR|SOME) {adj}"
           f"{_alternatives(things)})")
    place, time = f"{_alternatives(_PREPS)} THE {_alternatives(_PLACES)}", _alternatives(_TIMES)
    vt, vi, adv = _alternatives(_VERBS_T), _alternatives(_VERBS_I), _alternatives(_ADVERBS)
    kinds = [f"{subject} {vt} {obj}(?: {place})?(?: {time})?", f"{subject} {vi} {adv}(?: {place})?(?: {time})?",
             f"{time} {subject} {vi} {place}", f"{subject} SAID THAT {subject} {vt} {obj}",
             f"THERE WERE {number} {_alternatives(things)} {place}", f"{subject} {vt} {obj} AND {vi} {adv}"]
    return re.compile("|".join(f"(?:{k})" for k in kinds))


_GRAMMAR = _grammar_regex()


def is_grammatical(sentence: str) -> bool:
    """Whether the template grammar can produce ``sentence`` (a recogniser, slightly more permissive than
    the generator: it ignores the 4–14 word limit and article/vowel agreement)."""
    return _GRAMMAR.fullmatch(sentence) is not None


def scrambled_sentence(r: random.Random) -> str:
    """A grammar sentence's words in an order the grammar never produces: the vocabulary of training, none
    of its word order, so a model can only get it right by listening."""
    while True:
        words = random_sentence(r).split()
        r.shuffle(words)
        sentence = " ".join(words)
        if not is_grammatical(sentence):
            return sentence


def _distinct(make, r: random.Random, n: int, taken: dict[str, None]) -> list[str]:
    """``n`` sentences from ``make(r)`` that are not in ``taken`` (which grows by them, in order)."""
    start = len(taken)
    for _ in range(50 * n + 1000):
        if len(taken) == start + n:
            return list(taken)[start:]
        taken.setdefault(make(r), None)
    raise ValueError(f"could not produce {n} distinct sentences")


def make_splits(n_train: int, n_dev: int, n_test: int, seed: int = 0, scrambled: float = 0.0,
                n_test_order: int = 0) -> dict[str, list[str]]:
    """Distinct sentences for each split; no sentence occurs twice, so dev and test never leak into train.

    ``scrambled``: the share of training sentences that are ``scrambled_sentence``s (0: grammar only).
    ``n_test_order``: size of an extra held-out split ``test_order`` of scrambled sentences (word orders
    never seen in training).
    """
    r = random.Random(seed)
    seen: dict[str, None] = {}  # insertion-ordered set keeps the result deterministic
    n_scrambled = round(scrambled * n_train)
    # Held-out splits come first so their sentences do not shift when n_train changes.
    dev = _distinct(random_sentence, r, n_dev, seen)
    test = _distinct(random_sentence, r, n_test, seen)
    splits = {"train": _distinct(random_sentence, r, n_train - n_scrambled, seen), "dev": dev, "test": test}
    if n_scrambled or n_test_order:
        # Its own generator: asking for scrambled sentences leaves every grammar sentence above unchanged.
        r = random.Random(f"{seed}:scrambled")
        splits["test_order"] = _distinct(scrambled_sentence, r, n_test_order, seen)
        if n_scrambled:
            splits["train"] += _distinct(scrambled_sentence, r, n_scrambled, seen)
            r.shuffle(splits["train"])
    return splits
