"""``iotfleet check --prometheus``'s textfile, served by a real node_exporter and scraped
over HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from iotfleet.report.prometheus import write_textfile
from tests.support.node_exporter import node_exporter, scrape
from tests.support.report_runs import B1, B2, KEY_TITLE, run


def test_node_exporter_serves_the_runs_metrics(tmp_path: Path) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    metrics = textfiles / "iotfleet-plant.prom"
    broken = run(1, broken=True)
    write_textfile(metrics, broken)
    assert metrics.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textfiles.iterdir()] == ["iotfleet-plant.prom"]  # no temp left
    with node_exporter(textfiles) as url:
        samples = scrape(url)
        # node_exporter accepted the file: no parse error reported for it.
        assert samples["node_textfile_scrape_error"] == 0
        assert samples[f'node_textfile_mtime_seconds{{file="{metrics}"}}'] > 0
        check = f'broker="{B1}",check="test_owner_and_mode",fleet="plant",title="{KEY_TITLE}"'
        assert samples[f"iotfleet_check_passed{{{check}}}"] == 0
        assert samples[f"iotfleet_check_passed{{{check.replace(B1, B2)}}}"] == 1
        assert samples[f'iotfleet_broker_compliant{{broker="{B1}",fleet="plant"}}'] == 0
        assert samples[f'iotfleet_broker_compliant{{broker="{B2}",fleet="plant"}}'] == 1
        cert = f'broker="{B2}",certificate="broker certificate",fleet="plant",kind="certificate"'
        assert (
            samples[f"iotfleet_certificate_expiry_seconds{{{cert}}}"]
            == (broken.expiries[3].at - broken.started).total_seconds()
        )
        crl = f'iotfleet_crl_next_update_timestamp_seconds{{broker="{B1}",fleet="plant"}}'
        assert samples[crl] == broken.expiries[2].at.timestamp()
        assert samples['iotfleet_check_last_run_timestamp_seconds{fleet="plant"}'] == (
            broken.started.timestamp()
        )
        assert samples['iotfleet_check_last_run_duration_seconds{fleet="plant"}'] == 10.5
        assert samples['iotfleet_check_last_run_success{fleet="plant"}'] == 0
        # The next run replaces the file whole; the next scrape sees only it.
        write_textfile(metrics, run(2))
        again = scrape(url)
        assert again['iotfleet_check_last_run_success{fleet="plant"}'] == 1
        assert again[f'iotfleet_broker_compliant{{broker="{B1}",fleet="plant"}}'] == 1
