"""The one exception users see: a message that says what was wrong and what would be right."""


class SubcloneError(ValueError):
    """Bad input or an impossible request. The CLI prints it as one line and exits with code 2."""
