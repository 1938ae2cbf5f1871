"""Atomic writes: no partial target ever, and no leftovers that nothing cleans."""
import os
import subprocess
import sys
import time

import pytest

from ecmt.atomic import STALE_SECONDS, atomic_path, host_tag, write_text
from ecmt.errors import EcmtError

WRITER = """
import sys, time
from ecmt.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def start_writer(target):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_killed_writers_part_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "report.json"
    killed, killed_part = start_writer(target)
    killed.kill()
    killed.wait()
    assert os.path.exists(killed_part) and not target.exists()
    assert os.path.basename(killed_part).startswith(f".report.json.{host_tag()}-{killed.pid}.")
    other = tmp_path / f".other.json.{host_tag()}-{killed.pid}.abcdefgh.part"     # another target's
    other.write_text("x")
    write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not os.path.exists(killed_part) and other.exists()


def test_a_live_writers_part_file_is_kept(tmp_path):
    target = tmp_path / "report.json"
    live, live_part = start_writer(target)
    try:
        write_text(target, "{}\n")
        assert os.path.exists(live_part)
    finally:
        live.kill()
        live.wait()


def test_another_hosts_part_file_is_removed_once_stale(tmp_path):
    target = tmp_path / "g.ecmt"
    old = tmp_path / ".g.ecmt.elsewhere-12.abcdefgh.part"
    fresh = tmp_path / ".g.ecmt.elsewhere-13.abcdefgh.part"
    for p in (old, fresh):
        p.write_text("x")
    past = time.time() - STALE_SECONDS - 60
    os.utime(old, (past, past))
    write_text(target, "graph")
    assert not old.exists() and fresh.exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_destination_is_refused(tmp_path):
    target = tmp_path / "ro.json"
    target.write_text("keep")
    target.chmod(0o444)
    with pytest.raises(EcmtError, match="is read-only"):
        write_text(target, "new")
    assert target.read_text() == "keep"
