"""The local stack's configuration and its error messages, without starting anything."""

import socket
from pathlib import Path

import pytest

from bankflow.errors import StackError
from bankflow.settings import Settings
from infra import stack as stack_module
from infra.stack import LocalStack, _redact


def make_stack(tmp_path: Path, **overrides) -> LocalStack:
    settings = Settings(_env_file=None, state_dir=tmp_path, **overrides)
    return LocalStack(settings, echo=lambda _line: None)


def read_properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_server_properties_describe_one_kraft_node_with_single_replica_internals(
    tmp_path: Path,
) -> None:
    props = read_properties(make_stack(tmp_path, kafka_port=29092)._write_server_properties())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:19093"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")


def test_a_port_in_use_is_reported_with_the_variable_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} .*BANKFLOW_REDIS_PORT"):
            make_stack(tmp_path)._require_free_port("redis", port, "BANKFLOW_REDIS_PORT")


def test_missing_java_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack_module.shutil, "which", lambda _name: None)
    with pytest.raises(StackError, match=r"Java is not on PATH.*Java 17"):
        make_stack(tmp_path)._require_java()


def test_missing_maven_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack_module.shutil, "which", lambda _name: None)
    with pytest.raises(StackError, match=r"Maven \(mvn\) is not on PATH.*apt-get install maven"):
        make_stack(tmp_path).kafka_libs()


def test_resolved_jars_are_not_fetched_again(tmp_path: Path, monkeypatch) -> None:
    stack = make_stack(tmp_path)
    libs = tmp_path / "kafka" / "libs" / stack.settings.kafka_version
    libs.mkdir(parents=True)
    (libs / ".resolved").write_text("4.1.1\n")

    def no_subprocess(*_args, **_kwargs):
        raise AssertionError("mvn must not run when the jars are already resolved")

    monkeypatch.setattr(stack_module.subprocess, "run", no_subprocess)
    assert stack.kafka_libs() == libs


def test_passwords_are_redacted_from_printed_urls() -> None:
    assert _redact("postgresql://bankflow:hunter2@h:1/d") == "postgresql://bankflow:***@h:1/d"
    assert _redact("redis://h:1/0") == "redis://h:1/0"


def test_cluster_ids_never_start_with_a_dash_the_storage_tool_would_take_for_an_option() -> None:
    from infra.stack import new_cluster_id

    ids = [new_cluster_id() for _ in range(5_000)]  # a dash first would show ~78 times
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
