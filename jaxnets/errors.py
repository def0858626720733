"""User-facing errors: the CLI prints these as one paragraph and exits with `exit_code`."""
import difflib


class UserError(Exception):
    """Bad input from the user (config, dataset name, workdir, ...), not a bug in jaxnets."""

    exit_code = 2


class TrainingDiverged(UserError):
    """Too many consecutive non-finite steps (jaxnets.train.guard); exit status 3."""

    exit_code = 3


def did_you_mean(name: str, known, cutoff: float = 0.6) -> str:
    """' Did you mean a, b?' for the known names closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=cutoff)
    return f" Did you mean {', '.join(close)}?" if close else ""


def unknown_names(what: str, noun: str, unknown: list[str], known) -> UserError:
    """The one-paragraph error for names `what` does not declare: the closest, then all it knows."""
    return UserError(f"{what} has no {noun} {', '.join(map(repr, unknown))}."
                     f"{did_you_mean(unknown[0], known)} "
                     f"Known: {', '.join(sorted(known)) or '(none)'}.")
