from modelserve import status


def app(app_status: str, dep_status: str, states: list[str], target: int, message: str = "") -> dict:
    replicas = [{"state": s, "node_ip": "10.0.0.1"} for s in states]
    return {
        "status": app_status,
        "route_prefix": "/echo",
        "deployed_app_config": {"args": {"section": "algopkg.Echo"}},
        "deployments": {
            "Echo": {"status": dep_status, "replicas": replicas, "target_num_replicas": target, "message": message}
        },
    }


def test_healthy_row() -> None:
    row = status.app_row("Echo", app("RUNNING", "HEALTHY", ["RUNNING", "RUNNING"], 2), "http://h:1")
    assert (row.section, row.url, row.ready, row.target, row.status) == (
        "algopkg.Echo",
        "http://h:1/echo",
        2,
        2,
        "HEALTHY",
    )
    assert row.healthy and row.nodes == ("10.0.0.1 x2",)


def test_node_labels_count_replicas_and_tell_nodes_on_one_ip_apart() -> None:
    replicas = [
        {"node_ip": "10.0.0.1", "node_id": "aaaaaaaa1"},
        {"node_ip": "10.0.0.1", "node_id": "aaaaaaaa1"},
        {"node_ip": "10.0.0.2", "node_id": "bbbbbbbb2"},
    ]
    assert status.node_labels(replicas) == ("10.0.0.1 x2", "10.0.0.2")
    same_ip = [{"node_ip": "127.0.0.1", "node_id": "aaaaaa1"}, {"node_ip": "127.0.0.1", "node_id": "bbbbbb2"}]
    assert status.node_labels(same_ip) == ("127.0.0.1/aaaaaa", "127.0.0.1/bbbbbb")


def test_failed_row_keeps_the_message_without_colour_codes() -> None:
    row = status.app_row("Echo", app("DEPLOY_FAILED", "DEPLOY_FAILED", ["RUNNING"], 1, "\x1b[36mboom\x1b[39m"), "")
    assert row.status == "DEPLOY_FAILED" and row.message == "boom" and not row.healthy


def test_settled() -> None:
    assert status.settled(app("RUNNING", "HEALTHY", ["RUNNING"], 1))
    assert not status.settled(app("RUNNING", "HEALTHY", ["RUNNING"], 2))
    assert not status.settled(app("DEPLOYING", "UPDATING", ["STARTING"], 1))
    assert status.settled(app("DEPLOY_FAILED", "DEPLOY_FAILED", [], 1))
    assert not status.settled(None)


def test_table_and_missing_apps() -> None:
    rows = status.rows(
        {"applications": {"Echo": app("RUNNING", "HEALTHY", ["RUNNING"], 1)}}, "http://h:1", ["Echo", "Gone"]
    )
    text = status.table(rows)
    assert text.splitlines()[0].split() == ["SECTION", "URL", "REPLICAS", "STATUS", "NODES"]
    assert "algopkg.Echo" in text and "1/1" in text and "MISSING" in text
    assert status.table([]) == "no sections are deployed"


def test_a_scale_down_is_not_settled_until_the_extra_replicas_are_gone() -> None:
    assert not status.settled(app("RUNNING", "HEALTHY", ["RUNNING", "RUNNING", "RUNNING"], 1))
    assert status.settled(app("RUNNING", "HEALTHY", ["RUNNING"], 1))


def test_an_app_being_deleted_keeps_its_section_name() -> None:
    deleting = {"status": "DELETING", "deployed_app_config": None, "deployments": {}}
    assert status.app_row("Echo:small", deleting, "").section == "algopkg.Echo:small"


def test_the_cause_of_a_failure_is_the_backend_s_own_error() -> None:
    wrapped = (
        'The deployment failed to start 3 times in a row.\nTraceback (most recent call last):\n  File "x"\n'
        "ray.exceptions.RayTaskError(ModelLoadError): ray::ServeReplica\n"
        "modelserve.errors.ModelLoadError: algo_backend did not load its model:\nTraceback (most recent call last):\n"
        "  File \"y\"\nValueError: cannot parse the model file 'broken.txt'\n"
    )
    assert status.cause(wrapped) == "ValueError: cannot parse the model file 'broken.txt'"
    pip = "Runtime env setup for app 'EnvOld' failed:\nCollecting nope\nERROR: No matching distribution found for nope"
    assert status.cause(pip) == "ERROR: No matching distribution found for nope"
    assert status.cause("Runtime env setup for app 'X' failed:\nsomething broke") == (
        "Runtime env setup for app 'X' failed: something broke"
    )
    assert status.cause("") == "no message from the cluster"


