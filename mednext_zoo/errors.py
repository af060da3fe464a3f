"""Errors raised for bad user input: the CLI prints their message without a traceback."""


class MedNeXtZooError(Exception):
    """Base class for errors that say what was wrong and what to do."""


class UserInputError(MedNeXtZooError, ValueError):
    """A file, value or option given by the user cannot be used."""
