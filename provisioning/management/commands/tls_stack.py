import os
import shutil
import subprocess
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from connector.models import Connector
from provisioning.tlsstack import nginx_config


class Command(BaseCommand):
    help = (
        "Local HTTPS in front of the running app: a local server CA, a certificate naming the "
        "management host and every connector's device host, and nginx (--run) on --listen."
    )

    def add_arguments(self, parser):
        parser.add_argument("--listen", default="127.0.0.1:8443")
        parser.add_argument(
            "--upstream",
            default=f"127.0.0.1:{os.environ.get('PORT') or 8000}",
            help="the app's address (default: 127.0.0.1 and PORT, as scripts/serve listens)",
        )
        parser.add_argument("--dir", default=str(settings.DATA_DIR / "tls"))
        parser.add_argument("--run", action="store_true", help="(re)start nginx")
        parser.add_argument("--stop", action="store_true", help="stop nginx")

    def handle(self, *args, listen, upstream, dir, run, stop, **options):
        folder = Path(dir)
        folder.mkdir(parents=True, exist_ok=True)
        pidfile = folder / "nginx.pid"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if stop or run:
            if pidfile.exists():
                subprocess.run(  # noqa: S603 (our own nginx and config path)
                    [nginx, "-c", str(folder / "nginx.conf"), "-s", "stop"],
                    check=False,
                    capture_output=True,
                )
            if stop:
                self.stdout.write("nginx stopped")
                return
        domain = settings.DEVICE_API_DOMAIN
        names = ["localhost", "127.0.0.1"] + [
            f"{cid}.{domain}" for cid in Connector.objects.values_list("id", flat=True)
        ]
        config = nginx_config(
            folder, listen=listen, upstream=upstream, device_domain=domain, names=names
        )
        self.stdout.write(
            f"nginx config: {config}\nserver CA for curl --cacert: {folder / 'ca.pem'}"
        )
        if settings.MQTT_PORT:
            self.stdout.write(
                f"MQTT over TLS: <connector-id>.{domain}:{settings.MQTT_PORT} (the server "
                "re-reads this certificate: gdc -E " + str(folder / "ca.pem") + " mqtt …)"
            )
        if run:
            if not Path(nginx).exists():
                raise CommandError("nginx is not installed (Debian: apt install nginx-light)")
            result = subprocess.run([nginx, "-c", str(config)], capture_output=True, text=True)  # noqa: S603
            if result.returncode:
                raise CommandError(result.stderr.strip())
            port = listen.rsplit(":", 1)[-1]
            self.stdout.write(
                f"nginx serves https://localhost:{port}/ and "
                f"https://<connector-id>.{domain}:{port}/"
            )
