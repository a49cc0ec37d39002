import pytest

from xrayvision.images import (
    DatabaseStore,
    FilesystemStore,
    InvalidUID,
    make_store,
    validate_uid,
)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "2.25.123456789",
                                 "1.02", "999.999.01.23.45.6789"])  # leading zeros: tolerated
def test_valid_uids(uid):
    assert validate_uid(uid) == uid


@pytest.mark.parametrize("uid", [
    "", "../etc/passwd", "1.2/../../x", "1..2", ".1", "1.", "1.2\x00", "a.b",
    "1." + "2" * 63, "/abs/1.2", "1.2 ", "１.２",
])
def test_invalid_uids_are_refused(uid):
    with pytest.raises(InvalidUID):
        validate_uid(uid)


@pytest.fixture(params=["filesystem", "database-sqlite", "database-postgresql"])
def store(request, tmp_path):
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "images")
    fixture = "sqlite_db" if request.param.endswith("sqlite") else "pg_db"
    return DatabaseStore(request.getfixturevalue(fixture))


def test_put_get_replace_delete(store):
    assert store.get("1.2.3", "png") is None and not store.exists("1.2.3", "png")
    store.put("1.2.3", "png", b"\x89PNG first")
    store.put("1.2.3", "dcm", b"DICM")
    assert store.get("1.2.3", "png") == b"\x89PNG first"
    store.put("1.2.3", "png", b"\x89PNG second")
    assert store.get("1.2.3", "png") == b"\x89PNG second"
    assert store.exists("1.2.3", "dcm")
    assert store.delete("1.2.3", "png") is True
    assert store.delete("1.2.3", "png") is False
    assert store.get("1.2.3", "png") is None and store.get("1.2.3", "dcm") == b"DICM"


def test_bad_uid_and_kind_never_touch_storage(store, tmp_path):
    with pytest.raises(InvalidUID):
        store.put("../../escape", "png", b"x")
    with pytest.raises(InvalidUID):
        store.get("1.2/../../x", "png")
    with pytest.raises(ValueError, match="unknown image kind"):
        store.put("1.2", "exe", b"x")
    assert not any(p.name == "escape.png" for p in tmp_path.rglob("*"))


def test_filesystem_layout_and_atomic_write(tmp_path):
    store = FilesystemStore(tmp_path)
    store.put("1.2.3", "png", b"data")
    path = store.path("1.2.3", "png")
    assert path.parent.parent == tmp_path / "png" and path.name == "1.2.3.png"
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert not list(path.parent.glob(".tmp-*")), "no temporary file left behind"


def test_make_store(tmp_path, sqlite_db):
    assert isinstance(make_store("filesystem", tmp_path, sqlite_db), FilesystemStore)
    assert isinstance(make_store("database", tmp_path, sqlite_db), DatabaseStore)


def test_put_new_stores_only_when_absent_and_keeps_the_first(store, tmp_path):
    assert store.age("1.2.3", "dcm") is None
    assert store.put_new("1.2.3", "dcm", b"first") is True
    assert store.put_new("1.2.3", "dcm", b"second") is False
    assert store.get("1.2.3", "dcm") == b"first"
    assert 0.0 <= store.age("1.2.3", "dcm") < 60
    src = tmp_path / "incoming.dcm"
    src.write_bytes(b"third")
    assert store.put_file_new("1.2.3", "dcm", src) is False
    assert src.read_bytes() == b"third"  # not stored: left for the caller
    assert store.put_file_new("1.2.4", "dcm", src) is True
    assert not src.exists() and store.get("1.2.4", "dcm") == b"third"


def test_put_new_from_two_threads_at_once_stores_one(store):
    import threading

    barrier = threading.Barrier(8)
    results = []

    def put(i: int) -> None:
        barrier.wait()
        results.append((store.put_new("1.9", "dcm", f"copy {i}".encode()), i))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for stored, i in results if stored]
    assert len(winners) == 1
    assert store.get("1.9", "dcm") == f"copy {winners[0]}".encode()
