"""What of a contact or a secret may reach a log line or an error message.

Logs are read by more people than the data is meant for, and they outlive the run: emails and
phone numbers appear masked, and the password and access token never appear at all, even when
D·engage (or a proxy in front of it) echoes them back in an answer.
"""

from __future__ import annotations

import re
import threading

MASK_LONG = 40
MASK_KEEP_DOMAIN = 64
#: Most characters of an answer's text quoted in a log line or an error.
QUOTE_LIMIT = 300
#: Shorter values are not searched for: replacing every "p" of a text hides nothing.
MIN_SECRET_LENGTH = 4
#: What stands in for a secret found in quoted text.
REDACTED = "[redacted]"

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def hide(secret: str | None) -> None:
    """Never quote this value (a password, a token): it is replaced wherever it appears in
    text that :func:`quote` prepares. Process-wide, like a CI's secret mask, because every
    log line of the run must respect it, whichever module writes it."""
    global _secrets
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if secret not in _secrets:
            # Longest first, so a secret that contains another is replaced whole.
            _secrets = tuple(sorted((*_secrets, secret), key=len, reverse=True))


def mask(value: object) -> str:
    """Hide personal data in log lines while keeping enough to recognise it.

    ``jane.doe@example.com`` → ``j***@example.com``; ``905351234567`` → ``90***67``. The result
    is short whatever the input (a 10 MB value must not become a 10 MB log line).
    """
    text = str(value) if not isinstance(value, str) else value
    if "@" in text:
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain[:MASK_KEEP_DOMAIN]}"
    if len(text) <= 4:
        return "*" * len(text)
    hidden = f"***({len(text)} chars)***" if len(text) > MASK_LONG else "***"
    return f"{text[:2]}{hidden}{text[-2:]}"


#: An email (or what is left of one, cut after its ``@``), or a phone-like run of 10+ digits
#: (single spaces or dashes between them) that is not part of a longer token such as a UUID.
_PII_RE = re.compile(r"[^\s@'\"<>(),;:]+@[^\s@'\"<>(),;:]*|(?<![\w-])\+?\d(?:[ -]?\d){9,}(?![\w-])")
_LAST_WORD_RE = re.compile(r"\S*\Z")


def scrub(text: str) -> str:
    """Mask anything that looks like an email or a phone number in free text, e.g. an API
    message that quotes the value it refused. Callers keep ``text`` short (see
    :func:`quote`): the pattern is linear per match but may try every position."""
    return _PII_RE.sub(lambda m: mask(m.group()), text)


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Text from outside (an API answer) made fit for a log line: secrets replaced, cut to
    ``limit`` characters, personal data masked, in time linear in ``len(text)``.

    Secrets go first, on the whole text, so a cut cannot leave half of one; the cut drops the
    last, possibly partial word, so half an email or phone number cannot slip past the mask.
    """
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    total = len(text)
    text = " ".join(text[: limit * 4].split())  # one line, bounded before the pattern runs
    if len(text) > limit or total > limit * 4:
        cut = _LAST_WORD_RE.sub("", text[:limit]).rstrip()
        text = f"{cut} … ({total} characters in all)"
    return scrub(text)
