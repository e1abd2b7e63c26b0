"""search_runs with the filters people write, order_by and pages; and the parser alone."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, Param, RunTag

from tracking.protocol import MlflowError
from tracking.search import Clause, filter_parse

RUN_ATTRIBUTES = {"run_name", "status", "start_time", "run_id"}


@pytest.fixture
def runs(tracking):
    client = tracking.client()
    experiment_id = client.create_experiment("search")
    made = {}
    for name, loss, lr, team, finish in [
        ("a", 0.1, "0.01", "nlp", True),
        ("b", 0.4, "0.1", "nlp", False),
        ("c", 0.9, "0.01", "vision", True),
    ]:
        run = client.create_run(experiment_id, run_name=name)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("loss", loss, 0, 0)],
            params=[Param("lr", lr)],
            tags=[RunTag("team", team)],
        )
        if finish:
            client.set_terminated(run.info.run_id)
        made[name] = run.info.run_id
    return client, experiment_id, made


def names(found) -> list[str]:
    return [run.info.run_name for run in found]


def test_each_filter_kind(runs):
    client, experiment_id, _ = runs

    def search(text: str, **kwargs) -> list[str]:
        return sorted(names(client.search_runs([experiment_id], text, **kwargs)))

    assert search("metrics.loss < 0.5") == ["a", "b"]
    assert search("metrics.loss >= 0.4") == ["b", "c"]
    assert search("params.lr = '0.01'") == ["a", "c"]
    assert search("tags.team = 'nlp'") == ["a", "b"]
    assert search("tags.team != 'nlp'") == ["c"]
    assert search("attributes.status = 'FINISHED'") == ["a", "c"]
    assert search("run_name = 'b'") == ["b"]
    assert search("attributes.run_name LIKE 'a%'") == ["a"]
    assert search("attributes.run_name ILIKE 'C'") == ["c"]
    assert search("tags.team IN ('vision', 'audio')") == ["c"]
    assert search("metrics.loss < 0.5 and params.lr = '0.01' AND tags.team = 'nlp'") == ["a"]
    assert search("metrics.missing < 1") == []
    assert search("metrics.`loss` < 0.2") == ["a"]


def test_order_by_and_pages(runs):
    client, experiment_id, _ = runs
    found = client.search_runs([experiment_id], order_by=["metrics.loss DESC"])
    assert names(found) == ["c", "b", "a"]
    found = client.search_runs([experiment_id], order_by=["params.lr ASC", "run_name DESC"])
    assert names(found) == ["c", "a", "b"]
    first = client.search_runs([experiment_id], max_results=2, order_by=["run_name"])
    assert names(first) == ["a", "b"]
    assert first.token
    rest = client.search_runs(
        [experiment_id], max_results=2, order_by=["run_name"], page_token=first.token
    )
    assert names(rest) == ["c"]
    assert not rest.token
    # Searched runs carry their data, as get_run's.
    assert first[0].data.params == {"lr": "0.01"}
    assert first[0].data.metrics == {"loss": 0.1}


def test_bad_filters_are_invalid_parameter_value(runs):
    from mlflow.exceptions import MlflowException

    client, experiment_id, _ = runs
    for text in ("metrics.loss <", "loss < 1 OR x = 2", "attributes.nope = 'x'", "params.lr = "):
        with pytest.raises(MlflowException) as raised:
            client.search_runs([experiment_id], text)
        assert raised.value.error_code == "INVALID_PARAMETER_VALUE", text


def test_the_parser():
    parse = lambda text: filter_parse(  # noqa: E731
        text, attributes=RUN_ATTRIBUTES, default_entity="attributes"
    )
    assert parse("") == []
    assert parse('metrics."val loss" <= -1.5e-3') == [Clause("metrics", "val loss", "<=", -1.5e-3)]
    assert parse("params.lr NOT IN ('1', \"2\")") == [Clause("params", "lr", "NOT IN", ("1", "2"))]
    assert parse("metrics.train/loss > 0 and status = 'RUNNING'") == [
        Clause("metrics", "train/loss", ">", 0.0),
        Clause("attributes", "status", "=", "RUNNING"),
    ]
    with pytest.raises(MlflowError):
        parse("metrics.loss < 1 extra")
    with pytest.raises(MlflowError):
        parse("params.lr = 'unclosed")
