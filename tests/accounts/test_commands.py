from __future__ import annotations

from functools import partial

import pytest
from django.core.management import CommandError

from accounts.models import ApiToken
from accounts.services import api_token_authenticate
from tests.support.commands import command_output

pytestmark = pytest.mark.django_db


run = partial(command_output, "createapitoken")


def test_prints_a_working_token_alone(user):
    output = run(user.username)
    raw = output.strip()
    assert output == raw + "\n"
    assert raw.startswith("tm_")
    assert api_token_authenticate(raw=raw) == user
    assert ApiToken.objects.get(user=user).name == "created by manage.py createapitoken"


def test_takes_a_name(user):
    run(user.username, "--name", "cluster")
    assert ApiToken.objects.get(user=user).name == "cluster"


def test_an_unknown_user_is_a_command_error():
    with pytest.raises(CommandError, match="No user 'ghost'"):
        run("ghost")
    assert not ApiToken.objects.exists()


def test_an_inactive_user_is_a_command_error(user):
    user.is_active = False
    user.save()
    with pytest.raises(CommandError, match="inactive"):
        run(user.username)


def test_a_blank_name_is_a_command_error(user):
    with pytest.raises(CommandError, match="name"):
        run(user.username, "--name", " ")
