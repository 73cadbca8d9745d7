"""The one store opener (kproxy/store/open.py): the daemon's roles create the SQLite file; the
CLI reads a lab from outside and never creates an empty store that would look like a lab's."""
from pathlib import Path

from kproxy.config import LabConfig
from kproxy.store.open import open_store
from kproxy.store.sqlite import SqliteStore


def test_the_cli_finds_no_store_where_none_was_written(tmp_path):
    cfg = LabConfig(state_dir=str(tmp_path))
    assert open_store(cfg, client=True) is None
    assert not (Path(tmp_path) / "store.db").exists()


def test_the_daemon_creates_the_store_and_the_cli_then_reads_it(tmp_path):
    cfg = LabConfig(state_dir=str(tmp_path))
    daemon_side = open_store(cfg)
    assert isinstance(daemon_side, SqliteStore)
    with daemon_side.transaction() as t:
        t.put("/kproxy/y", {"b": 2})
    cli_side = open_store(cfg, client=True)
    assert isinstance(cli_side, SqliteStore) and cli_side.get("/kproxy/y") == {"b": 2}
