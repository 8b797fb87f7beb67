"""A stateful property test: random sequences of answers, the real CLI after each, and the
promise checked after every run: every printed STATE is covered by contacts D·engage stored
or by lines of the rejected file, and the ledger holds nothing D·engage lacks.

Like an orchestrator, each run resumes after the last STATE printed; at the end D·engage
heals, and one more run must leave every contact stored or rejected.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from conftest import MAPPING, PASSWORD, USERKEY, contact, record, run_target, schema, state
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from target_dengage.emulator import DengageEmulator

BULK = "/rest/bulk/contacts"
TOTAL, BATCH = 12, 4

#: Answers D·engage (or a proxy, or the network) may give to one BulkUpsert call.
ANSWERS: dict[str, dict[str, Any]] = {
    "code-999": {"status": 200, "body": {"code": 999, "message": "UnexpectedError"}},
    "html": {"status": 200, "raw_body": "<html>maintenance</html>"},
    "empty": {"status": 200, "raw_body": ""},
    "array": {"status": 200, "body": []},
    "code-11": {"status": 200, "body": {"code": 11, "message": "ValidationFails"}},
    "400-unnamed": {"status": 400, "body": {"code": 1, "message": "FieldError"}},
    "429": {"status": 429, "body": {"code": 429, "message": "Too many requests"}},
    "503": {"status": 503, "body": {"code": 999, "message": "Unavailable"}},
    "cut-off": {"status": 200, "body": {"code": 0, "message": "Success"}, "cut_off": True},
    "cut-off-after-applying": {"cut_off": True},
    "hang-within-timeout": {"hang_seconds": 0.2},
    "hang-past-timeout": {"status": 200, "body": {"code": 0}, "hang_seconds": 1.5},
}


class AnswersMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="answers-"))
        self.emulator = DengageEmulator(
            userkey=USERKEY,
            password=PASSWORD,
            sync_interval_seconds=0,
        ).start()
        self.config = {
            "api_url": self.emulator.url,
            "userkey": USERKEY,
            "password": PASSWORD,
            "column_mapping": MAPPING,
            "request_interval_seconds": 0,
            "batch_size_rows": BATCH,
            "stop_on_error": False,
            "max_retries": 2,
            "request_timeout_seconds": 1,
            "change_detection": True,
            "ledger_url": f"sqlite:///{self.dir / 'ledger.sqlite'}",
            "rejected_records_path": str(self.dir / "rejected.jsonl"),
        }
        self.position = 0
        self.printed: list[int] = []

    @rule(answer=st.sampled_from(sorted(ANSWERS)))
    def next_call_answers(self, answer: str) -> None:
        self.emulator.inject_fault(BULK, **ANSWERS[answer])

    @rule()
    def next_call_refuses_one_record(self) -> None:
        """A 400 naming the first contact the next run sends (as D·engage names records)."""
        named = {"contact_key": f"c{self.position + 1}", "message": "Invalid gsm"}
        body = {"code": 11, "message": "ValidationFails", "data": {"errors": [named]}}
        self.emulator.inject_fault(BULK, status=400, body=body)

    @rule()
    def run(self) -> None:
        self._run(healthy=False)

    def _run(self, *, healthy: bool) -> None:
        messages: list[dict[str, Any]] = [schema()]
        for i in range(self.position + 1, TOTAL + 1):
            messages.append(record(**contact(i)))
            if i % BATCH == 0:
                messages.append(state({"position": i}))
        result = run_target(self.config, messages, self.dir)
        assert "Traceback" not in result.stderr
        if healthy:
            assert result.returncode == 0, result.stderr
        positions = [s["position"] for s in result.states]
        assert positions == sorted(positions)
        self.printed += positions
        if positions:
            self.position = positions[-1]

    @invariant()
    def states_are_covered(self) -> None:
        covered = set(self.emulator.contacts()) | self._rejected()
        for position in self.printed:
            missing = {f"c{i}" for i in range(1, position + 1)} - covered
            assert not missing, f"STATE {position} printed, but {sorted(missing)} are nowhere"

    @invariant()
    def ledger_holds_nothing_dengage_lacks(self) -> None:
        stray = self._ledger() - set(self.emulator.contacts())
        assert not stray, f"the ledger has {sorted(stray)}, which D·engage does not"

    def teardown(self) -> None:
        try:
            self.emulator.clear_faults()
            self._run(healthy=True)
            assert self.position == TOTAL
            self.states_are_covered()
            self.ledger_holds_nothing_dengage_lacks()
        finally:
            self.emulator.stop()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _rejected(self) -> set[str]:
        path = Path(self.config["rejected_records_path"])
        if not path.exists():
            return set()
        return {json.loads(line)["contact_key"] for line in path.read_text().splitlines()}

    def _ledger(self) -> set[str]:
        path = self.dir / "ledger.sqlite"
        if not path.exists():
            return set()
        with sqlite3.connect(path) as db:
            return {r[0] for r in db.execute("SELECT contact_key FROM dengage_contact_ledger")}


AnswersMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=8, deadline=None)
TestAnswers = AnswersMachine.TestCase
