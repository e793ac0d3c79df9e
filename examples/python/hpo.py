"""Hyperparameter optimisation loop with Function-as-a-Task (the seed's pattern).

A @workflow driver runs N iterations; each iteration a tiny pure-Python optimizer proposes M
points, ONE @work call evaluates them (one task, one job per point), the losses go back to the
optimizer, and the loop stops early when the best loss is good enough or stops improving.

    python examples/python/hpo.py            # starts an embedded `panda up`, runs, stops it
    PANDA_SERVER_URL=http://127.0.0.1:50051 python examples/python/hpo.py   # a running system
"""

import argparse
import math
import os
import random

from pandars import work, workflow


@work(map_results=True)
def train(lr, depth):
    """The 'training run': a loss with its minimum at lr=1e-2, depth=6."""
    return (math.log10(lr) + 2.0) ** 2 + 0.05 * (depth - 6) ** 2


class LocalSearch:
    """A tiny optimizer: random points first, then Gaussian steps around the best point with a
    radius that shrinks when an iteration brings no improvement."""

    def __init__(self, seed=1):
        self.rng = random.Random(seed)
        self.history = []  # (point, loss)
        self.radius = 1.0

    def best(self):
        return min(self.history, key=lambda h: h[1]) if self.history else (None, math.inf)

    def ask(self, m):
        best, _ = self.best()
        points = []
        for _ in range(m):
            if best is None:
                log_lr, depth = self.rng.uniform(-5, 0), self.rng.randint(1, 12)
            else:
                log_lr = min(0.0, max(-5.0, math.log10(best["lr"]) + self.rng.gauss(0, self.radius)))
                depth = min(12, max(1, best["depth"] + round(self.rng.gauss(0, 3 * self.radius))))
            points.append({"lr": round(10 ** log_lr, 8), "depth": int(depth)})
        return points

    def tell(self, results):
        before = self.best()[1]
        self.history.extend(results)
        if self.best()[1] >= before:
            self.radius *= 0.5


@workflow
def optimise(iterations=8, points=4, target=1e-3, patience=3):
    optimizer = LocalSearch()
    stale = 0
    for iteration in range(iterations):
        batch = optimizer.ask(points)
        losses = train(group_kwargs=batch).get(timeout=600)  # one task, one job per point
        before = optimizer.best()[1]
        optimizer.tell([(point, losses[point]) for point in batch])
        best, loss = optimizer.best()
        print(f"iteration {iteration}: best loss {loss:.5f} at {best}", flush=True)
        stale = stale + 1 if loss >= before else 0
        if loss <= target or stale >= patience:
            print(f"early stop after {iteration + 1} iterations", flush=True)
            break
    return optimizer.best()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--points", type=int, default=4)
    options = parser.parse_args()
    if os.environ.get("PANDA_SERVER_URL"):
        best, loss = optimise(options.iterations, options.points)
    else:
        from pandars.embedded import Embedded

        with Embedded() as panda:
            best, loss = optimise(options.iterations, options.points, client=panda.client)
    print(f"best: {best} loss {loss:.5f}")


if __name__ == "__main__":
    main()
