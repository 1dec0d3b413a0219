"""The frozen smoke script's Windows choices (the .exe suffix, the minimal environment), checked here;
the script itself runs on Windows in .github/workflows/windows.yml."""

from __future__ import annotations

from pathlib import Path

from .frozen_smoke import minimal_env, resolve_exe


def test_the_exe_suffix_is_added_on_windows_only(tmp_path: Path) -> None:
    bundle = tmp_path / "dist" / "vibevoice-rpc"
    bundle.mkdir(parents=True)
    (bundle / "vibevoice-rpc.exe").write_bytes(b"MZ")
    plain = str(bundle / "vibevoice-rpc")
    assert resolve_exe(plain, windows=True) == bundle / "vibevoice-rpc.exe"
    assert resolve_exe(plain + ".exe", windows=True) == bundle / "vibevoice-rpc.exe"
    assert resolve_exe(plain, windows=False) == bundle / "vibevoice-rpc"


def test_the_windows_minimal_environment_has_the_profile_folders(tmp_path: Path) -> None:
    env = minimal_env(tmp_path, windows=True, VIBEVOICE_PRECISION="fp32")
    home = tmp_path / "home"
    assert env["USERPROFILE"] == str(home) and env["USERNAME"]
    assert env["APPDATA"] == str(home / "AppData" / "Roaming")
    assert env["LOCALAPPDATA"] == str(home / "AppData" / "Local")
    assert Path(env["APPDATA"]).is_dir() and Path(env["LOCALAPPDATA"]).is_dir()
    assert env["TEMP"] == env["TMP"] == env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["SYSTEMROOT"] and env["VIBEVOICE_PRECISION"] == "fp32"
    assert not any(k.startswith("PYTHON") for k in env)


def test_the_posix_minimal_environment_is_unchanged(tmp_path: Path) -> None:
    env = minimal_env(tmp_path, windows=False)
    assert env["PATH"] == "/usr/bin:/bin" and "LOCALAPPDATA" not in env
