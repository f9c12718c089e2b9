"""Who does which unit: atomic claim files and done records in the output folder, shared by every process.

State of one split, under ``OUT/.state/<split>/``::

    options.json             what decides the shards' contents (a resumed run must agree)
    listing.json             the units (source path and first row): every process must list the same ones
    claims/u00042.<gen>      "this unit is being done": created with O_CREAT|O_EXCL, so one creator wins
    done/u00042.json         the unit's record (rows, kept, skipped, tars with sha256, source), written last

Any (process, DataLoader worker) takes the next unit that is neither done nor claimed, so a fast
process takes more and nobody waits on anybody; several machines sharing one folder (NFS) work the
same way. A claim whose owner died is taken over by creating the next generation's file: same host
and the owner's process is gone, or its heartbeat (the claim's mtime, touched while the unit is
being written) is older than ``STALE_SECONDS``. Only one process can create that file, so a unit is
never done by two live processes at once; a unit is finished only when its done record exists.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from tatk.data.listing import url_revision
from tatk.errors import UserError
from tatk.files import atomic_write_text

STATE_DIR = ".state"
# A claim untouched for this long belongs to a dead (or hung) process on another machine.
STALE_SECONDS = float(os.environ.get("TATK_SHARD_STALE_SECONDS", 600))


class UnitBook:
    """The shared state of one split's units (see the module docstring)."""

    def __init__(self, out: Path, split: str):
        self.out, self.split = Path(out), split
        self.dir = self.out / STATE_DIR / split

    # -- agreeing on what to do ------------------------------------------------------------------
    def agree(self, options: dict, listing: list[dict]) -> None:
        """Record the options and the units on first use; refuse (one line) a run that differs."""
        (self.dir / "claims").mkdir(parents=True, exist_ok=True)
        (self.dir / "done").mkdir(parents=True, exist_ok=True)
        for name, what, mine in (("options.json", "options", options), ("listing.json", "listing", listing)):
            path = self.dir / name
            if not path.exists():
                atomic_write_text(path, json.dumps(mine, indent=1))
            theirs = json.loads(path.read_text())
            if what == "options":
                changed = [k for k in mine if theirs.get(k) != mine[k]]
                if changed:
                    k = changed[0]
                    raise UserError(f"{self.out}: split {self.split!r} was made with {k}={theirs.get(k)!r}, not {mine[k]!r}; "
                                    "use a new --out to change it")
            elif theirs != mine:
                n = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), min(len(theirs), len(mine)))
                raise UserError(f"{self.out}: split {self.split!r} was started on another listing of the corpus "
                                f"({len(theirs)} units, now {len(mine)}; first difference at unit u{n:05d}); use a new --out")

    def pinned_revision(self) -> str | None:
        """The Hub commit this split's units were listed at, if any: a resumed job stays on it, so a
        later commit to the dataset repo (a card edit, new files) cannot change its units."""
        path = self.dir / "listing.json"
        listing = json.loads(path.read_text()) if path.exists() else []
        return url_revision(listing[0]["path"]) if listing else None

    # -- claims ----------------------------------------------------------------------------------
    def _claims(self, name: str) -> list[Path]:
        return sorted(self.dir.glob(f"claims/{name}.*"), key=lambda p: int(p.suffix[1:]))

    def claim(self, name: str, owner: dict) -> Path | None:
        """Try to take unit ``name`` for ``owner`` (host, pid, run); returns the claim file, or None if
        the unit is done or held by a live owner."""
        if self.done_path(name).exists():
            return None
        claims = self._claims(name)
        if claims and not self._stale(claims[-1]):
            return None
        path = self.dir / "claims" / f"{name}.{int(claims[-1].suffix[1:]) + 1 if claims else 0}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another worker got there first
            return None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner))
        if self.done_path(name).exists():  # finished between our check and our claim
            path.unlink()
            return None
        return path

    @staticmethod
    def _stale(claim: Path) -> bool:
        try:
            owner = json.loads(claim.read_text() or "{}")
            age = time.time() - claim.stat().st_mtime
        except (OSError, json.JSONDecodeError):
            return False  # being written or replaced right now: not ours to judge
        if not owner:  # created but never written: its creator died in between, or is writing now
            return age > 60
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return age > STALE_SECONDS

    @staticmethod
    def heartbeat(claim: Path) -> None:
        """Tell other processes that the unit behind ``claim`` is still being worked on."""
        try:
            os.utime(claim)
        except OSError:
            pass

    # -- done records ----------------------------------------------------------------------------
    def done_path(self, name: str) -> Path:
        return self.dir / "done" / f"{name}.json"

    def write_done(self, record: dict) -> None:
        atomic_write_text(self.done_path(record["unit"]), json.dumps(record, indent=1))

    def done(self, name: str) -> dict | None:
        path = self.done_path(name)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def forget(self, name: str) -> None:
        """Drop a done record that no longer holds (its source changed or a tar is gone), so it is redone."""
        self.done_path(name).unlink(missing_ok=True)


def owner() -> dict:
    """Who a claim belongs to: this process on this machine."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