def rolling(states: dict[str, str], target: int = 1) -> dict:
    rolled = app("DEPLOYING", "UPDATING", [], target)
    rolled["deployments"]["Echo"]["replicas"] = [
        {"replica_id": rid, "state": state, "node_ip": "10.0.0.1"} for rid, state in states.items()
    ]
    return rolled


def test_a_roll_out_is_done_once_its_new_replicas_serve_while_the_old_ones_drain() -> None:
    old = status.replica_ids({"applications": {"Echo": rolling({"a": "RUNNING", "b": "RUNNING"}, 2)}})
    assert old == {"a", "b"}
    draining = rolling({"a": "STOPPING", "b": "STOPPING", "c": "RUNNING", "d": "RUNNING"}, 2)
    assert status.serving_new(draining, old)
    row = status.app_row("Echo", draining, "")
    assert row.healthy and (row.ready, row.target) == (2, 2)
    # An old replica still serving, a new one still starting, or no old one at all: not done yet.
    assert not status.serving_new(rolling({"a": "STOPPING", "b": "RUNNING", "c": "RUNNING"}, 2), old)
    assert not status.serving_new(rolling({"a": "STOPPING", "b": "STOPPING", "c": "RUNNING", "d": "STARTING"}, 2), old)
    assert not status.serving_new(rolling({"c": "RUNNING"}, 1), old)
    assert not status.serving_new(None, old)


def test_an_app_serving_while_replaced_replicas_drain_counts_as_healthy_for_the_next_apply() -> None:
    """`status` right after an apply, or the next apply, may come while the last one's old replicas drain."""
    assert status.app_healthy(rolling({"a": "STOPPING", "c": "RUNNING"}))
    assert not status.app_healthy(rolling({"a": "STOPPING", "c": "STARTING"}))
    assert not status.app_healthy(rolling({"a": "STOPPING"}))
    assert status.app_healthy(app("RUNNING", "HEALTHY", ["RUNNING"], 1))


def test_a_split_is_read_from_the_section_that_owns_the_route() -> None:
    targets = [
        {"app": "Echo", "deployment": "Echo", "section": "algopkg.Echo", "weight": 90},
        {"app": "Echo:v2", "deployment": "Echo", "section": "algopkg.Echo:v2", "weight": 10},
    ]
    mirror = {"app": "Echo:copy", "deployment": "Echo", "section": "algopkg.Echo:copy", "percent": 50}
    split = {"targets": targets, "sticky": "x-user", "mirrors": {"algopkg.Echo": [mirror]}}
    owner = app("RUNNING", "HEALTHY", ["RUNNING"], 1)
    owner["deployed_app_config"] = {
        "args": {"section": "algopkg.Echo"},
        "route_prefix": "/echo",
        "deployments": [{"name": "Echo", "user_config": {"user": {}, "traffic": split}}],
    }
    behind = {**app("RUNNING", "HEALTHY", ["RUNNING"], 1), "route_prefix": None}
    behind["deployed_app_config"] = {"args": {"section": "algopkg.Echo:v2"}, "route_prefix": None}
    details = {"applications": {"Echo": owner, "Echo:v2": behind, "grey.Echo": owner}}
    assert status.splits(details) == {"/echo": split}
    rows = status.rows(details, "http://h:1")
    assert [(r.section, r.url) for r in rows] == [
        ("algopkg.Echo", "http://h:1/echo"),
        ("algopkg.Echo:v2", "http://h:1/echo"),
    ]
    counts = {("algopkg.Echo:copy", "sent"): 1048576.0, ("algopkg.Echo:copy", "dropped"): 1.0}
    assert status.traffic_lines(details, counts) == [
        "/echo: algopkg.Echo 90%, algopkg.Echo:v2 10% (sticky by header x-user)",
        "  mirror algopkg.Echo:copy <- algopkg.Echo (50%): sent 1048576, failed 0, dropped 1",
        "  (mirror counts come from Ray's metrics, exported every 10 s: up to 10 s behind)",
    ]
    del split["mirrors"]["algopkg.Echo"]
    assert status.traffic_lines(details, counts) == [  # no mirror, no word on their counts
        "/echo: algopkg.Echo 90%, algopkg.Echo:v2 10% (sticky by header x-user)"
    ]
