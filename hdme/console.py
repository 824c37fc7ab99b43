"""The one rich console every hdme command prints through."""


def make_console(stderr: bool = False):
    """A console that prints paths, dataset specs and messages as given.

    Markup and emoji codes are off because user text is full of brackets and colons: a file named
    ``shot[bold]1.jpg`` would print as ``shot1.jpg`` and a spec ``away-leaves:abc:`` with an emoji in
    place of the name; what hdme styles itself it styles with ``rich.text.Text``. Piped into a log,
    tables keep their columns instead of being squeezed into 80.
    """
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console
