"""The examples' loops against the embedded system: HPO (N iterations of M points, early stop)
and active learning (next points from all previous results, ends on convergence)."""

import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples", "python")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hpo_loop_stops_early_on_target_or_patience(client, capsys):
    hpo = load("hpo")
    best, loss = hpo.optimise(6, 3, target=10.0, client=client)
    assert "early stop after 1 iterations" in capsys.readouterr().out, "a loss under the target stops the loop"
    assert loss == hpo.train.func(**best), "the loss is the remote function's value for the best point"
    best, loss = hpo.optimise(4, 3, target=-1.0, patience=1, client=client)
    out = capsys.readouterr().out
    iterations = out.count("iteration ")
    assert 1 <= iterations <= 4
    assert iterations == 4 or "early stop" in out
    assert loss == hpo.train.func(**best)


def test_active_learning_converges_on_the_boundary(client):
    al = load("active_learning")
    estimate, iterations = al.find_boundary(points=3, tolerance=1e-3, client=client)
    assert abs(estimate - al.BOUNDARY) < 1e-3
    assert 2 <= iterations <= 8
