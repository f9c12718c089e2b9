"""Reading training tars: one whole tar or a range of its samples, counting the bytes read, and naming a
damaged tar instead of dying on it.

A *unit* is ``(tar index, first sample, end sample)``. A set with at least as many tars as streams is read
in whole tars; a smaller set is cut into sample ranges (``units``, ``pieces_for``) so that several streams share a tar
without each reading all of it: ``read_range`` walks the tar's headers up to its first sample (seeking over
the data, which it never reads) and reads only its own samples' members.

Samples follow WebDataset's convention (members ``<key>.<ext>``, consecutive members with one key form a
sample: ``{"__key__": key, "<ext>": bytes, ...}``), which is how `tatk shard` writes them.
"""

from __future__ import annotations

import math
import tarfile
from typing import Iterator

from tatk.files import CountingFile


class BadTar(Exception):
    """A tar that cannot be read to the end of the wanted range (truncated, garbled, missing, unreadable)."""


def units(counts: list[int], pieces: int) -> list[tuple[int, int, int]]:
    """A set's units of work: every tar cut into ``pieces`` near-equal sample ranges (1: whole tars)."""
    out = []
    for t, n in enumerate(counts):
        edges = [n * k // pieces for k in range(pieces + 1)]
        out += [(t, edges[k], edges[k + 1]) for k in range(pieces) if edges[k + 1] > edges[k]]
    return out


def pieces_for(n_tars: int, streams: int) -> int:
    """Ranges per tar so that every stream gets at least one unit per epoch: 1 when the set has enough tars."""
    return 1 if n_tars >= streams else math.ceil(streams / max(n_tars, 1))


def _key(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name into (sample key, extension): the extension starts at the first
    dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def read_range(path: str, first: int = 0, end: int | None = None, counter: list[int] | None = None) -> Iterator[dict]:
    """Samples ``first`` ≤ i < ``end`` of the tar at ``path`` (all when ``end`` is None), in order.

    Raises ``BadTar`` (after yielding the complete samples before the damage) when the tar is unreadable or
    holds fewer samples than asked for; ``counter[0]`` grows by the bytes read from disk."""
    counter = counter if counter is not None else [0]
    index, key, sample = -1, None, None
    try:
        f = CountingFile(open(path, "rb"), counter)
    except OSError as e:
        raise BadTar(f"{path}: {e.strerror or e}") from None
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _key(member.name)
                if k != key:
                    if sample is not None:
                        yield sample
                        sample = None
                    index, key = index + 1, k
                    if end is not None and index >= end:
                        return
                if index < first:
                    continue  # only the header was read; tarfile seeks over the data
                sample = sample or {"__key__": k}
                sample[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadTar(f"{path}: {str(e) or type(e).__name__}") from None
    finally:
        f.close()
    got = index + 1
    if end is not None and got < end:  # cut at a member boundary: its last sample may lack members, drop it
        raise BadTar(f"{path}: holds {got} samples, the manifest says at least {end} (truncated?)")
    if sample is not None:
        yield sample
