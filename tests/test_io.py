"""File helpers: atomic writes that colleagues can read."""


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    """Results on a shared cluster must be readable by colleagues (umask 022 -> 0644)."""
    from phasedsft.io import atomic_write_json, current_umask

    atomic_write_json(tmp_path / "summary.json", {"a": 1})
    mode = (tmp_path / "summary.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~current_umask()
    assert mode & 0o044 == 0o044 or current_umask() & 0o044, oct(mode)


def test_follow_umask_opens_up_files_a_library_wrote_0600(tmp_path):
    from phasedsft.io import current_umask, follow_umask

    (tmp_path / "model").mkdir(mode=0o700)
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(b"x")
    weights.chmod(0o600)
    follow_umask(tmp_path / "model")
    assert weights.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_large_json_hashes_the_same_bytes_as_the_whole_text():
    """sha256_json_large (a manifest's hash, fed in pieces) is sha256_json, on every shape."""
    import random

    from phasedsft.io import canonical_json, canonical_pieces, sha256_json, sha256_json_large

    rng = random.Random(0)
    ids = [f'id-{i}-é"\\n' for i in range(2500)]
    objects = [
        {"stages": [ids[:1000], ids[1000:], []], "thresholds": [1.5, 3.5], "n": None},
        {"b": {"z": [1, 2.5, True, None, "x"], "a": []}, "a": [[1], [2, [3, {"k": "v"}]]]},
        [rng.random() for _ in range(3000)],
        [],
        [7],
        {1: "int keys fall back to the whole text", 2: [1, 2]},
        ("a", "tuple", ["of", "lists"]),
        "ünïcode",
        float("nan"),
    ]
    for obj in objects:
        assert "".join(canonical_pieces(obj, chunk=7)) == canonical_json(obj)
        assert sha256_json_large(obj) == sha256_json(obj)
    # a manifest of one stage is still fed in pieces, never as one text
    assert len(list(canonical_pieces({"stages": [ids]}, chunk=100))) > 25
