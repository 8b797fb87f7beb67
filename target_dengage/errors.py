"""Errors the user is meant to read.

Anything raised as a :class:`DengageError` ends the run with its message alone on stderr and
a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from singer_sdk.exceptions import MissingKeyPropertiesError

if TYPE_CHECKING:
    from target_dengage.protocol import ItemIssue


class DengageError(Exception):
    """A failure explained in plain words: bad config, bad input, or an API refusal."""


class DengageAuthError(DengageError):
    """The API does not accept our credentials (401 that a fresh login cannot cure)."""


class DengageForbiddenError(DengageError):
    """403: missing role, wrong credentials, or an address off the allowlist."""


class DengageRequestError(DengageError):
    """The API refused a request as a whole (400 and other final answers).

    ``refused_data``: D·engage refused the contacts themselves (a 400, or codes 1 and 11),
    so with stop_on_error false the records it names, or halves of the request, may be
    tried alone; any other refusal is about the call and ends the run.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        issues: Sequence[ItemIssue] = (),
        refused_data: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.issues = tuple(issues)
        self.refused_data = refused_data


class DengageUnavailableError(DengageError):
    """Retries are used up: the API kept answering 429/5xx or could not be reached."""


class InvalidInputError(DengageError):
    """A Singer message or record that cannot be loaded as it is."""


class MissingContactKeyError(InvalidInputError, MissingKeyPropertiesError):
    """A record without a contact key: ours, and also the SDK's missing-key error, so code
    that handles that one (the SDK's standard tests among it) recognises this one."""
