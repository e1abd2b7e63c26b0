"""An expired session meets htmx: the whole page goes to login, not a fragment of it."""

from __future__ import annotations

import pytest

from tests.support.factories import TrainingJobFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/?q=bert", "/jobs/{pk}/poll/?after=-1"])
def test_an_anonymous_htmx_request_redirects_the_page_to_login(client, user, path):
    job = TrainingJobFactory(owner=user)
    response = client.get(
        path.format(pk=job.pk),
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver/jobs/{job.pk}/"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/accounts/login/?next=/jobs/{job.pk}/"
    assert b"<form" not in response.content


def test_a_plain_anonymous_request_still_gets_the_ordinary_redirect(client):
    response = client.get("/jobs/new/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/jobs/new/"
