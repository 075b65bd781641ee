"""Run every host-reach case from a host that is *not* root (the user-namespace mode).

Started by tests/test_sandbox_host_reach.py as an unprivileged user with an interpreter
that user can execute. Argument: a JSON object of the template values. Prints one JSON
object: the isolation tags of a good sample, and per case whether it passed and with what
status and reason. Loads glm5_jax.eval with stub parent packages (only the stdlib is
needed), as unprivileged_host.py does.
"""

from __future__ import annotations

import json
import os
import sys
import types

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(os.path.dirname(TESTS_DIR), "glm5_jax")


def main() -> None:
    stubs = (("glm5_jax", PACKAGE_DIR), ("glm5_jax.eval", os.path.join(PACKAGE_DIR, "eval")))
    for name, path in stubs:
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    sys.path.insert(0, TESTS_DIR)
    from glm5_jax.eval.limits import SandboxLimits
    from glm5_jax.eval.policy import IsolationPolicy
    from glm5_jax.eval.pool import SandboxJob, SandboxPool
    from hostile_cases.cases import limits_for
    from hostile_cases.host_reach_cases import HOST_REACH_CASES

    values = json.loads(sys.argv[1])
    benign = SandboxJob("def f():\n    return 1", ("assert f() == 1",))
    limits = SandboxLimits(timeout_s=1.5, memory_bytes=256 << 20)
    with SandboxPool(workers=2, limits=limits,
                     policy=IsolationPolicy(python=sys.executable)) as pool:
        before = pool.run(benign.program, benign.tests)
        results = pool.map([SandboxJob(case.program.format(**values),
                                       tuple(test.format(**values) for test in case.tests),
                                       limits_for(case, limits))
                            for case in HOST_REACH_CASES])
        after = pool.run(benign.program, benign.tests)
    print(json.dumps({
        "benign_passed": [before.passed, after.passed],
        "isolation": list(before.isolation),
        "cases": {case.name: [result.passed, result.status.value, result.reason]
                  for case, result in zip(HOST_REACH_CASES, results, strict=True)},
    }))


if __name__ == "__main__":
    main()
