import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django_q.tasks import async_task

from batches_app import upstreams
from batchproxy.fakes.anthropic import FakeAnthropic
from batchproxy.fakes.bedrock import FakeBedrock
from batchproxy.fakes.fireworks import FakeFireworks
from batchproxy.fakes.gemini import FakeGemini
from batchproxy.fakes.groq import FakeGroq
from batchproxy.fakes.mistral import FakeMistral
from batchproxy.fakes.openai import FakeOpenAI, new_webhook_secret
from batchproxy.fakes.together import FakeTogether
from batchproxy.fakes.vertex import FakeVertex
from batchproxy.fakes.xai import FakeXai
from batchproxy.tryout import FAKE_MODELS, tryout_path, tryout_record
from ops_app.checks import startup_refusal
from ops_app.deploy import database_wait, migrations_apply
from requests_app.operators import admin_exists, createsuperuser_command, superuser_ensure

# The fakes a try-out starts, by upstream kind, and their names on screen; the models each
# serves are batchproxy/tryout.py's FAKE_MODELS.
FAKES = {
    "openai": (FakeOpenAI, "OpenAI"),
    "anthropic": (FakeAnthropic, "Anthropic"),
    "vertex": (FakeVertex, "Vertex AI"),
    "gemini": (FakeGemini, "Gemini"),
    "groq": (FakeGroq, "Groq"),
    "together": (FakeTogether, "Together"),
    "mistral": (FakeMistral, "Mistral"),
    "fireworks": (FakeFireworks, "Fireworks"),
    "xai": (FakeXai, "xAI"),
}
if importlib.util.find_spec("moto") is not None:  # its S3 (a test dependency)
    FAKES["bedrock"] = (FakeBedrock, "Bedrock")


def _listening(host: str, port: int) -> bool:
    if host in ("0.0.0.0", "::"):  # noqa: S104
        host = "127.0.0.1"
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


