"""The shape of the package: a straight import line, and singer-sdk's private names in one
module. Both are checked on the code itself, so a change that bends them fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "target_dengage"
#: singer-sdk names that are not part of its public interface.
PRIVATE_SDK = re.compile(
    r"\._(process_\w+_message|write_state_message|handle_max_record_age|handle_termination"
    r"|latest_state|sinks_active|sinks_to_clear|validator|singer_validate_message"
    r"|parse_timestamps_in_record|remove_sdc_metadata_from_record)\b|_ConfigInput|SameRecordTransform|super\(Target\b"
    r"|singer_sdk\.\w+(\.\w+)*\._"
)


def test_import_contracts_in_pyproject_are_kept() -> None:
    """import-linter's layers and forbidden contracts (see [tool.importlinter])."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_private_sdk_names_appear_in_sdk_py_only() -> None:
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "sdk.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_SDK.search(line)
    ]
    assert not found, "private singer-sdk names outside target_dengage/sdk.py:\n" + "\n".join(found)
