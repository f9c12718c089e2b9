"""Who speaks the synthetic corpus, and in what noise: espeak-ng's accents and voice variants, the
variants held out of training, ``Speaking`` (how one split is spoken) and ``add_noise``."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
# Imported with the module (~0.7 s), not in add_noise: write_corpus renders each chunk in a fresh process forked from
# a server that has imported this module, and an import there would be paid again for every chunk.
from scipy.signal import lfilter

# Accents in the bundled data (lang/gmw/*) and the voice variants (voices/!v/*) with their sex.
VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en-029"]
VARIANTS = {**{f"m{i}": "male" for i in range(1, 8)}, **{f"f{i}": "female" for i in range(1, 6)}}
# More of espeak-ng's bundled variants (voices/!v/; the robotic and whispering ones left out): the main job
# trains on 26 voices and holds 8 out, so a held-out split can ask whether a model hears unseen voices.
TRAIN_VARIANTS = (*sorted(VARIANTS), "Andrea", "adam", "aunty", "belinda", "benjamin", "caleb", "david",
                  "edward", "grandma", "ian", "john", "max", "paul", "robert")
HELDOUT_VARIANTS = ("Alex", "Annie", "Gene", "Lee", "Mike", "linda", "steph", "travis")
# The rest of the bundled human-sounding variants, for training only (`synth_corpus.py --more-voices`). Left out:
# the robotic, whispering and effect voices, and the near-copies of held-out ones (Gene2, mike2, steph2, steph3).
MORE_VARIANTS = ("Alicia", "Andy", "Denis", "Diogo", "Henrique", "Hugo", "Jacky", "Marco", "Mario", "Michael",
                 "Nguyen", "Reed", "Storm", "Tweaky", "anika", "announcer", "antonio", "boris", "ed", "edward2",
                 "gustave", "iven", "iven2", "iven3", "iven4", "kaukovalta", "m8", "marcelo", "michel", "miguel",
                 "norbert", "pablo", "pedro", "quincy", "rob", "sandro", "shelby", "victor", "zac", "grandpa",
                 "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6")
# Voices no one recorded (`synth_corpus.py --random-voices N`): variant files drawn by ``random_variant``,
# written next to the bundled ones in a copy of espeak-ng's data folder (``espeak_data``). 64, not more:
# espeak-ng lists at most 349 voices and variants, and the bundled data has 245.
RANDOM_VARIANTS = tuple(f"tatk-random{i:03d}" for i in range(64))


@dataclass(frozen=True)
class Speaking:
    """How one split is spoken: which voice variants, and how much noise.

    variants: espeak-ng voice variants drawn from, uniformly (each with one of the 8 accents in VOICES).
    noise_share: fraction of the split's clips with noise added (0: all clean).
    snr_db: (low, high): each noisy clip's signal-to-noise ratio in dB, drawn uniformly.
    pitch: (low, high): espeak-ng's pitch parameter (0-99, within the variant's own range), drawn in steps of 5.
    speed: (low, high): each clip is resampled by a factor drawn uniformly (Kaldi-style speed perturbation:
        1.1 plays 10 % faster with pitch and formants 10 % higher, as a shorter vocal tract would); (1, 1): none.
    tilt_share: fraction of the split's clips whose spectral balance is tilted (``tilt``) before any noise.
    tilt_db: (low, high): each tilted clip's slope in dB per octave, drawn uniformly (negative: duller).
    """

    variants: tuple[str, ...] = tuple(sorted(VARIANTS))
    noise_share: float = 0.0
    snr_db: tuple[float, float] = (15.0, 15.0)
    pitch: tuple[int, int] = (30, 70)
    speed: tuple[float, float] = (1.0, 1.0)
    tilt_share: float = 0.0
    tilt_db: tuple[float, float] = (-6.0, 3.0)


@cache  # asked once per utterance by the corpus plan; the answer is a file read and a regex
def variant_sex(variant: str) -> str:
    """``male`` / ``female`` from the variant file's ``gender`` line (espeak-ng's default, male, without one)."""
    text = (Path(espeak_data()) / "voices" / "!v" / variant).read_text(errors="replace")
    found = re.search(r"^gender\s+(\w+)", text, flags=re.MULTILINE | re.IGNORECASE)
    return found.group(1).lower() if found else "male"


def random_variant(name: str) -> str:
    """The text of an espeak-ng voice variant file named ``name`` (one of RANDOM_VARIANTS), a pure function of it.

    Each parameter is drawn from about the range espeak-ng's bundled variants span: pitch, a vocal-tract
    scale shared by the formants (higher for female voices) with per-formant jitter, formant heights and
    widths (now and then one nearly silenced, as some bundled voices have), the spectral balance (``tone``:
    amplitude at 600, 1200, 2000 and 3000 Hz, from dull to bright), voicing and consonant strength,
    roughness and flutter.
    """
    r = random.Random(f"espeak-variant:{name}")
    female = r.random() < 0.5
    low = r.randint(140, 220) if female else r.randint(70, 130)
    lines = ["language variant", f"name {name}", f"gender {'female' if female else 'male'}",
             f"pitch {low} {low + r.randint(20, 80)}"]
    scale = r.uniform(1.0, 1.2) if female else r.uniform(0.85, 1.05)
    for k in range(9):
        height = r.randint(5, 30) if k >= 2 and r.random() < 0.1 else r.randint(50, 150)
        lines.append(f"formant {k} {round(100 * scale * r.uniform(0.92, 1.08))} {height} {r.randint(60, 160)}")
    if r.random() < 0.7:
        slope = r.uniform(0.3, 1.3)  # amplitude ratio per step: < 1 dull, > 1 bright
        amps = [min(255, max(10, round(200 * slope**k))) for k in range(4)]
        lines.append("tone " + " ".join(f"{f} {a}" for f, a in zip((600, 1200, 2000, 3000), amps)))
    lines += [f"voicing {r.randint(40, 200)}", f"consonants {r.randint(50, 130)} {r.randint(50, 130)}",
              f"roughness {r.randint(0, 5)}", f"flutter {r.choice((0, 1, 5, 10, 20))}"]
    return "\n".join(lines) + "\n"


@cache
def espeak_data() -> str:
    """espeak-ng's data folder for this process: the bundled one, with RANDOM_VARIANTS added to ``voices/!v``.

    The bundled folder lives in an installed package and stays untouched: the copy is a folder of links to
    its files plus the drawn variants, made once per user in ``~/.cache/tatk`` (``$XDG_CACHE_HOME``; not the
    shared temporary folder, where another user could plant a folder of that name) and renamed into place
    when whole. Its name is a hash of the bundled path and the variants, so a change makes a new one.
    Without a writable cache folder each process makes its own in the temporary folder.
    """
    import espeakng_loader

    bundled = Path(espeakng_loader.get_data_path())
    texts = {name: random_variant(name) for name in RANDOM_VARIANTS}
    key = hashlib.sha256(repr((str(bundled), sorted(texts.items()))).encode()).hexdigest()[:16]
    final = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tatk" / f"espeak-ng-data-{key}"
    if final.is_dir():
        return str(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    except OSError:  # no cache folder, or one we cannot write in: a temporary copy for this process only
        tmp = final = Path(tempfile.mkdtemp(prefix=f"tatk-{final.name}-"))  # renamed onto itself below
    variants = tmp / "voices" / "!v"
    variants.mkdir(parents=True)
    for folder, keep in ((bundled, "voices"), (bundled / "voices", "!v")):  # link all but the path to !v
        for entry in folder.iterdir():
            if entry.name != keep:
                (tmp / entry.relative_to(bundled)).symlink_to(entry)
    for entry in (bundled / "voices" / "!v").iterdir():
        (variants / entry.name).symlink_to(entry)
    for name, text in texts.items():
        (variants / name).write_text(text)
    try:
        os.rename(tmp, final)
    except OSError:  # another process made it first: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def add_noise(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``x`` plus seeded coloured noise at ``snr_db`` dB below the speech's power. The noise is white noise
    through a one-pole low-pass of random strength (hiss to rumble), so not every noisy clip sounds alike;
    the speech power is measured over samples above 1 % of the peak, so pauses do not lower it."""
    g = np.random.default_rng(seed)
    noise = g.standard_normal(len(x))
    a = g.uniform(0.0, 0.95)  # 0: white; near 1: mostly low frequencies
    # The filter (1 - a) / (1 - a z^-1) applied circularly (it is noise anyway): its periodic steady state, the
    # recursion started from its own last value y[n-1] = y_lin[n-1] / (1 - a^n) (y_lin: started from rest). The
    # same sums as filtering in the frequency domain, which took ~15 ms a clip for lengths with a large prime
    # factor (most clips): two passes of the recursion take < 1 ms.
    last = lfilter([1 - a], [1, -a], noise)[-1] / (1 - a ** len(x))
    noise = lfilter([1 - a], [1, -a], noise, zi=[a * last])[0]
    speech = x[np.abs(x) > 0.01 * np.abs(x).max()] if np.abs(x).max() > 0 else x
    p_speech, p_noise = float(np.mean(speech**2)), float(np.mean(noise**2))
    return (x + noise * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))).astype(np.float32)


def tilt(x: np.ndarray, sample_rate: int, db_per_octave: float) -> np.ndarray:
    """``x`` with its spectrum tilted by ``db_per_octave`` dB per octave about 500 Hz (flat below 100 Hz), at
    the same power: a duller or brighter voice or channel. espeak-ng's variants differ this much: a dull one
    such as "steph" has ~10 dB less energy above 2 kHz than most."""
    f = np.fft.rfftfreq(len(x), 1 / sample_rate)
    gain = 10 ** (db_per_octave * np.log2(np.maximum(f, 100.0) / 500.0) / 20)
    y = np.fft.irfft(np.fft.rfft(x) * gain, n=len(x))
    return (y * np.sqrt(np.mean(x**2) / max(float(np.mean(y**2)), 1e-20))).astype(np.float32)
