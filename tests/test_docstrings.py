"""numpydoc validation of the public API, under scikit-learn's rules (sklearn/tests/test_docstrings.py).

Every public class, its public methods and properties defined in
backdoorlearn, and every public function are validated; the errors
scikit-learn ignores are ignored here, for the same reasons:

- RT02 (the first line of Returns may name the returned object), GL01 and
  GL02 (blank-line placement around the summary) everywhere;
- PR02 and GL08 on properties (their signature cannot be parsed);
- ES01, SA01 and EX01 (extended summary, See Also, Examples) on methods and
  functions: only class docstrings must have them.

Classes must also have an Examples section (EX01 is not ignored for them),
and so must public functions, which run as doctests.
"""

import inspect

import pytest

import backdoorlearn

numpydoc_validation = pytest.importorskip("numpydoc.validate")

def _modules():
    import backdoorlearn.attacks
    import backdoorlearn.audit
    import backdoorlearn.datasets
    import backdoorlearn.detection
    import backdoorlearn.ensemble
    import backdoorlearn.grading
    import backdoorlearn.inspection
    import backdoorlearn.metrics
    import backdoorlearn.models
    import backdoorlearn.plotting
    import backdoorlearn.repair
    import backdoorlearn.training

    return [backdoorlearn, backdoorlearn.attacks, backdoorlearn.audit, backdoorlearn.datasets,
            backdoorlearn.detection, backdoorlearn.ensemble, backdoorlearn.grading, backdoorlearn.inspection,
            backdoorlearn.metrics, backdoorlearn.models, backdoorlearn.plotting, backdoorlearn.repair,
            backdoorlearn.training]


def _public():
    """(import path, kind) of each public class, method, property and function."""
    seen = set()
    for module in _modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj in seen:
                continue
            seen.add(obj)
            path = f"{obj.__module__}.{obj.__qualname__}"
            if inspect.isfunction(obj):
                yield path, "function"
                continue
            yield path, "class"
            for attr in sorted(dir(obj)):
                if attr.startswith("_"):
                    continue
                member = inspect.getattr_static(obj, attr)
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    kind, func = "property", member.fget
                elif inspect.isfunction(member):
                    kind, func = "method", member
                else:
                    continue
                # Methods inherited from scikit-learn or skorch are validated there.
                if func.__module__.startswith("backdoorlearn"):
                    yield f"{path}.{attr}", kind


def _filter(errors, kind):
    for code, message in errors:
        if code in ("RT02", "GL01", "GL02"):
            continue
        if kind == "property" and code in ("PR02", "GL08"):
            continue
        if kind != "class" and code in ("ES01", "SA01", "EX01"):
            continue
        yield code, message


PUBLIC = sorted(_public())


@pytest.mark.parametrize("path, kind", PUBLIC, ids=[p for p, _ in PUBLIC])
def test_docstring(path, kind):
    result = numpydoc_validation.validate(path)
    errors = list(_filter(result["errors"], kind))
    assert not errors, "\n".join(f"{path}: {code} {message}" for code, message in errors)


@pytest.mark.parametrize("path", [p for p, kind in PUBLIC if kind == "function"])
def test_public_function_has_examples(path):
    module, _, name = path.rpartition(".")
    obj = getattr(__import__(module, fromlist=[name]), name)
    assert "Examples" in (obj.__doc__ or ""), f"{path} has no Examples section"


def test_methods_are_validated_too():
    paths = {p for p, _ in PUBLIC}
    assert "backdoorlearn.repair._fine_pruning.FinePruner.predict" in paths  # inherited from BaseRepair
    assert "backdoorlearn.triggers.Trigger.l1_norm" in paths  # a property
