#!/usr/bin/env python3
"""idds HPO plug-in on bayes_opt (pip package `bayesian-optimization`, 1.x or 2.x).

Protocol (docs/hpo.md): one JSON request on stdin
  {"protocol": 1, "space": {...}, "n": 4, "seed": 7, "points": [{"params", "status", "loss"}]}
and one JSON answer on stdout: {"points": [{...}, ...]}.

bayes_opt maximises a function of real bounds, so: the target is -loss; log_uniform parameters
are optimised on their logarithm; integers are rounded; a categorical parameter is an index in
[0, k) floored to a choice. Within one answer, each suggestion is registered at the worst target
seen ("constant liar"), so a batch of n spreads instead of repeating one point.
Configure it in panda.toml:
  [idds.hpo.plugins]
  bayes_opt = { command = ["python3", "examples/hpo/bayes_opt_plugin.py"], timeout = "60s" }
"""
import json
import math
import sys

from bayes_opt import BayesianOptimization


def bounds(space):
    out = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "uniform":
            out[name] = (spec["low"], spec["high"])
        elif kind == "log_uniform":
            out[name] = (math.log(spec["low"]), math.log(spec["high"]))
        elif kind == "integer":
            out[name] = (spec["low"] - 0.5, spec["high"] + 0.5)
        else:
            out[name] = (0.0, float(len(spec["choices"])))
    return out


def encode(space, point):
    out = {}
    for name, spec in space.items():
        value = point[name]
        kind = spec["type"]
        if kind == "log_uniform":
            out[name] = math.log(value)
        elif kind == "categorical":
            out[name] = spec["choices"].index(value) + 0.5
        else:
            out[name] = float(value)
    return out


def decode(space, raw):
    out = {}
    for name, spec in space.items():
        x = raw[name]
        kind = spec["type"]
        if kind == "uniform":
            out[name] = min(spec["high"], max(spec["low"], x))
        elif kind == "log_uniform":
            out[name] = min(spec["high"], max(spec["low"], math.exp(x)))
        elif kind == "integer":
            out[name] = int(min(spec["high"], max(spec["low"], round(x))))
        else:
            choices = spec["choices"]
            out[name] = choices[min(len(choices) - 1, max(0, int(math.floor(x))))]
    return out


def make_optimizer(pbounds, seed):
    try:
        # bayes_opt 1.x: the acquisition is passed to suggest().
        from bayes_opt import UtilityFunction

        optimizer = BayesianOptimization(f=None, pbounds=pbounds, random_state=seed, verbose=0,
                                         allow_duplicate_points=True)
        utility = UtilityFunction(kind="ucb", kappa=2.5, xi=0.0)
        return optimizer, lambda: optimizer.suggest(utility)
    except ImportError:
        # bayes_opt 2.x: the acquisition belongs to the optimizer.
        optimizer = BayesianOptimization(f=None, pbounds=pbounds, random_state=seed, verbose=0,
                                         allow_duplicate_points=True)
        return optimizer, optimizer.suggest


def main():
    request = json.load(sys.stdin)
    if request.get("protocol") != 1:
        sys.exit("unsupported protocol %r" % request.get("protocol"))
    space = request["space"]
    optimizer, suggest = make_optimizer(bounds(space), request["seed"])
    targets = []
    for point in request["points"]:
        if point["status"] == "done" and point["loss"] is not None:
            optimizer.register(params=encode(space, point["params"]), target=-point["loss"])
            targets.append(-point["loss"])
    worst = min(targets) if targets else 0.0
    for point in request["points"]:
        if point["status"] in ("pending", "running"):
            optimizer.register(params=encode(space, point["params"]), target=worst)
    points = []
    for _ in range(request["n"]):
        raw = suggest()
        points.append(decode(space, raw))
        optimizer.register(params=raw, target=worst)
    json.dump({"points": points}, sys.stdout)


if __name__ == "__main__":
    main()
