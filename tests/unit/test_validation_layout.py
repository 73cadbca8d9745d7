"""The validation package keeps its public surface and stays in readable modules (issue 13)."""

from pathlib import Path

import kproxy.api.validation as validation


def test_the_public_names_are_served_by_the_package():
    for name in validation.__all__:
        assert hasattr(validation, name), name
    assert validation.DEFAULT_NODE_PORT_RANGE == (30000, 32767)
    assert validation.DEFAULT_SERVICE_CIDR == "10.96.0.0/12"


def test_no_validation_module_is_over_600_lines():
    package = Path(validation.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in package.glob("*.py")}
    assert set(sizes) >= {"__init__.py", "common.py", "service.py", "workloads.py", "endpoints.py", "update.py"}
    assert max(sizes.values()) <= 600, sizes
