"""The one exception type for bad user input."""


class UserError(Exception):
    """Bad input from the user (recipe, path, id, column...). The CLI prints it as one line and exits 2."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """A library exception reduced to its first line (or its type name), for one-line error messages."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
