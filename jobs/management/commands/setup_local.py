from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from jobs.models import TrainingJob

ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = (
        "Prepare a local trainmon (used by `make run`): create an admin user if there is none, "
        "and seed demo jobs into an empty database. Prints how to log in."
    )

    def handle(self, *args: object, **options: Any) -> None:
        password_file = settings.VAR_DIR / "admin-password"
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(ADMIN_USERNAME, "", password)
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
        if not TrainingJob.objects.exists():
            call_command("seed_demo", owner=ADMIN_USERNAME, stdout=self.stderr)

        login = (
            f"user {ADMIN_USERNAME!r}, password in {password_file}"
            if password_file.exists()
            else "your existing superuser"
        )
        self.stdout.write(
            self.style.SUCCESS("trainmon is starting at http://127.0.0.1:8000/")
            + f"\n  log in as {login}"
            + "\n  admin: http://127.0.0.1:8000/admin/   API docs: http://127.0.0.1:8000/api/v1/docs"
        )
