"""`kiln concurrency`: the limits an admin changes, through the service as the API changes them."""

from __future__ import annotations

from pathlib import Path

from test_cli import kiln

CONFIG = (
    '[server]\nmax_concurrency = 8\n[[backends]]\nname = "zeta"\ntype = "placeholder"\n'
    'concurrency = 2\n[[backends]]\nname = "alpha"\ntype = "placeholder"\n'
    'urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]\n'
)


def _rows(out: str) -> dict[str, list[str]]:
    """The table's rows by backend name: its cells as printed."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] in ("zeta", "alpha"):
            rows[cells[0]] = cells[1:]
    return rows


def test_shown_set_and_reset_globally_and_per_backend(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    shown = kiln(tmp_path, "concurrency")
    assert shown.returncode == 0, shown.stderr
    assert "Global concurrency: 4 (kiln.toml)" in shown.stdout
    assert _rows(shown.stdout) == {
        "zeta": ["2", "2", "1", "2", "2", "backend"],
        "alpha": ["1", "1", "2", "2", "2", "backend"],
    }
    changed = kiln(tmp_path, "concurrency", "1")
    assert "Global concurrency: 1 (set at run time)" in changed.stdout
    assert _rows(changed.stdout)["zeta"][-2:] == ["1", "global"]
    raised = kiln(tmp_path, "concurrency", "--backend", "alpha", "3")
    assert _rows(raised.stdout)["alpha"] == ["3 *", "1", "2", "6", "1", "global"]
    back = kiln(tmp_path, "concurrency", "--backend", "alpha", "--reset")
    assert _rows(back.stdout)["alpha"][0] == "1"
    again = kiln(tmp_path, "concurrency", "--reset")
    assert "Global concurrency: 4 (kiln.toml)" in again.stdout


def test_bad_values_and_unknown_backends_are_refused_plainly(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    for args, says in [
        (("9",), "concurrency must be between 1 and 8 ([server] max_concurrency)"),
        (("0",), "concurrency must be between 1 and 8"),
        (("--backend", "zeta", "257"), "a backend's concurrency must be between 1 and 256"),
        (("--backend", "nope", "2"), "no backend 'nope'; configured: alpha, zeta"),
        (("3", "--reset"), "give a value or --reset, not both"),
    ]:
        refused = kiln(tmp_path, "concurrency", *args)
        assert refused.returncode == 2, args
        assert says in " ".join(refused.stderr.split()) and "Traceback" not in refused.stderr
    assert "Global concurrency: 4 (kiln.toml)" in kiln(tmp_path, "concurrency").stdout