class Command(BaseCommand):
    help = (
        "Apply migrations, then run the web server (gunicorn with uvicorn's worker, port 9487) "
        "and the scheduler (django-q2's qcluster) together until stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 9487)))
        parser.add_argument(
            "--host",
            default=os.environ.get("HOST", ""),
            help="the address to listen on (default: HOST, else 127.0.0.1 in a try-out, whose "
            "key anyone reaching it could use, and every interface otherwise)",
        )
        parser.add_argument(
            "--role",
            choices=["all", "web", "scheduler", "migrate"],
            default="all",
            help="run only the web server or only the scheduler (default: both); `migrate`: "
            "apply the migrations and exit (the one job of a deploy, with RUN_MIGRATIONS=false "
            "on the others)",
        )
        parser.add_argument(
            "--fake-upstreams",
            "--fake-openai",
            dest="fake_upstreams",
            action="store_true",
            help="a try-out: start the built-in fakes (OpenAI; Anthropic for claude-*; Gemini "
            "for gemini-*) and send every batch to them instead of to a provider",
        )
        parser.add_argument(
            "--fake-step-seconds",
            type=float,
            default=0.5,
            help="in a try-out: seconds a fake spends in each batch status",
        )
        parser.add_argument("--no-migrate", action="store_true")
        parser.add_argument(
            "--wait-for-db",
            type=float,
            default=float(os.environ.get("DB_WAIT_SECONDS", 60)),
            help="seconds to wait for the database to accept connections (default 60)",
        )

    def handle(
        self,
        *args,
        port: int,
        host: str,
        role: str,
        fake_upstreams: bool,
        fake_step_seconds: float,
        no_migrate: bool,
        wait_for_db: float,
        **options,
    ) -> None:
        # A try-out's key and fakes are for this machine: loopback unless asked otherwise.
        host = host or ("127.0.0.1" if fake_upstreams else "0.0.0.0")  # noqa: S104
        env = dict(os.environ, PORT=str(port), HOST=host)
        if role == "migrate":
            # A deploy's one-shot job: needs the database only, no upstream key.
            database_wait(seconds=wait_for_db, say=self.stdout.write)
            migrations_apply(say=self.stdout.write)
            if superuser_ensure():
                self.stdout.write("Created the admin account named by DJANGO_SUPERUSER_USERNAME.")
            return
        if fake_upstreams:
            fakes = {
                kind: fake(step_seconds=fake_step_seconds).start()
                for kind, (fake, _) in FAKES.items()
            }
            # Recorded in the data directory: its processes (these children, flush_batches in
            # another shell, a scheduler started alone) read it and send to these fakes only.
            tryout_record(settings.DATA_DIR, fakes={kind: fake.url for kind, fake in fakes.items()})
            env |= self._try_out_waits(fakes["openai"], port)
            self.stdout.write(
                f"Try-out mode: batches go to the built-in fake OpenAI at {fakes['openai'].url}"
            )
            for kind, fake in fakes.items():
                if kind != "openai":
                    models = ", ".join(FAKE_MODELS[kind])
                    self.stdout.write(
                        f"  and {models} models to the built-in fake {FAKES[kind][1]} at {fake.url}"
                    )
            self.stdout.write(
                "Try-out waits: BATCH_MAX_WAIT={BATCH_MAX_WAIT} s, TICK_SECONDS={TICK_SECONDS} s, "
                "POLL_INTERVAL={POLL_INTERVAL} s; ".format(**env)
                + f"a fake OpenAI batch takes {3 * fake_step_seconds:g} s and its end comes "
                "back as a webhook to /webhooks/openai; the other fakes' take no longer and are "
                "polled"
            )
        elif settings.TRY_OUT is not None:
            raise CommandError(
                f"{settings.DATA_DIR} is in try-out mode: its queued requests were meant for the "
                "built-in fakes. Run `serve --fake-openai` again, use another DATA_DIR for real "
                f"traffic, or delete {tryout_path(settings.DATA_DIR)} to send them upstream."
            )
        elif (refusal := upstreams.upstream_refusal()) is not None:
            raise CommandError(refusal)
        if (refusal := startup_refusal()) is not None:  # read after the try-out is recorded
            raise CommandError(refusal)
        if not settings.ENV_API_KEY_HASHES:
            self.stderr.write(
                "No BATCH_SERVER_API_KEY set: only keys made with `manage.py create_api_key` work."
            )
        database_wait(seconds=wait_for_db, say=self.stdout.write)
        if no_migrate or not settings.RUN_MIGRATIONS:
            self.stdout.write("Migrations: left to the deploy's migrate job (not run here).")
        else:
            # Under a lock: several containers starting together migrate once.
            migrations_apply(say=self.stdout.write)
        if superuser_ensure():
            self.stdout.write("Created the admin account named by DJANGO_SUPERUSER_USERNAME.")
        commands = []
        if role in ("all", "web"):
            commands.append(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    str(settings.BASE_DIR / "batchproxy" / "gunicorn.conf.py"),
                ]
            )
        if role in ("all", "scheduler"):
            commands.append([sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"])
        if role in ("all", "scheduler"):
            # django-q2's scheduler first wakes 30 s after start: start the tick chain now.
            async_task("batches_app.tasks.tick", q_options={"task_name": "batchproxy.tick"})
        fake_step = fake_step_seconds if fake_upstreams else None
        started = self._started_text(role=role, port=port, env=env, fake_step=fake_step)
        # The children open their own connections; this one would only sit idle.
        connections.close_all()
        raise SystemExit(self._supervise(commands, env, started=started, port=port))

    def _started_text(self, *, role: str, port: int, env: dict, fake_step: float | None) -> str:
        """Where to point the SDK and the browser, and what an operator still has to do."""
        if role == "scheduler":
            return "batchproxy scheduler running (role: scheduler)"
        host = env["HOST"]
        everywhere = host in ("0.0.0.0", "::")  # noqa: S104
        # Listening on every address: this machine's own is the one to click.
        base = f"http://{'127.0.0.1' if everywhere else host}:{port}"
        listening = "every interface" if everywhere else f"{host} only"
        lines = [
            f"batchproxy running (role: {role}) at {base}/ (listening on {listening})",
            f"  SDK base URL: {base}/v1",
            f"  Admin:        {base}/{settings.ADMIN_URL}",
            f"  Dashboard:    {base}/{settings.ADMIN_URL}dashboard/",
        ]
        if admin_exists():
            lines.append("  Admin account: exists.")
        else:
            lines.append(f"  Admin account: none yet. Make one: {createsuperuser_command()}")
        if fake_step is not None:
            wait = float(env.get("BATCH_MAX_WAIT", settings.BATCH_MAX_WAIT))
            tick = float(env.get("TICK_SECONDS", settings.TICK_SECONDS))
            poll = float(env.get("POLL_INTERVAL", settings.POLL_INTERVAL))
            # Flushed within a tick of BATCH_MAX_WAIT, 3 steps in the fake, seen within a poll
            # (sooner by webhook), served at the caller's next repeat (about a tick later).
            slowest = wait + tick + 3 * fake_step + poll + tick
            lines.append(f"  Try-out pace: a new call is answered within about {slowest:.0f} s.")
        return "\n".join(lines)

    @staticmethod
    def _try_out_waits(fake: FakeOpenAI, port: int) -> dict:
        """Short waits, so that a try-out call is answered in seconds (the environment wins)."""
        waits = {"BATCH_MAX_WAIT": "1", "TICK_SECONDS": "1", "POLL_INTERVAL": "1"}
        waits = {name: os.environ.get(name, value) for name, value in waits.items()}
        secret = new_webhook_secret()
        url = f"http://127.0.0.1:{port}/webhooks/openai"
        fake.configure(webhook_url=url, webhook_secret=secret)
        return waits | {"OPENAI_WEBHOOK_SECRET": secret}

    def _supervise(self, commands: list[list[str]], env: dict, *, started: str, port: int) -> int:
        """Run the children; when one ends or a signal comes, stop them all.

        `started` is printed once the web server listens (at once without one), after
        gunicorn's own start-up lines, so that it is the last thing on the screen.
        """
        # Our own fixed argument lists: nothing from the outside reaches them.
        children = [
            subprocess.Popen(cmd, env=env, cwd=settings.BASE_DIR)  # noqa: S603
            for cmd in commands
        ]
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        web = any("gunicorn" in command for command in commands)
        while not stopping and all(child.poll() is None for child in children):
            if started and (not web or _listening(env["HOST"], port)):
                self.stdout.write(started)
                started = ""
            time.sleep(0.5)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
        return 0 if stopping else max(child.returncode or 0 for child in children) or 1
