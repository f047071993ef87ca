"""The proof commands' bad input (exit 2, located, nothing written) and the safety trade-off figure."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from evals.pipelines.cli import continual_proof, safety_curve


def _fails(command, args: list[str], *expected: str) -> None:
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2, result.output
    assert all(text in result.output for text in expected), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("weights, problem", [("0.1,0.2", "starting at 0"), ("0,0.2,0.1", "distinct increasing"),
                                              ("0,a", "give numbers")])
def test_safety_curve_weights(tmp_path, weights, problem):
    _fails(safety_curve, [str(tmp_path / "out"), "--zoo", str(tmp_path), "--weights", weights,
                          "--db", str(tmp_path / "db")], "--weights", problem)
    assert not (tmp_path / "out").exists() and not (tmp_path / "db").exists()


@pytest.mark.parametrize("command", [continual_proof, safety_curve])
def test_a_folder_that_is_no_zoo(tmp_path, command):
    (tmp_path / "zoo").mkdir()
    _fails(command, [str(tmp_path / "out"), "--zoo", str(tmp_path / "zoo"), "--db", str(tmp_path / "db")],
           f"zoo {tmp_path / 'zoo'}: base/config.json is missing", "surgery world DIR")
    assert not (tmp_path / "out").exists() and not (tmp_path / "db").exists()


def test_tradeoff_figure(tmp_path):
    from evals.report.plots import save_png, tradeoff_figure

    weights = [0, 0.1, 0.4]
    series = {"refusal": [0.1, 0.6, 0.9], "over_refusal": [0.0, 0.1, 0.4], "tax": [0.0, 0.02, 0.05]}
    figure = tradeoff_figure(weights, series, "refusal", "over_refusal", "tax")
    labels = [t.get_text() for t in figure.axes[1].texts]
    assert labels == ["w=0", "w=0.1", "w=0.4"]  # one labelled point per weight on the trade-off panel
    path = save_png(figure, str(tmp_path / "curve.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_proof_commands_defaults_are_the_proofs_settings():
    """`surgery continual-proof` with no option runs the proof the slow test checks (Settings())."""
    from evals.pipelines.continual_proof import Settings

    given = {p.name: p.default for p in continual_proof.params}
    s = Settings()
    assert (given["steps"], given["lr"], given["lam"], given["buffer"], given["mix"]) == \
        (s.steps, s.lr, s.lam, s.buffer, s.mix)
    assert not next(p for p in continual_proof.params if p.name == "zoo").required  # the demo's base by default
