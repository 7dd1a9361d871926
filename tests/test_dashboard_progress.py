"""``autoresearchd progress`` draws what the dashboard's chart does: labels, floor, provisional."""

from __future__ import annotations

from pathlib import Path

from autoresearchd.models import Result, Status
from autoresearchd.plot import counts_title, draw_progress, plot_progress, prepared_floor
from tests.memory.conformance import make_result

PNG = b"\x89PNG\r\n\x1a\n"


def history() -> list[Result]:
    """Two keeps with descriptions, a provisional discard, a discard and a crash."""
    spec = [
        (Status.KEEP, 1.0, False, "MATRIX_LR 0.04 → 0.05"),
        (Status.DISCARD, 0.95, True, "DEPTH 8 → 9"),
        (Status.DISCARD, 1.1, False, "DEPTH 8 → 7"),
        (Status.CRASH, None, False, "DEPTH 8 → 40"),
        (Status.KEEP, 0.9, False, "WARMUP 0.1 → 0.2"),
    ]
    return [
        make_result(
            status=status,
            val_bpb=bpb,
            provisional=provisional,
            description=text,
            completed_at=1_767_225_600.0 + 60 * t,
        )
        for t, (status, bpb, provisional, text) in enumerate(spec)
    ]


def test_the_title_counts_experiments_and_keeps() -> None:
    assert counts_title("autoresearchd: synthetic", history()) == (
        "autoresearchd: synthetic: 5 experiments, 2 kept"
    )


def test_keeps_are_labelled_and_provisional_runs_and_the_floor_are_drawn() -> None:
    import matplotlib.pyplot as plt

    fig = draw_progress(history(), title="t", floor=0.8)
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "t: 5 experiments, 2 kept"
        assert [t.get_text() for t in ax.texts] == ["MATRIX_LR 0.04 → 0.05", "WARMUP 0.1 → 0.2"]
        floors = [line for line in ax.get_lines() if line.get_label() == "floor"]
        assert len(floors) == 1 and list(floors[0].get_ydata()) == [0.8, 0.8]
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "provisional" in legend and "floor" in legend
        (waiting,) = [c for c in ax.collections if c.get_label() == "provisional"]
        assert waiting.get_offsets().shape == (1, 2)  # one mark, on the provisional run
        assert waiting.get_offsets()[0][1] == 0.95
    finally:
        plt.close(fig)


def test_without_a_floor_no_floor_line_is_drawn(tmp_path: Path) -> None:
    out = tmp_path / "progress.png"
    assert plot_progress(history(), out, title="t") == 4
    assert out.read_bytes().startswith(PNG)
    import matplotlib.pyplot as plt

    fig = draw_progress(history(), title="t")
    try:
        assert [line for line in fig.axes[0].get_lines() if line.get_label() == "floor"] == []
    finally:
        plt.close(fig)


def test_the_floor_comes_from_the_prepared_track(tmp_path: Path) -> None:
    from autoresearchd.tracks import prepare_track

    prepared = prepare_track("synthetic", tmp_path)
    assert prepared.entropy_floor_bpb is not None
    assert prepared_floor(tmp_path, "synthetic") == prepared.entropy_floor_bpb
    assert prepared_floor(tmp_path / "nothing", "synthetic") is None
    assert prepared_floor(tmp_path, "no-such-track") is None
