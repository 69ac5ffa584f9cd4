import os
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from hesslib.cache import CacheWriteError, atomic_write, cached, load_torch, remove_stale_temporaries, save_torch

AS_ROOT = os.geteuid() == 0


def _one_line(error):
    message = str(error)
    assert "\n" not in message
    return message


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


@pytest.mark.skipif(AS_ROOT, reason="root ignores permissions (the regular-file parent case below runs instead)")
def test_read_only_parent_gives_cache_write_error(read_only_dir):
    folder = read_only_dir / "cache"
    with pytest.raises(CacheWriteError) as info:
        save_torch(folder / "x.pt", {"a": 1})
    message = _one_line(info.value)
    assert f"cache folder {folder}/ (Permission denied" in message
    assert "make it writable or pass cache_dir=None" in message and "-p cache_dir <writable folder>" in message
    assert isinstance(info.value, OSError) and info.value.errno == 13


@pytest.mark.skipif(AS_ROOT, reason="root ignores permissions")
def test_read_only_existing_folder_gives_cache_write_error(read_only_dir):
    with pytest.raises(CacheWriteError, match=f"cache folder {read_only_dir}/ \\(Permission denied\\)"):
        atomic_write(read_only_dir / "x.pt", lambda tmp: tmp.write_bytes(b"x"))


def test_unwritable_folder_gives_cache_write_error(tmp_path, request):
    """Runs as any user: a folder below a regular file cannot be created, not even by root."""
    if AS_ROOT:
        (tmp_path / "a-file").write_text("not a folder")
        folder = tmp_path / "a-file" / "cache"
    else:
        folder = request.getfixturevalue("read_only_dir") / "cache"
    calls = []
    with pytest.raises(CacheWriteError) as info:
        cached("train", {"seed": 0}, lambda: calls.append(1) or 42, cache_dir=folder)
    message = _one_line(info.value)
    assert message.startswith(f"cannot write to the cache folder {folder}/ (")
    assert message.endswith("make it writable or pass cache_dir=None (no cache) / `-p cache_dir <writable folder>`")
    assert isinstance(info.value, OSError) and info.value.errno is not None
    assert isinstance(info.value.__cause__, OSError)  # the original error is chained, not swallowed


def test_failing_folder_above_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "a" / "b" / "cache"

    def mkdir(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "a"))

    monkeypatch.setattr(type(folder), "mkdir", mkdir)
    with pytest.raises(CacheWriteError, match=f"cache folder {folder}/ \\(Permission denied: {tmp_path / 'a'}\\);"):
        save_torch(folder / "x.pt", 1)


def test_cache_folder_that_is_a_file(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(CacheWriteError, match=r"cache folder .*cache/ \(it is a file, not a folder\)"):
        save_torch(tmp_path / "cache" / "x.pt", 1)


def test_mkstemp_failure_gives_cache_write_error(tmp_path, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.pt.abcdefgh.tmp"))  # as os.open says

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(CacheWriteError, match=f"cache folder {tmp_path}/ \\(Permission denied\\)"):
        save_torch(tmp_path / "x.pt", 1)


def test_errors_inside_write_are_not_wrapped(tmp_path):
    def write(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as info:
        atomic_write(tmp_path / "x.pt", write)
    assert not isinstance(info.value, CacheWriteError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_interrupted_write_leaves_nothing_and_keeps_old_entry(tmp_path, interrupt):
    path = tmp_path / "train-0123456789abcdef.pt"

    def write(tmp):
        tmp.write_bytes(b"half of a file")
        raise interrupt

    with pytest.raises(interrupt):
        atomic_write(path, write)
    assert list(tmp_path.iterdir()) == []
    save_torch(path, {"old": 1})
    with pytest.raises(interrupt):
        atomic_write(path, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name] and load_torch(path) == {"old": 1}


def test_killed_write_leaves_a_temporary_that_remove_stale_temporaries_removes(tmp_path):
    path = tmp_path / "eigen-0123456789abcdef.pt"
    save_torch(path, {"kept": True})
    script = ("import os, sys\nfrom pathlib import Path\nfrom hesslib.cache import atomic_write\n"
              "def write(tmp):\n    tmp.write_bytes(b'partial')\n    os._exit(9)\n"
              "atomic_write(Path(sys.argv[1]), write)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=300)
    assert result.returncode == 9, result.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{path.name}.") and leftovers[0].endswith(".tmp")
    assert load_torch(path) == {"kept": True}  # the kill never reached the final path
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_remove_stale_temporaries_removes_only_matching_files(tmp_path):
    stale = [".train-0123456789abcdef.pt.k2j_3h4g.tmp", ".mnist5k.npz.abcdefgh.tmp", ".x.00000000.tmp"]
    kept = ["train-0123456789abcdef.pt", "mnist5k.npz", "notes.tmp", ".hidden", ".x.tmp", ".x.abc.tmp",
            ".x.ABCDEFGH.tmp", ".x.abcdefgh.tmp.bak", ".x.abcdefghi.tmp", "x.abcdefgh.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()  # a folder, even with a matching name, is left alone
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / ".y.abcdefgh.tmp").write_bytes(b"x")  # subfolders are not searched
    assert remove_stale_temporaries(tmp_path) == len(stale)
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == sorted(kept + [".dir.abcdefgh.tmp", "sub"])
    assert (sub / ".y.abcdefgh.tmp").exists()
    assert remove_stale_temporaries(tmp_path) == 0
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_remove_stale_temporaries_matches_atomic_write_names(tmp_path):
    names = []
    atomic_write(tmp_path / "losses-0123456789abcdef.pt", lambda tmp: names.append(tmp.name) or tmp.write_bytes(b"x"))
    (tmp_path / names[0]).write_bytes(b"left by a kill")
    assert remove_stale_temporaries(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["losses-0123456789abcdef.pt"]
    assert stat.S_ISREG((tmp_path / "losses-0123456789abcdef.pt").stat().st_mode)


def test_remove_stale_temporaries_min_age_keeps_young_temporaries(tmp_path):
    old, young = tmp_path / ".a.pt.abcdefgh.tmp", tmp_path / ".b.pt.abcdefgh.tmp"
    for path in (old, young):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temporaries(tmp_path, min_age_s=600) == 1
    assert [p.name for p in tmp_path.iterdir()] == [young.name]
    assert remove_stale_temporaries(tmp_path) == 1 and list(tmp_path.iterdir()) == []
