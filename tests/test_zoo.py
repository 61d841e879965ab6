"""The model zoo: its entries, the development / held-out protocol, the cache and the bars."""

import numpy as np
import pytest
import torch

from backdoorlearn.datasets import ZooSpec, get_data_home, load_zoo_model, make_trigger, zoo_specs
from backdoorlearn.datasets._zoo import (
    ARCHITECTURES,
    ATTACK_SUCCESS_BAR,
    ATTACKS,
    CLEAN_ATTACK_SUCCESS_BAR,
    DATASETS,
    accuracy_bar,
)
from backdoorlearn.models import model_fingerprint


def _positions(specs):
    return {t[-1] if t[0] == "patch" else t[3] for s in specs for t in s.triggers if t[0] != "blend"}


def _patterns(specs):
    return {t[2] for s in specs for t in s.triggers if t[0] == "patch"}


def test_held_out_set_spans_every_axis():
    held = zoo_specs("held-out")
    assert len(held) >= 40
    assert sum(s.infected for s in held) >= 30
    assert sum(not s.infected for s in held) >= 10
    assert {s.data for s in held} == set(DATASETS)
    assert {s.arch for s in held} == set(ARCHITECTURES)
    assert {s.attack for s in held} == set(ATTACKS)
    kinds = {t[0] for s in held for t in s.triggers}
    assert kinds == {"patch", "blend", "watermark"}
    assert {"solid", "checkerboard", "random"} <= _patterns(held)
    corners = {"top-left", "top-right", "bottom-left", "bottom-right"}
    assert corners <= _positions(held) and _positions(held) - corners  # off-corner too
    assert len({t[1] for s in held for t in s.triggers if t[0] == "blend"}) >= 2  # several alphas
    for s in held:
        if s.attack == "two-target":
            assert len(s.triggers) == 2 and len(set(s.target_labels)) == 2
        if s.attack == "source-specific":
            assert s.source_labels and s.target_labels[0] not in s.source_labels


def test_development_and_held_out_are_disjoint():
    dev, held = zoo_specs("development"), zoo_specs("held-out")
    assert not {s.seed for s in dev} & {s.seed for s in held}
    assert not {s.name for s in dev} & {s.name for s in held}
    # at least one trigger position and one pattern appear only in the held-out set
    assert _positions(held) - _positions(dev)
    assert _patterns(held) - _patterns(dev)
    alphas = lambda specs: {t[1] for s in specs for t in s.triggers if t[0] == "blend"}  # noqa: E731
    assert not alphas(dev) & alphas(held)


def test_zoo_specs_filters_and_errors():
    mlp_digits = zoo_specs("held-out", data="digits", arch="mlp")
    assert mlp_digits and all(s.data == "digits" and s.arch == "mlp" for s in mlp_digits)
    assert len(zoo_specs()) == len(zoo_specs("development")) + len(zoo_specs("held-out"))
    with pytest.raises(ValueError, match="split must be among"):
        zoo_specs("test")
    with pytest.raises(ValueError, match="arch must be among.*'cnn'"):
        zoo_specs(arch="cnn")
    with pytest.raises(ValueError, match="entry must be a ZooSpec or the name"):
        load_zoo_model("no-such-model")


@pytest.mark.parametrize("description", [
    ("patch", 3, "solid", 1.0, "top-left"),
    ("patch", 4, "checkerboard", (1.0, 1.0, 0.0), "middle-left"),
    ("patch", 3, "random", 0.8, "bottom-right"),
    ("blend", 0.15),
    ("watermark", "A", 9, "center", 0.6),
])
def test_make_trigger_builds_what_the_description_says(description):
    shape = (3, 28, 28)
    trigger = make_trigger(description, shape, seed=0)
    assert trigger.image_shape[1:] == shape[1:]
    assert trigger == make_trigger(description, shape, seed=0)  # reproducible from its seed
    mask = trigger.mask[0]
    if description[0] == "patch":
        size = description[1]
        assert trigger.l1_norm == size * size
        rows, cols = np.nonzero(mask)
        assert rows.max() - rows.min() + 1 == size
    elif description[0] == "blend":
        np.testing.assert_allclose(mask, description[1])
    else:
        assert set(np.unique(mask)) == {0.0, np.float32(description[-1])}


def test_get_data_home_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOORLEARN_DATA", str(tmp_path / "cache"))
    assert get_data_home() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    assert get_data_home(tmp_path / "other") == tmp_path / "other"


def test_entry_is_built_once_then_loaded_identically(tmp_path):
    spec = zoo_specs("development", data="digits", arch="mlp", attack="clean")[0]
    first = load_zoo_model(spec, data_home=tmp_path)
    files = list((tmp_path / "zoo").glob("*.pt"))
    assert len(files) == 1
    again = load_zoo_model(spec.name, data_home=tmp_path)
    assert model_fingerprint(again.model) == model_fingerprint(first.model)
    assert again.clean_accuracy == first.clean_accuracy
    np.testing.assert_array_equal(again.X_defender, first.X_defender)
    # What a defender gets is disjoint from the test set and carries no poisoned row.
    assert not set(map(bytes, again.X_defender)) & set(map(bytes, again.X_test))
    assert not again.truth.poison_mask.any()


def test_entry_is_reproducible_from_its_seed(tmp_path):
    spec = zoo_specs("development", data="digits", arch="mlp", attack="source-specific")[0]
    a = load_zoo_model(spec, data_home=tmp_path / "a")
    b = load_zoo_model(spec, data_home=tmp_path / "b")
    assert model_fingerprint(a.model) == model_fingerprint(b.model)
    np.testing.assert_array_equal(a.truth.poison_mask, b.truth.poison_mask)
    # source-specific with cover samples: triggered rows of other labels keep their label
    assert a.truth.poison_mask.any() and a.truth.cover_mask.any()
    assert not (a.truth.poison_mask & a.truth.cover_mask).any()
    cover_labels = a.truth.y_train[a.truth.cover_mask]
    assert not np.isin(cover_labels, a.truth.source_labels).any()


def test_training_leaves_the_global_torch_state_alone(tmp_path):
    spec = zoo_specs("development", data="digits", arch="mlp", attack="clean")[0]
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    load_zoo_model(spec, data_home=tmp_path)
    assert torch.rand(1) == expected
    assert torch.get_num_threads() == threads


def test_a_changed_spec_is_not_read_from_the_cache(tmp_path):
    spec = zoo_specs("development", data="digits", arch="mlp", attack="clean")[0]
    load_zoo_model(spec, data_home=tmp_path)
    other = ZooSpec(**{**spec.__dict__, "seed": spec.seed + 1})
    load_zoo_model(other, data_home=tmp_path)
    assert len(list((tmp_path / "zoo").glob("*.pt"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("spec", zoo_specs(data="digits"), ids=lambda s: s.name)
def test_digits_entries_reach_the_bars(spec):
    zm = load_zoo_model(spec)
    assert zm.clean_accuracy >= accuracy_bar(spec.data, spec.arch)
    if spec.infected:
        assert min(zm.attack_success) >= ATTACK_SUCCESS_BAR
    else:
        assert max(zm.attack_success) <= CLEAN_ATTACK_SUCCESS_BAR
