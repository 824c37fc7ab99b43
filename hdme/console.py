"""The one rich console every hdme command prints through."""


def make_console(stderr: bool = False):
    """A console that prints paths, dataset specs and messages as given.

    Emoji codes are off because user text is full of colons: ``away-leaves:abc:`` or a path with
    ``:cd:`` in it would otherwise print with an emoji in place of the name. Piped into a log, tables
    keep their columns instead of being squeezed into 80.
    """
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, emoji=False)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console
