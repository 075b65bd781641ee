"""Which installed distribution a site-packages file belongs to, and its licence.

Why: a code corpus built from other people's files must say where each file came from
and under which licence, so that a trained model's data can be audited and filtered.
The answer comes from the installed distributions' own metadata (no network).
"""

from __future__ import annotations

import functools
import importlib.metadata

PYTHON_STDLIB_PACKAGE = "python-stdlib"
PYTHON_STDLIB_LICENSE = "PSF-2.0"
_MAX_LICENSE_CHARS = 200


def distribution_license(distribution: importlib.metadata.Distribution) -> str:
    """The licence a distribution declares: SPDX expression, else classifiers, else
    the first line of the free-text License field; "" when it declares none."""
    metadata = distribution.metadata
    expression = metadata.get("License-Expression")
    if expression:
        return expression.strip()
    classifiers = [
        classifier.split("::")[-1].strip()
        for classifier in (metadata.get_all("Classifier") or [])
        if classifier.startswith("License ::")
    ]
    if classifiers:
        return "; ".join(classifiers)
    free_text = (metadata.get("License") or "").strip()
    return free_text.splitlines()[0][:_MAX_LICENSE_CHARS] if free_text else ""


@functools.cache
def _top_level_to_distribution() -> dict[str, str]:
    # packages_distributions maps an import name to every distribution that ships it;
    # taking the smallest name picks the same one on every run.
    return {
        top_level: min(names)
        for top_level, names in importlib.metadata.packages_distributions().items()
        if names
    }


@functools.cache
def _license_of(distribution_name: str) -> str:
    try:
        return distribution_license(importlib.metadata.distribution(distribution_name))
    except importlib.metadata.PackageNotFoundError:
        return ""


def package_and_license(top_level_name: str) -> tuple[str, str]:
    """(distribution name, licence) for an import name such as "numpy" or "six".

    A module that no installed distribution claims keeps its import name as its
    package and an empty licence.
    """
    distribution_name = _top_level_to_distribution().get(top_level_name)
    if distribution_name is None:
        return top_level_name, ""
    return distribution_name, _license_of(distribution_name)
