"""`digitpi service`: the systemd unit that starts `digitpi serve` at boot, checked by systemd itself.

`systemd-analyze verify` (Debian's systemd package) parses the unit as systemd would at boot and
fails on unknown keys, bad values and an ExecStart= program that does not exist.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from digitpi import cli


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd (`make test` does)")
    return found


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_unit_starts_serve_at_boot_and_verifies(systemd_analyze, fast_export, tmp_path, capsys):
    unit = tmp_path / "digitpi.service"
    argv = ["service", "--model", str(fast_export), "--user", "pi", "--port", "8080", "--out", str(unit)]
    assert cli.main(argv) == 0
    done = verify(systemd_analyze, unit)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = unit.read_text().splitlines()
    [exec_start] = [line for line in lines if line.startswith("ExecStart=")]
    digitpi = Path(sys.executable).with_name("digitpi")  # this venv's console script, absolute
    assert exec_start == f"ExecStart={digitpi} serve --model {fast_export} --host 0.0.0.0 --port 8080"
    for setting in ("User=pi", "Restart=on-failure", "MemoryMax=256M", "WantedBy=multi-user.target",
                    "After=network-online.target"):
        assert setting in lines


def test_unit_printed_with_awkward_paths_still_verifies(systemd_analyze, fast_export, tmp_path, capsys):
    """A model folder with a space and a % (a systemd specifier) is quoted and escaped, not mangled."""
    folder = tmp_path / "my models" / "100% digits"
    shutil.copytree(fast_export, folder)
    assert cli.main(["service", "--model", str(folder)]) == 0
    unit = tmp_path / "digitpi.service"
    unit.write_text(capsys.readouterr().out)
    done = verify(systemd_analyze, unit)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = unit.read_text()
    assert f'--model "{str(folder).replace("%", "%%")}"' in text
    assert f"WorkingDirectory={str(folder).replace('%', '%%')}\n" in text


def test_unit_for_a_folder_that_is_no_export_is_refused(tmp_path, capsys):
    assert cli.main(["service", "--model", str(tmp_path / "missing")]) == 2
    assert cli.main(["service", "--model", str(tmp_path)]) == 2  # a folder, but no model card
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("digitpi: error: ") for line in err)
