from __future__ import annotations

import numpy as np
import pytest

from acquisition.simulator.phantoms import ALL_LINES, CELL_LINES, render_cell


@pytest.mark.parametrize("line", ALL_LINES)
def test_phantoms_are_deterministic_positive_and_centred(line):
    a = render_cell(line, np.random.default_rng(5), 0.25, size=128)
    b = render_cell(line, np.random.default_rng(5), 0.25, size=128)
    np.testing.assert_array_equal(a.opd_nm, b.opd_nm)
    assert a.opd_nm.dtype == np.float32
    assert a.opd_nm.shape == (128, 128)
    assert a.opd_nm.min() >= 0
    assert a.opd_nm.max() > 20
    c = render_cell(line, np.random.default_rng(6), 0.25, size=128)
    assert not np.array_equal(a.opd_nm, c.opd_nm)


def test_suspended_lines_overlap_in_size_but_differ_on_average():
    rng = np.random.default_rng(0)
    diam = {
        line: [render_cell(line, rng, 0.5).params["diameter_um"] for _ in range(60)]
        for line in CELL_LINES
    }
    for a, b in (("hs895-sk", "hs895-t"), ("sw480", "sw620"), ("mcf7", "mcf10a")):
        # Size alone must not separate a pair: the ranges overlap widely...
        assert min(diam[a]) < np.median(diam[b]) < max(diam[a])
        # ...though the means differ, as the lines do.
        assert np.mean(diam[a]) > np.mean(diam[b])


def test_sperm_has_a_head_and_a_long_thin_tail():
    phantom = render_cell("sperm", np.random.default_rng(3), 0.12)
    opd = phantom.opd_nm
    assert phantom.params["extent_um"] > 25, "the tail reaches well beyond the head"
    head = opd > 0.6 * opd.max()
    area_head = head.sum() * 0.12**2
    assert 2 < area_head < 15  # a few square micrometres
    tail = (opd > 5) & (opd < 0.4 * opd.max())
    assert tail.sum() * 0.12**2 > 5


def test_unknown_line_is_refused():
    with pytest.raises(ValueError, match="unknown cell line 'hela'"):
        render_cell("hela", np.random.default_rng(0), 0.25)


def test_parameter_tables_cite_their_sources():
    for line in CELL_LINES.values():
        rows = dict(line.parameter_table())
        assert "diameter_um" in rows
        assert "delta_n_cytoplasm" in rows
        assert "diameter_um" in line.source
