"""Completeness, checked rather than assumed: ``tatk shard --verify OUT`` and the check at the end of every run.

For every split of a shard folder: every unit listed is done; for each unit, kept + skipped = its row
count; and (``--verify``) every tar listed is readable, holds the samples recorded for it and matches
the sha256 the manifest records. The first gap fails with one line naming the unit.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tatk.errors import UserError
from tatk.shard.format import count_samples, read_manifest, sha256_file
from tatk.shard.units import STATE_DIR, UnitBook


def check_counts(out: Path, split: str, records: list[dict | None], units: list[str]) -> None:
    """Every unit done, and every row of each kept or skipped (cheap: no tar is read)."""
    for name, rec in zip(units, records):
        if rec is None:
            raise UserError(f"{out}: split {split!r}, unit {name} is not done (re-run the same `tatk shard` command to finish it)")
        skipped = sum(rec["skipped"].values())
        if rec["kept"] + skipped != rec["rows"]:
            raise UserError(f"{out}: split {split!r}, unit {name}: {rec['kept']} kept + {skipped} skipped != {rec['rows']} rows")
        if rec["kept"] != sum(t["samples"] for t in rec["tars"]):
            raise UserError(f"{out}: split {split!r}, unit {name}: {rec['kept']} kept but its tars record "
                            f"{sum(t['samples'] for t in rec['tars'])} samples")


def check_tar(path: Path, samples: int, sha256: str) -> str | None:
    """What is wrong with one tar, or None."""
    if not path.exists():
        return "is missing"
    try:
        n = count_samples(path)
    except (tarfile.TarError, OSError) as e:
        return f"is unreadable ({e})"
    if n != samples:
        return f"holds {n} samples, the manifest records {samples}"
    if sha256_file(path) != sha256:
        return "does not match the sha256 the manifest records"
    return None


def verify(out: Path) -> dict[str, dict]:
    """Check every split of a shard folder; returns, per split, units done/total and rows kept/skipped/total.
    Raises one ``UserError`` line naming the first unit with a gap."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"--verify {str(out)!r}: no such folder")
    splits = sorted(p.name for p in (out / STATE_DIR).glob("*") if (p / "listing.json").exists())
    if not splits:
        raise UserError(f"--verify {str(out)!r}: not a shard folder (no {STATE_DIR}/<split>/listing.json)")
    manifest = read_manifest(out)
    found = {}
    for split in splits:
        book = UnitBook(out, split)
        listing = json.loads((book.dir / "listing.json").read_text())
        names = [f"u{i:05d}" for i in range(len(listing))]
        records = [book.done(n) for n in names]
        check_counts(out, split, records, names)
        entry = manifest.get("splits", {}).get(split)
        if entry is None or [u["unit"] for u in entry.get("units", [])] != names:
            raise UserError(f"{out}: split {split!r} is done but manifest.json does not list its units "
                            "(re-run the same `tatk shard` command to write it)")
        shards = {s["name"]: s for s in entry["shards"]}
        for unit in entry["units"]:
            for name in unit["tars"]:
                shard = shards[name]
                problem = check_tar(out / name, shard["samples"], shard["sha256"])
                if problem:
                    raise UserError(f"{out}: split {split!r}, unit {unit['unit']}: {name} {problem}")
        found[split] = dict(units=len(names), rows=entry["rows"], kept=entry["samples"],
                            skipped=sum(entry["skipped"].values()))
    return found
