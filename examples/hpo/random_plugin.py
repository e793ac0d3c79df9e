#!/usr/bin/env python3
"""A dependency-free idds HPO plug-in (docs/hpo.md, "Plug-in protocol").

Reads {"protocol", "space", "n", "seed", "points"} on stdin and answers {"points": [...]} on
stdout: random points, except that after the first four losses it samples around the best point
so far (a tiny local search). Used by the tests, so they run on a machine without extra
packages.
"""
import json
import math
import random
import sys


def draw(spec, rng, centre=None):
    kind = spec["type"]
    if kind == "categorical":
        if centre is not None and rng.random() < 0.7:
            return centre
        return rng.choice(spec["choices"])
    low, high = spec["low"], spec["high"]
    if kind == "integer":
        if centre is not None:
            return max(low, min(high, centre + rng.choice([-1, 0, 1])))
        return rng.randint(low, high)
    if kind == "log_uniform":
        lo, hi = math.log(low), math.log(high)
        if centre is not None:
            x = math.log(centre) + rng.gauss(0, (hi - lo) / 10)
            return math.exp(min(hi, max(lo, x)))
        return math.exp(rng.uniform(lo, hi))
    if centre is not None:
        return min(high, max(low, centre + rng.gauss(0, (high - low) / 10)))
    return rng.uniform(low, high)


def main():
    request = json.load(sys.stdin)
    if request.get("protocol") != 1:
        sys.exit("unsupported protocol %r" % request.get("protocol"))
    rng = random.Random(request["seed"] * 7919 + len(request["points"]))
    done = [p for p in request["points"] if p["status"] == "done" and p["loss"] is not None]
    best = min(done, key=lambda p: p["loss"])["params"] if len(done) >= 4 else None
    points = []
    for _ in range(request["n"]):
        points.append({
            name: draw(spec, rng, best[name] if best else None)
            for name, spec in request["space"].items()
        })
    json.dump({"points": points}, sys.stdout)


if __name__ == "__main__":
    main()
