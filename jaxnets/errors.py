"""User-facing errors: the CLI prints these as one paragraph and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (config, dataset name, workdir, ...), not a bug in jaxnets."""
