"""The one exception users see: a message that says what was wrong and what would be right."""


class SubcloneError(ValueError):
    """Bad input or an impossible request. The CLI prints it as one line and exits with code 2."""


def shown(value, limit: int = 120) -> str:
    """A value from a request as an error message may quote it: one line, control characters escaped, cut short."""
    text = str(value)
    short = text[:limit].encode("unicode_escape").decode("ascii", "replace")
    return short + ("…" if len(text) > limit else "")
