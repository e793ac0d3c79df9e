#!/usr/bin/env python3
"""idds HPO plug-in on Ax (pip package `ax-platform`, the AxClient service API).

Protocol (docs/hpo.md): one JSON request on stdin
  {"protocol": 1, "space": {...}, "n": 4, "seed": 7, "points": [{"params", "status", "loss"}]}
and one JSON answer on stdout: {"points": [{...}, ...]}.

Each call rebuilds the experiment from the request (idds keeps the history, so the plug-in is
stateless): every earlier point is attached as a trial — completed with its loss, marked failed,
or left running — and Ax is asked for n more trials (minimising `loss`). Ax logs go to stderr.
Configure it in panda.toml (Ax's first call is slow to import: give it time):
  [idds.hpo.plugins]
  ax = { command = ["python3", "examples/hpo/ax_plugin.py"], timeout = "120s" }
"""
import json
import logging
import sys

logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

from ax.service.ax_client import AxClient, ObjectiveProperties  # noqa: E402


def parameters(space):
    out = []
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            choices = spec["choices"]
            if len(choices) == 1:
                out.append({"name": name, "type": "fixed", "value": choices[0]})
            else:
                out.append({"name": name, "type": "choice", "values": choices, "is_ordered": False})
        elif kind == "integer":
            if spec["low"] == spec["high"]:
                out.append({"name": name, "type": "fixed", "value": spec["low"]})
            else:
                out.append({"name": name, "type": "range", "bounds": [spec["low"], spec["high"]], "value_type": "int"})
        else:
            out.append({
                "name": name,
                "type": "range",
                "bounds": [float(spec["low"]), float(spec["high"])],
                "value_type": "float",
                "log_scale": kind == "log_uniform",
            })
    return out


def main():
    request = json.load(sys.stdin)
    if request.get("protocol") != 1:
        sys.exit("unsupported protocol %r" % request.get("protocol"))
    client = AxClient(random_seed=request["seed"], verbose_logging=False)
    client.create_experiment(
        name="idds_study",
        parameters=parameters(request["space"]),
        objectives={"loss": ObjectiveProperties(minimize=True)},
    )
    for point in request["points"]:
        _, index = client.attach_trial(parameters=point["params"])
        if point["status"] == "done" and point["loss"] is not None:
            client.complete_trial(trial_index=index, raw_data={"loss": (point["loss"], 0.0)})
        elif point["status"] == "failed":
            client.log_trial_failure(trial_index=index)
    trials, _ = client.get_next_trials(max_trials=request["n"])
    points = [trials[i] for i in sorted(trials)]
    json.dump({"points": points}, sys.stdout)


if __name__ == "__main__":
    main()
