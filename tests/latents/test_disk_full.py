"""A full disk anywhere a command writes is one line; the reproduction's figure copies are atomic."""

from __future__ import annotations

import errno
import shutil

import pandas as pd
import pytest

from llmlatent import cli
from llmlatent.experiments import reproduce


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_outside_result_folders_is_one_line(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model", lambda args: tiny_models["llama"])
    out = tmp_path / "top.csv"

    def full(self, path, *args, **kwargs):
        with open(path, "w") as fh:
            fh.write("layer,rank")  # half a file, then the disk is full
        raise enospc(path)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert cli.main(["lens", "Bonjour", "-k", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no space left on the device while writing ") and len(err) == 1
    assert err[-1].endswith("free some space there (df -h) and rerun the same command")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the CSV nor its temporary file


def test_other_os_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "load_model", lambda args: (_ for _ in ()).throw(PermissionError(errno.EACCES, "no")))
    with pytest.raises(PermissionError):
        cli.main(["lens", "Bonjour"])


def test_reproduce_copies_figures_atomically(tmp_path, monkeypatch):
    results, figures = tmp_path / "results", tmp_path / "figures"
    for run_dir in reproduce.FEATURED:
        (results / run_dir).mkdir(parents=True)
        for name in ("probabilities.png", "energy.png"):
            (results / run_dir / name).write_bytes(b"\x89PNG" + b"x" * 1000)
    figures.mkdir()
    real, calls = shutil.copyfile, []

    def killed(source, target, **kwargs):
        calls.append(target)
        if len(calls) == 3:  # the third copy dies half-way
            with open(target, "wb") as fh:
                fh.write(b"\x89PNG")
            raise enospc(target)
        return real(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", killed)
    with pytest.raises(OSError):
        reproduce.copy_figures(results, figures)
    written = sorted(figures.iterdir())
    assert len(written) == 2 and all(p.read_bytes() == b"\x89PNG" + b"x" * 1000 for p in written)  # whole or absent
    monkeypatch.undo()
    reproduce.copy_figures(results, figures)
    assert len(list(figures.iterdir())) == 2 * len(reproduce.FEATURED)
