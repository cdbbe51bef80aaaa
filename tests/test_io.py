"""File helpers: atomic writes that colleagues can read."""


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    """Results on a shared cluster must be readable by colleagues (umask 022 -> 0644)."""
    from phasedsft.io import atomic_write_json, current_umask

    atomic_write_json(tmp_path / "summary.json", {"a": 1})
    mode = (tmp_path / "summary.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~current_umask()
    assert mode & 0o044 == 0o044 or current_umask() & 0o044, oct(mode)
