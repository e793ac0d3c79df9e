"""Active learning with Function-as-a-Task: find the boundary of an excursion set.

The "simulation" says whether a parameter x gives a signal above threshold (true for x above an
unknown boundary). Each iteration, a user function computes the next parameters from ALL previous
results (the tightest bracket around the boundary, refined with M points inside it); one @work
call runs the M simulations; the loop ends when the bracket is narrower than the tolerance.

    python examples/python/active_learning.py
"""

import argparse
import os

from pandars import work, workflow

BOUNDARY = 0.6180339887


@work(map_results=True)
def simulate(x):
    """Signal strength above threshold? (the excursion set is x > BOUNDARY)."""
    return {"x": x, "excursion": x > BOUNDARY}


def next_points(history, m, low=0.0, high=1.0):
    """The bracket from every result so far, and m points evenly inside it."""
    below = [h["x"] for h in history if not h["excursion"]]
    above = [h["x"] for h in history if h["excursion"]]
    lo = max(below, default=low)
    hi = min(above, default=high)
    step = (hi - lo) / (m + 1)
    return (lo, hi), [round(lo + step * (i + 1), 12) for i in range(m)]


@workflow
def find_boundary(points=4, tolerance=1e-4, max_iterations=20):
    history = []
    for iteration in range(max_iterations):
        (lo, hi), xs = next_points(history, points)
        if hi - lo < tolerance:
            print(f"converged after {iteration} iterations: boundary in [{lo:.6f}, {hi:.6f}]", flush=True)
            return (lo + hi) / 2, iteration
        results = simulate(group_kwargs=[{"x": x} for x in xs]).get(timeout=600)
        history.extend(results.values())
        print(f"iteration {iteration}: bracket [{lo:.6f}, {hi:.6f}]", flush=True)
    raise RuntimeError(f"no convergence in {max_iterations} iterations")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    options = parser.parse_args()
    if os.environ.get("PANDA_SERVER_URL"):
        estimate, _ = find_boundary(options.points, options.tolerance)
    else:
        from pandars.embedded import Embedded

        with Embedded() as panda:
            estimate, _ = find_boundary(options.points, options.tolerance, client=panda.client)
    print(f"boundary ~ {estimate:.6f} (true {BOUNDARY:.6f})")


if __name__ == "__main__":
    main()
