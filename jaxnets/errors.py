"""User-facing errors: the CLI prints these as one paragraph and exits with `exit_code`."""


class UserError(Exception):
    """Bad input from the user (config, dataset name, workdir, ...), not a bug in jaxnets."""

    exit_code = 2


class TrainingDiverged(UserError):
    """Too many consecutive non-finite steps (jaxnets.train.guard); exit status 3."""

    exit_code = 3
