import numpy as np
import pytest
from sklearn.base import clone

from contracts import check_same_seed_same_result, raises_naming, watch

from backdoorlearn import BackdoorPoisoner, Trigger


@pytest.fixture
def data(rng):
    X = rng.random((200, 1, 8, 8), dtype=np.float32)
    y = np.arange(200) % 10
    return X, y


def test_poisons_the_requested_rate_and_never_the_input(data):
    X, y = data
    t = Trigger.patch((1, 8, 8), size=2)
    p = BackdoorPoisoner(t, target_label=3, poison_rate=0.1, random_state=0)
    with watch(X, y) as w:
        Xp, yp = p.fit_resample(X, y)
    w.assert_unchanged()
    assert p.n_poisoned_ == 20 and p.poison_mask_.sum() == 20
    assert np.all(yp[p.poison_mask_] == 3)
    assert np.all(y[p.poison_mask_] != 3)  # rows of the target class are not eligible
    assert np.array_equal(Xp[p.poison_mask_], t.apply(X[p.poison_mask_]))
    assert np.array_equal(Xp[~p.poison_mask_], X[~p.poison_mask_])


def test_same_seed_same_rows(data):
    X, y = data
    t = Trigger.patch((1, 8, 8), size=2)
    check_same_seed_same_result(BackdoorPoisoner(t, poison_rate=0.2, random_state=7),
                                lambda est: (est, est.fit_resample(X, y))[0],
                                lambda est: (est.poison_mask_, est.poison_source_))


def test_source_specific(data):
    X, y = data
    p = BackdoorPoisoner(Trigger.patch((1, 8, 8), size=2), target_label=0, poison_rate=0.05,
                         source_labels=[4, 5], random_state=0)
    p.fit_resample(X, y)
    assert set(np.unique(y[p.poison_mask_])) <= {4, 5}


def test_multi_trigger_multi_target(data):
    X, y = data
    t1 = Trigger.patch((1, 8, 8), size=2, location="top-left")
    t2 = Trigger.patch((1, 8, 8), size=2, location="bottom-right")
    p = BackdoorPoisoner([t1, t2], target_label=[1, 7], poison_rate=0.1, random_state=0)
    _, yp = p.fit_resample(X, y)
    assert np.sum(p.poison_source_ == 0) == 10 and np.sum(p.poison_source_ == 1) == 10
    assert np.all(yp[p.poison_source_ == 0] == 1) and np.all(yp[p.poison_source_ == 1] == 7)


def test_too_few_eligible_rows_warns(data):
    X, y = data
    p = BackdoorPoisoner(Trigger.patch((1, 8, 8), size=2), target_label=0, poison_rate=0.5,
                         source_labels=[1], random_state=0)
    with pytest.warns(UserWarning, match="eligible"):
        p.fit_resample(X, y)
    assert p.n_poisoned_ == 20


def test_clone_and_params():
    p = BackdoorPoisoner(Trigger.patch((1, 8, 8)), target_label=2, poison_rate=0.3)
    assert clone(p).get_params()["poison_rate"] == 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(poison_rate=0.0), "poison_rate"),
        (dict(poison_rate=1.5), "poison_rate"),
        (dict(target_label=10), "target_label"),
        (dict(target_label=[1, 2]), "pair up"),
        (dict(source_labels=[12]), "source_labels"),
    ],
)
def test_bad_parameters(data, kwargs, match):
    X, y = data
    with raises_naming(next(iter(kwargs)), match=match):
        BackdoorPoisoner(Trigger.patch((1, 8, 8)), **kwargs).fit_resample(X, y)


def test_bad_data(data):
    X, y = data
    p = BackdoorPoisoner(Trigger.patch((1, 8, 8)))
    with pytest.raises(ValueError, match="one label per sample"):
        p.fit_resample(X, y[:-1])
    with pytest.raises(ValueError, match="images of shape"):
        p.fit_resample(X.reshape(200, 64), y)
    with pytest.raises(ValueError, match="channel"):
        BackdoorPoisoner(Trigger.patch((3, 8, 8))).fit_resample(X, y)
