"""`udg-fast data prepare|info|list`."""
from __future__ import annotations

from udg_fast.cli import main


def test_prepare_then_info(capsys):
    rc = main(["data", "prepare", "synthetic", "--max-len", "5", "-o", "n_users=30", "-o", "samples_per_user=11",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("users", "items", "positive rate", "mean history length", "train", "valid", "test", "prepared"):
        assert word in out, word
    assert "  users                30" in out
    rc = main(["data", "info", "synthetic", "--max-len", "5", "-o", "n_users=30", "-o", "samples_per_user=11"])
    out2 = capsys.readouterr().out
    assert rc == 0 and "  users                30" in out2 and "options" in out2
    rc = main(["data", "prepare", "synthetic", "--max-len", "5", "-o", "n_users=30", "-o", "samples_per_user=11"])
    assert rc == 0 and "read from cache" in capsys.readouterr().out


def test_prepare_by_path_and_info(tmp_path, raw, capsys):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    assert main(["data", "prepare", "ml-100k", "--path", str(p), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["data", "info", "ml-100k", "--path", str(p)]) == 0
    assert "interactions" in capsys.readouterr().out
    assert main(["data", "info", "ml-100k"]) == 0  # lists the cached entries


def test_errors_exit_nonzero(tmp_path, capsys):
    assert main(["data", "prepare", "ml-3m"]) == 2
    assert "unknown dataset 'ml-3m'" in capsys.readouterr().err
    assert main(["data", "prepare", "synthetic", "-o", "wat=1"]) == 2
    assert "unknown option 'wat'" in capsys.readouterr().err
    assert main(["data", "info", "ml-1m"]) == 1
    assert "nothing cached" in capsys.readouterr().err
    assert main(["data", "prepare", "ml-1m", "--path", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    try:  # a usage error: status 2, as argparse's own
        main(["data", "prepare", "synthetic", "-o", "n_users"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("-o without '=' was accepted")
    assert "option 'n_users' is not KEY=VALUE" in capsys.readouterr().err


def test_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ml-100k", "ml-1m", "ml-20m", "ml-latest", "amazon-electronics", "alimama", "synthetic"):
        assert name in out
