"""Uploads and temporary folders (webapp.uploads), without a server."""

import os
import time

from webapp import uploads


def test_prune_old_removes_only_old_folders(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert uploads.prune_old(tmp_path, 600) == 1
    assert not old.exists() and new.exists()
    assert uploads.prune_old(tmp_path / "missing", 600) == 0


def test_discard_upload_deletes_only_inside_the_upload_folder(tmp_path):
    root = tmp_path / "uploads"
    upload = root / "abc123" / "scan.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"x")
    kept = tmp_path / "examples" / "scan.png"
    kept.parent.mkdir()
    kept.write_bytes(b"x")
    assert uploads.discard_upload(kept, root) is False and kept.exists()
    assert uploads.discard_upload(root / ".." / "examples" / "scan.png", root) is False
    assert kept.exists()
    assert uploads.discard_upload(None, root) is False
    assert uploads.discard_upload(upload, root) is True
    assert not upload.exists() and not upload.parent.exists() and root.is_dir()


def test_fresh_output_dir_is_new_each_time_and_prunes_old_ones(tmp_path):
    root = tmp_path / "out"
    first, second = uploads.fresh_output_dir(root, 600), uploads.fresh_output_dir(root, 600)
    assert first != second and first.parent == second.parent == root
    assert first.is_dir() and list(first.iterdir()) == []
    past = time.time() - 3600
    os.utime(first, (past, past))
    uploads.fresh_output_dir(root, 600)
    assert not first.exists() and second.exists()
