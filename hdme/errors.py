"""One exception type for problems a user can fix (bad input, missing file or extra)."""


class HdmeError(Exception):
    """An error whose message is one line a user can act on; the CLI prints it without a traceback."""


def require(module: str, extra: str):
    """Import an optional dependency or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HdmeError(
            f"'{module}' is not installed; install it with: pip install 'hdme[{extra}]' ({exc})"
        ) from None
