"""Where digits keeps its files when no one says otherwise: the platform's cache
folder (platformdirs), which honours $XDG_CACHE_HOME on Linux for the datasets
and the parsed-array caches alike; and the environment variables that override it.
"""

from pathlib import Path

import platformdirs
import pytest

from digits import data, handwriting

OVERRIDES = ("DIGITS_DATA_DIR", "DIGITS_CACHE_DIR", "DIGITS_HANDWRITING_DB")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of its own, with no override and no XDG_CACHE_HOME set."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for name in (*OVERRIDES, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return folder


def test_by_default_data_and_caches_are_in_the_users_cache_folder(home):
    assert data.cache_dir() == home / ".cache" / "digits"
    assert data.data_dir() == home / ".cache" / "digits"
    assert data.npy_cache_dir() == home / ".cache" / "digits" / "npy"
    assert data.cache_dir() == platformdirs.user_cache_path("digits", appauthor=False)


def test_xdg_cache_home_moves_the_data_and_the_caches_together(
    home, tmp_path, monkeypatch
):
    # Before platformdirs, data_dir() ignored XDG_CACHE_HOME while npy_cache_dir()
    # honoured it, so one user's files ended up in two places.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.data_dir() == tmp_path / "xdg" / "digits"
    assert data.npy_cache_dir() == tmp_path / "xdg" / "digits" / "npy"


def test_digits_data_dir_overrides_the_data_folder_only(home, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path / "mnist-files"))
    assert data.data_dir() == tmp_path / "mnist-files"
    assert data.npy_cache_dir() == home / ".cache" / "digits" / "npy"


def test_digits_cache_dir_overrides_the_cache_and_the_default_data_folder(
    home, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DIGITS_CACHE_DIR", str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"
    assert data.data_dir() == tmp_path / "mine"
    assert data.npy_cache_dir() == tmp_path / "mine" / "npy"
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path / "data"))
    assert data.data_dir() == tmp_path / "data"


def test_overrides_are_made_absolute_and_expand_the_tilde(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGITS_DATA_DIR", "relative/data")
    monkeypatch.setenv("DIGITS_CACHE_DIR", "~/my-cache")
    assert data.data_dir() == tmp_path / "relative" / "data"
    assert data.cache_dir() == home / "my-cache"


def test_handwriting_falls_back_to_the_cache_folder_when_data_is_read_only(
    home, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path / "data"))
    assert handwriting.default_path() == tmp_path / "data" / handwriting.DB_NAME
    monkeypatch.setattr(data, "_is_writable_dir", lambda folder: False)
    assert (
        handwriting.default_path() == tmp_path / "xdg" / "digits" / "handwriting.sqlite"
    )
