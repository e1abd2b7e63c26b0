from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs.models import TrainingJob
from metrics.models import MetricKey, NamedMetric, TrainingMetric

PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def saved(user, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            user.save()


class TrainingJobFactory(factory.django.DjangoModelFactory):
    """A running simulated job; pass status=... for others."""

    class Meta:
        model = TrainingJob

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"resnet-run-{n}")
    model_name = "resnet18"
    dataset = "cifar10"
    status = TrainingJob.Status.RUNNING
    total_epochs = 3
    steps_per_epoch = 20
    steps_per_tick = 10
    decay_rate = factory.LazyAttribute(
        lambda job: 5.0 / max((job.total_epochs or 1) * (job.steps_per_epoch or 1), 1)
    )
    seed = factory.Sequence(lambda n: 1000 + n)
    warmup_steps = 5
    started_at = factory.LazyFunction(timezone.now)


class TrainingMetricFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TrainingMetric

    job = factory.SubFactory(TrainingJobFactory)
    step = factory.Sequence(lambda n: n)
    # A job without a declared length has no epochs; the headline column still needs one.
    epoch = factory.LazyAttribute(lambda point: point.job.epoch_at(point.step) or 1)
    loss = 1.0
    accuracy = 0.5
    learning_rate = 1e-3


class MetricKeyFactory(factory.django.DjangoModelFactory):
    """A key row alone: its stats and summary are the write path's (see metric_points)."""

    class Meta:
        model = MetricKey

    job = factory.SubFactory(TrainingJobFactory)
    name = factory.Sequence(lambda n: f"metric/{n}")


class NamedMetricFactory(factory.django.DjangoModelFactory):
    """A raw named point, around the write path: no stats, summary or ingest log."""

    class Meta:
        model = NamedMetric

    key = factory.SubFactory(MetricKeyFactory)
    step = factory.Sequence(lambda n: n)
    value = 1.0


def reload(job: TrainingJob) -> TrainingJob:
    """`job` with its fields read again from the database (what another process wrote)."""
    job.refresh_from_db()
    return job
