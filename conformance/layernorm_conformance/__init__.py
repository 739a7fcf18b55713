"""layernorm_conformance: the shared conformance suite every layernorm backend must pass.

A pytest plugin (`layernorm_conformance.plugin`, options ``--backend`` and ``--device``) and the checks in
`layernorm_conformance.checks`, run against any registered backend, built-in or third-party::

    pytest --pyargs layernorm_conformance.checks --backend mybackend

Results are compared with the float64 reference (`layernorm_core.reference`) under the tolerance table
(`layernorm_core.tolerances`); `layernorm_conformance.matrix` runs the suite for every installed backend and
prints the backend x device x dtype matrix. See docs/conformance.md.
"""

CHECKS_PACKAGE = "layernorm_conformance.checks"
"""The package holding the checks (``pytest --pyargs`` target)."""
