"""The file-system rules of scan routing (``scans/route``): which local refusals may be a
folder of another machine, and which paths lie under another process's advertised roots."""

from __future__ import annotations

from pathlib import Path

from heaper_trio.errors import BadRequest, Forbidden
from heaper_trio.services.scans.route import on_this_machine, queueable, under_a_root


def test_only_absolute_paths_off_this_machine_are_queueable(tmp_path: Path) -> None:
    mine, data = tmp_path / "mine", tmp_path / "data"
    (mine / "here").mkdir(parents=True)
    data.mkdir()
    roots = [mine]
    outside = Forbidden("x", code="scan_path_forbidden")
    assert on_this_machine(str(mine / "here"), roots, str(data))
    assert not on_this_machine(str(mine / "gone"), roots, str(data))
    assert queueable("/srv/other/photos", outside, roots, str(data))
    assert queueable(str(mine / "gone"), BadRequest("x", code="not_a_directory"), roots, str(data))
    assert queueable("/srv/x", Forbidden("x", code="scanning_disabled"), [], str(data))
    # a folder here that the user may not scan is refused here, never sent elsewhere
    assert not queueable(str(mine / "here"), outside, roots, str(data))
    for path in ("relative/photos", "/srv/a/../b", "", "/srv/\x00", "/" + "a" * 5000):
        assert not queueable(path, outside, roots, str(data)), path
    assert not queueable("/srv/x", BadRequest("x", code="invalid_field"), roots, str(data))


def test_under_a_root_compares_whole_components() -> None:
    roots = ["/srv/photos", "relative"]
    assert under_a_root("/srv/photos", roots)
    assert under_a_root("/srv/photos/2024/./x", roots)
    assert not under_a_root("/srv/photos-old", roots)
    assert not under_a_root("/srv", roots)
    assert not under_a_root("relative/x", roots)  # only absolute roots count
    assert not under_a_root("/srv/photos", [])
