"""Every fact about the D·engage API that the code relies on, in one place.

Each fact is tagged with where it comes from, as docs/dengage-api.md explains them in prose:

- *vendor*: a D·engage documentation page says it;
- *clients*: several independent public programs that call the live API do it;
- *assumed*: nobody public shows it; it is our choice, kept here so that one edit adapts the
  target (and the emulator, which imports these same rules) when the real API differs.

Nothing here does anything: the rules are read by ``protocol`` (answers), ``mapping`` (values),
``client`` (calls) and ``emulator`` (the local stand-in for the API).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum

# -- where ---------------------------------------------------------------------------------
DEFAULT_API_URL = "https://api.dengage.com"  # vendor
REGIONAL_HOSTS = (  # clients
    "https://tr-api.dengage.com",
    "https://us-api.dengage.com",
    "https://eu-api.dengage.com",
    "https://ru-api.dengage.com",
    "https://sa-api.dengage.com",
    "https://dev-api.dengage.com",
)
LOGIN_PATH = "/rest/login"  # clients: POST {"userkey", "password"}
BULK_PATH = "/rest/bulk/contacts"  # vendor: sync BulkUpsert
ASYNC_PATH = "/rest/bulk/async/contacts"  # vendor: BulkUpsert-Async; GET .../{jobId} for status


class Endpoint(Enum):
    """The calls the target makes."""

    LOGIN = "login"
    BULK = "bulk"
    SUBMIT = "submit"
    JOB = "job"


#: vendor: the status each endpoint answers success with (an async submit: 202 Accepted).
SUCCESS_STATUS: Mapping[Endpoint, int] = {
    Endpoint.LOGIN: 200,
    Endpoint.BULK: 200,
    Endpoint.SUBMIT: 202,
    Endpoint.JOB: 200,
}

# -- how much, how often ---------------------------------------------------------------------
MAX_CONTACTS_PER_CALL = 1000  # vendor: contactDatas holds 1 to 1000 objects
#: vendor: "call once a minute with a single request"; a second call in the window, or in
#: parallel, gets 429.
SYNC_CALL_INTERVAL_SECONDS = 60
#: clients: a login's token lives this long unless the answer's ``expires_in`` says otherwise.
DEFAULT_TOKEN_SECONDS = 3600.0
#: clients: renew the token this long before it expires (there is no refresh token).
TOKEN_MARGIN_SECONDS = 60.0

# -- the request body ------------------------------------------------------------------------
#: vendor: the body's fields. ``throwExceptionIfInvalidRecord`` (clients) is the name public
#: callers of the live API send for ``stopOnError``'s choice; the vendor page's own name was
#: lost in our copy, so both are sent, always equal.
BODY_FIELDS = frozenset(
    {"columns", "contactDatas", "insertIfNotExists", "stopOnError", "throwExceptionIfInvalidRecord"}
)

# -- master_contact columns (vendor's column reference) --------------------------------------
CONTACT_KEY = "contact_key"
NEW_CONTACT_KEY = "new_contact_key"  # vendor: renames a contact; not with insertIfNotExists
#: Writable columns, with the kind of value each holds.
STANDARD_COLUMNS: Mapping[str, str] = {
    CONTACT_KEY: "key",
    "contact_status": "status",
    "email": "email",
    "email_permission": "boolean",
    "email_status": "status",
    "gsm": "gsm",
    "gsm_permission": "boolean",
    "gsm_status": "status",
    "name": "text100",
    "surname": "text100",
    "gender": "text100",
    "birth_date": "date",
    "subscription_date": "date",
    NEW_CONTACT_KEY: "key",
}
#: vendor: maintained by D·engage itself; a request that writes them is refused.
PLATFORM_COLUMNS = frozenset(
    {"email_status_reason", "gsm_status_reason", "is_email_active", "is_email_engaged"}
)
STATUS_VALUES = ("A", "P")  # vendor: active, passive (receives nothing)
CONTACT_KEY_MAX = 255  # assumed: the vendor gives no limit; 255 is the common varchar size
EMAIL_MAX = 255  # vendor
GSM_MAX = 20  # vendor: digits with the country code, e.g. 905351234567
TEXT_MAX = 100  # vendor: name, surname, gender
CUSTOM_MAX = 4000  # assumed: custom columns are strings of an unstated size
#: assumed: what D·engage takes as an email address (one ``@``, a dotted domain). Written so
#: that it matches in one way only: no backtracking, whatever the text.
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
GSM_PATTERN = re.compile(rf"[0-9]{{1,{GSM_MAX}}}")  # vendor: digits only
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # vendor: yyyy-MM-dd

# -- answers ---------------------------------------------------------------------------------
#: vendor: envelope codes that refuse the request's data (FieldError, ValidationFails).
DATA_REFUSAL_CODES = frozenset({1, 11})
#: vendor: 500 is UnexpectedError [999]; 502 to 504 are gateways in front of it giving up.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: clients: a 2xx whose envelope carries one of these as true applied nothing.
HAS_ERROR_FIELDS = ("HasError", "hasError")
#: assumed: where an async submit's job id sits (top level, else in ``data``).
JOB_ID_FIELDS = ("transactionId", "TransactionId", "jobId", "JobId", "id", "Id")
MAX_JOB_ID_LENGTH = 200  # assumed: ids are UUIDs or numbers; anything longer is not one
#: assumed: a job status answer's status word, matched without case, spaces or underscores;
#: any word but these (Queued, Pending, Processing, ...) means still running.
JOB_STATUS_FIELDS = ("status", "Status", "state", "State", "jobStatus")
JOB_DONE = frozenset({"completed", "success", "succeeded", "done", "finished"})
JOB_FAILED = frozenset({"failed", "error", "cancelled", "canceled"})
#: assumed: an answer's items are contact-key strings, or objects naming a key, a message
#: and perhaps a field, under one of these names.
ITEM_KEY_FIELDS = ("contact_key", "contactKey", "ContactKey", "key", "Key")
ITEM_MESSAGE_FIELDS = (
    "message",
    "Message",
    "error",
    "Error",
    "reason",
    "description",
    "errorMessage",
)
ITEM_FIELD_FIELDS = ("field", "Field", "column", "Column", "columnName")
