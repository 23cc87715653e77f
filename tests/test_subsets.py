import pytest

from bench.datasets.subsets import (
    labelled_indices,
    subset_file,
    subset_size,
    write_subset,
)


def test_sizes_are_ceil_and_robust_to_rounding():
    assert subset_size(13824, 0.01) == 139  # ceil(138.24)
    assert subset_size(100, 0.07) == 7  # 0.07 * 100 = 7.000000000000001 in floating point
    assert subset_size(1024, 0.01) == 11
    assert subset_size(5, 1.0) == 5
    assert subset_size(10, 0.001) == 1
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            subset_size(10, bad)


def test_subsets_are_nested_seeded_and_distinct():
    n = 1000
    one, ten, full = (labelled_indices(n, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert ten[: len(one)] == one and full[: len(ten)] == ten
    assert sorted(full) == list(range(n))
    assert labelled_indices(n, 0.1, seed=3) == ten
    assert labelled_indices(n, 0.1, seed=4) != ten
    assert len(set(ten)) == len(ten) == 100


def test_written_once_and_checked(tmp_path):
    path = write_subset(tmp_path, ["a", "b"], 0.01, 0)
    assert path == subset_file(tmp_path, 0.01, 0)
    assert path.read_text() == "a\nb\n"
    write_subset(tmp_path, ["a", "b"], 0.01, 0)  # same content: fine
    with pytest.raises(RuntimeError, match="other patches"):
        write_subset(tmp_path, ["a", "c"], 0.01, 0)
