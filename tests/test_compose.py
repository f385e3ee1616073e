"""docker-compose.yml read against the settings, and the image's entrypoint run as compose runs it.

Where a Docker daemon answers, the image is built and its try-out served; where none does
(most CI runners, this machine), the entrypoint runs with the project's own Python and the
environment compose would give it.
"""

import html
import re
import shutil
import subprocess
import urllib.request

import pytest
import yaml

from .processes import (
    ROOT,
    free_port,
    fresh_postgres,
    process_env,
    start_entrypoint,
    stop,
    wait_for_http,
)

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
PROXY_SERVICES = [name for name in COMPOSE["services"] if name not in ("db", "tryout")]


def env_file(path) -> dict[str, str]:
    """A .env file as compose reads it: KEY=VALUE lines, `#` comments, blank lines."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


ENV_EXAMPLE = env_file(ROOT / ".env.example")


def test_every_variable_of_dot_env_reaches_the_proxy():
    for name in PROXY_SERVICES:
        assert COMPOSE["services"][name]["env_file"] == [{"path": ".env", "required": False}]


def test_no_provider_key_is_required_by_compose():
    """An Anthropic-only or Gemini-only .env starts; a try-out needs no .env at all."""
    assert ":?" not in COMPOSE_TEXT
    for name in PROXY_SERVICES:
        assert "OPENAI_API_KEY" not in COMPOSE["services"][name]["environment"]


def test_what_holds_only_in_the_container_wins_over_a_copied_env_example():
    environment = COMPOSE["services"]["proxy"]["environment"]
    assert ENV_EXAMPLE["DATA_DIR"] == "./data" and environment["DATA_DIR"] == "/data"
    assert environment["STATIC_MANIFEST"] == "true"
    assert environment["HOST"] == "0.0.0.0"  # noqa: S104
    assert environment["DATABASE_URL"] == ""  # POSTGRES_URL, to compose's own db, is the one
    assert "@db:5432/" in environment["POSTGRES_URL"]


def test_every_variable_compose_reads_is_documented_in_env_example():
    read = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_TEXT))
    assert "POSTGRES_PASSWORD" in read
    assert sorted(read - set(ENV_EXAMPLE)) == []


def test_the_try_out_profile_serves_the_fakes_on_this_machine_only():
    tryout = COMPOSE["services"]["tryout"]
    assert tryout["profiles"] == ["tryout"]
    assert tryout["command"] == ["all", "--fake-openai", "--host", "0.0.0.0"]  # noqa: S104
    assert tryout["ports"] == ["127.0.0.1:9487:9487"]
    assert "depends_on" not in tryout  # SQLite in its own volume, no database service
    assert tryout["volumes"] == ["tryout-data:/data"]


@pytest.mark.e2e
def test_the_entrypoint_with_a_copied_env_example_and_only_an_anthropic_key_serves(tmp_path):
    """What `docker compose up` gives the proxy container, the image's own values aside."""
    environment = COMPOSE["services"]["proxy"]["environment"]
    with fresh_postgres("compose") as database_url:
        port = free_port()
        env = process_env(tmp_path) | ENV_EXAMPLE
        env |= {
            "ANTHROPIC_API_KEY": "sk-ant-compose-test",
            "BATCH_SERVER_API_KEY": "compose-key",
            "DJANGO_SUPERUSER_USERNAME": "operator",
            "DJANGO_SUPERUSER_PASSWORD": "compose-password",
            "DATABASE_URL": environment["DATABASE_URL"],
            "POSTGRES_URL": database_url,  # the `db` service
            # The image's paths and build, which a checkout has not: these stay the checkout's.
            "DATA_DIR": str(tmp_path),
            "STATIC_MANIFEST": "false",
            "HOST": "127.0.0.1",  # tests listen on loopback only
            "PORT": str(port),
            "WEB_CONCURRENCY": "1",
        }
        assert env["OPENAI_API_KEY"] == ""
        log = tmp_path / "proxy.log"
        proc = start_entrypoint([], env, log)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as page:
                front = page.read().decode()
        finally:
            stop(proc)
    output = log.read_text()
    assert "Created the admin account named by DJANGO_SUPERUSER_USERNAME." in output
    assert "An admin account exists." in front
    assert "Running, sending batches to Anthropic's Message Batches." in html.unescape(front)


def docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.e2e
@pytest.mark.skipif(not docker_usable(), reason="needs a running Docker daemon (docker info)")
def test_the_image_builds_and_its_try_out_answers(tmp_path):
    tag = "batchproxy:test-compose"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1800)
    port = free_port()
    name = f"batchproxy-test-{port}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:9487"]
        + ["-e", "BATCH_SERVER_API_KEY=my-proxy-key", tag]
        + COMPOSE["services"]["tryout"]["command"],
        check=True,
        timeout=60,
    )
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as health:
                    assert health.status == 200
                    break
            except OSError:
                subprocess.run(["sleep", "1"], check=True)
        else:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            raise AssertionError(logs.stdout + logs.stderr)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as page:
            assert "built-in fakes of OpenAI, Anthropic and Gemini" in page.read().decode()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="needs the docker compose plugin",
)
def test_compose_reads_the_file_with_a_copied_env_example(tmp_path):
    """`docker compose config` (no daemon needed) resolves .env into the proxy's environment."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / ".env").write_text(
        (ROOT / ".env.example").read_text() + "\nGEMINI_API_KEY=g-key\nPOSTGRES_PASSWORD=pw\n"
    )
    result = subprocess.run(
        ["docker", "compose", "config", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    environment = yaml.safe_load(result.stdout)["services"]["proxy"]["environment"]
    assert environment["GEMINI_API_KEY"] == "g-key"
    assert environment["DATA_DIR"] == "/data"
    assert environment["POSTGRES_URL"] == "postgresql://batchproxy:pw@db:5432/batchproxy"
