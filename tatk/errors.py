"""The one exception type for bad user input."""


class UserError(Exception):
    """Bad input from the user (recipe, path, id, column...). The CLI prints it as one line and exits 2."""
