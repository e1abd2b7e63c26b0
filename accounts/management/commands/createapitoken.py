from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import api_token_create

DEFAULT_NAME = "created by manage.py createapitoken"


class Command(BaseCommand):
    help = (
        "Create an API token for USER and print it on stdout, alone, once: it is stored "
        "hashed and cannot be shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="USER", help="The user the token acts as.")
        parser.add_argument("--name", default=DEFAULT_NAME, help="What the token is for.")

    def handle(self, *args: object, **options: Any) -> None:
        username = options["username"]
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive: its tokens would not work.")
        try:
            _, raw = api_token_create(user=user, name=options["name"])
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        self.stdout.write(raw)
