"""What reaches a log line: masked personal data, no secrets, bounded text, linear time."""

from __future__ import annotations

from target_dengage.masking import REDACTED, hide, mask, quote, scrub


def test_mask_hides_personal_data() -> None:
    assert mask("jane.doe@example.com") == "j***@example.com"
    assert mask("905351234567") == "90***67"
    assert mask("x" * 10_000_000) == "xx***(10000000 chars)***xx"
    assert mask("abc") == "***"


def test_scrub_masks_emails_and_phone_numbers_in_free_text() -> None:
    text = scrub("Invalid email 'Jane.Doe@example.com' and gsm 905351234567 for id 4711")
    assert text == "Invalid email 'J***@example.com' and gsm 90***67 for id 4711"
    job = "job 6e363e66-9301-4574-9301-457493014574 failed"
    assert scrub(job) == job
    assert scrub("call +90 535-123-45-67 now") == "call +9***67 now"


def test_quote_replaces_secrets_before_cutting() -> None:
    hide("hunter2-Secret!")
    text = "x " * 140 + "echo: {'userkey': 'u', 'password': 'hunter2-Secret!'}"
    quoted = quote(text)
    assert "hunter2" not in quoted
    assert REDACTED in quote("the password hunter2-Secret! is wrong")


def test_quote_cuts_long_text_without_leaving_half_an_email_or_phone() -> None:
    text = "refused: " + "a" * 280 + " jane.doe@example.com" + " more" * 100
    quoted = quote(text, limit=300)
    assert "jane" not in quoted
    assert "doe" not in quoted
    assert len(quoted) < 400
    assert "characters in all" in quoted
    phone = quote("x" * 290 + " 905351234567", limit=300)
    assert "9053512" not in phone


def test_quote_is_one_line_and_fast_on_hostile_text() -> None:
    # 100 KB without an @ or with endless digits: a cut comes before the pattern runs.
    for hostile in ("a" * 100_000, "1" * 100_000 + "x", "a@" * 50_000, "<p>\n" * 20_000):
        quoted = quote(hostile)
        assert "\n" not in quoted
        assert len(quoted) < 400
