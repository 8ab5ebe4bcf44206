"""bench/scale.py's pure parts: reading ``wc`` and pyinfra's totals, the side-by-side table."""

from __future__ import annotations

from typing import Any

from bench.scale_lab import FileSize, broker_files, changed_operations, parse_wc, table, verdicts

WC = """\
   62  2369 /etc/mosquitto/acl
    3   420 /etc/mosquitto/passwd-8443
    4   563 /etc/mosquitto/passwd-8884
    3   423 /etc/mosquitto/passwd-8885
   72  3775 total
"""


def _row(devices: int, seconds: float, acl_bytes: int, changed: int = 0) -> dict[str, Any]:
    return {
        "devices": devices, "lab_up_s": 2.0, "enroll_s": seconds, "pki_again_s": seconds / 10,
        "plan_s": seconds / 100, "first_s": 10 * seconds, "again_s": seconds,
        "again_changed": changed, "start_s": 0.5, "acl_lines": 62, "acl_bytes": acl_bytes,
        "passwd_lines": 3, "passwd_bytes": 425, "load": "1.0/1.0",
    }  # fmt: skip


def test_wc_output_gives_the_acl_and_the_largest_password_file() -> None:
    sizes = parse_wc(WC)
    assert "total" not in sizes and len(sizes) == 4
    assert broker_files(sizes) == {"acl": FileSize(62, 2369), "passwd": FileSize(4, 563)}
    assert broker_files({}) == {"acl": FileSize(0, 0), "passwd": FileSize(0, 0)}


def test_changed_operations_of_the_grand_total() -> None:
    assert changed_operations("100 - - 100") == 0
    assert changed_operations("100 10 - 90") == 10
    assert changed_operations("") == -1


def test_table_puts_sizes_side_by_side_with_the_growth_per_1000_devices() -> None:
    lines = table([_row(1000, 1.0, 2000), _row(11_000, 3.0, 12_000)])
    head, small, large, growth = lines
    assert head.split()[:4] == ["devices", "lab", "up", "s"]
    assert len(small) == len(large) == len(head) == len(growth)
    assert small.split()[0] == "1000" and large.split()[0] == "11000"
    cells = growth.split()
    assert cells[:3] == ["per", "1k", "0.000"]  # lab up did not grow
    assert "0.200" in cells  # enroll: 2 s more over 10,000 devices
    assert "1000" in cells  # ACL: 10,000 bytes more over 10,000 devices


def test_one_size_has_no_growth_line() -> None:
    assert len(table([_row(1000, 1.0, 2000)])) == 2


def test_verdicts_name_targets_only_at_100000_devices() -> None:
    [line] = verdicts([_row(1000, 1.0, 2000)])
    assert "not measured at that size" in line
    lines = verdicts([_row(100_000, 5.0, 2000)])
    assert "target PKI no-change (pyinfra) at 100000 <= 2 s: 0.50 s met" in lines
    assert "target no-change rollout at 100000 <= 10 s: 5.00 s met" in lines
    assert "target first (PKI enroll + rollout) at 100000 <= 120 s: 55.00 s met" in lines
    # The rollout alone (110 s) is within 120 s, the new fleet's cost (11 s + 110 s) is not.
    slow = verdicts([_row(100_000, 11.0, 2000)])
    assert "target first (PKI enroll + rollout) at 100000 <= 120 s: 121.00 s NOT MET" in slow
    assert slow[-1].endswith("the rollout alone, PKI enrolled: 110.0 s met)")


def test_a_no_change_run_that_changed_something_is_called_out() -> None:
    lines = verdicts([_row(1000, 1.0, 2000, changed=10)])
    assert lines[0].startswith("the no-change rollout of 1000 changed 10 operation(s)")
