"""Run every hostile case from a host that is *not* root (the user-namespace fallback).

Started by tests/test_sandbox_hostile.py (cases.py) and tests/test_sandbox_host_reach.py
(host_reach_cases.py) as an unprivileged user with an interpreter that user can execute.
Arguments: a JSON object of the template values (canary paths etc.), then the suite:
"cases" (the default) or "host_reach".
Prints one JSON object: the isolation tags of a good sample, and per case whether it
passed and with what status. Loads glm5_jax.eval with stub parent packages, so only the
stdlib is needed (jax is not importable for this user).
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
    from hostile_cases.cases import CASES, limits_for
    from hostile_cases.host_reach_cases import HOST_REACH_CASES

    values = json.loads(sys.argv[1])
    suite = sys.argv[2] if len(sys.argv) > 2 else "cases"  # or "host_reach"
    if suite == "cases":
        values["host_pid"] = os.getpid()  # this unprivileged host is the process to protect
        os.environ[values["secret_name"]] = values["secret"]
    cases = CASES if suite == "cases" else HOST_REACH_CASES
    benign = SandboxJob("def f():\n    return 1", ("assert f() == 1",))
    limits = SandboxLimits(timeout_s=1.5, memory_bytes=256 << 20)
    policy = IsolationPolicy(python=sys.executable)
    with SandboxPool(workers=2, limits=limits, policy=policy) as pool:
        before = pool.run(benign.program, benign.tests)
        results = pool.map([SandboxJob(case.program.format(**values),
                                       tuple(test.format(**values) for test in case.tests),
                                       limits_for(case, limits))
                            for case in cases])
        after = pool.run(benign.program, benign.tests)
    print(json.dumps({
        "benign_passed": [before.passed, after.passed],
        "isolation": list(before.isolation),
        "cases": {case.name: [result.passed, result.status.value, result.reason]
                  for case, result in zip(cases, results, strict=True)},
    }))


if __name__ == "__main__":
    main()
