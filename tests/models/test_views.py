import numpy as np
import pytest

from models.views import combine_views


def test_one_view_is_itself() -> None:
    p = np.array([[0.2, 0.8]])
    np.testing.assert_allclose(combine_views(p), [0.2, 0.8])


def test_views_combine_as_a_normalised_geometric_mean() -> None:
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    g = np.exp(np.log(p).mean(axis=0))
    np.testing.assert_allclose(combine_views(p), g / g.sum())
    assert combine_views(p).sum() == pytest.approx(1.0)


def test_agreeing_views_are_not_made_more_confident_by_their_number() -> None:
    p = np.tile([[0.7, 0.3]], (20, 1))
    np.testing.assert_allclose(combine_views(p), [0.7, 0.3])


def test_a_view_that_excludes_a_class_wins_over_hesitant_ones() -> None:
    p = np.array([[0.55, 0.45]] * 3 + [[1e-9, 1.0]])
    combined = combine_views(p)
    assert combined.argmax() == 1
    assert np.isfinite(combined).all()


@pytest.mark.parametrize("shape", [(0, 2), (3,), (2, 0)])
def test_no_views_is_an_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="n_views, n_classes"):
        combine_views(np.zeros(shape))
