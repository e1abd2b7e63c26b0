from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction
from django.forms.fields import InvalidJSONInput

from jobs.models import TrainingJob
from jobs.services import (
    EXPERIMENT_NAME_MAX,
    JOB_BOUNDS,
    experiment_get_or_create,
    hyperparameters_size_problem,
    job_create,
    unstorable_json,
)

NAME_MAX_LENGTH = TrainingJob._meta.get_field("name").max_length
LABEL_MAX_LENGTH = TrainingJob._meta.get_field("model_name").max_length
HYPERPARAMETERS_EXAMPLE = '{"batch_size": 128, "optimizer": "adamw"}'


class HyperparametersField(forms.JSONField):
    """JSON that every database stores as given, refused with a message otherwise.

    Python's json module takes NaN and Infinity, "\\u0000" and lone surrogates, which
    PostgreSQL's jsonb refuses (a 500 at save time), and it raises ValueError or RecursionError,
    not JSONDecodeError, for a number past int()'s digit limit or nesting past the recursion
    limit, which forms.JSONField lets through (a 500 again).
    """

    default_error_messages = {"invalid": f"Enter valid JSON, e.g. {HYPERPARAMETERS_EXAMPLE}."}

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except (ValueError, RecursionError):
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Re-show what was typed, as typed: re-encoding a parsed value may not even be possible.
        if isinstance(data, str) and not self.disabled:
            return InvalidJSONInput(data)
        return super().bound_data(data, initial)

    def validate(self, value: Any) -> None:
        super().validate(value)
        if problem := unstorable_json(value) or hyperparameters_size_problem(value):
            raise ValidationError(problem, code="unstorable")


def bind_to_service(field: forms.Field, name: str) -> forms.Field:
    """Give `field` the service's range for `name` (jobs.services.JOB_BOUNDS): the same check
    and message as job_create, and the browser's min/max. Used by this form and the admin."""
    bound = JOB_BOUNDS[name]
    field.validators = [
        validator for validator in field.validators if not hasattr(validator, "limit_value")
    ]
    field.validators.append(bound.validate)
    field.widget.attrs.update({"min": bound.minimum, "max": bound.maximum})
    if not bound.integer:
        field.widget.attrs["step"] = "any"
    return field


def bounded_field(name: str, **kwargs: Any) -> forms.Field:
    """A form field for the service's numeric parameter `name`."""
    field_class = forms.IntegerField if JOB_BOUNDS[name].integer else forms.FloatField
    return bind_to_service(field_class(**kwargs), name)


ESSENTIAL_FIELDS = ("name", "total_epochs", "steps_per_epoch", "steps_per_tick", "start")
ADVANCED_FIELDS = (
    "initial_loss",
    "final_loss",
    "decay_rate",
    "seed",
    "base_learning_rate",
    "warmup_steps",
    "diverge_at_step",
    "model_name",
    "dataset",
    "description",
    "hyperparameters",
    "experiment",
)


class JobCreateForm(forms.Form):
    """A simulated job. Its rules are jobs.services' (JOB_BOUNDS, job_create)."""

    name = forms.CharField(
        max_length=NAME_MAX_LENGTH,
        help_text="Shown on the dashboard; searchable.",
        widget=forms.TextInput(attrs={"autofocus": True, "placeholder": "resnet18-cifar10-lr3e-4"}),
    )
    total_epochs = bounded_field(
        "total_epochs", label="Epochs", initial=10, help_text="Passes over the data."
    )
    steps_per_epoch = bounded_field(
        "steps_per_epoch", initial=100, help_text="Optimizer steps in one epoch."
    )
    steps_per_tick = bounded_field(
        "steps_per_tick",
        label="Speed",
        initial=10,
        help_text="Steps simulated per tick (one tick a second).",
    )
    start = forms.BooleanField(
        label="Start right away",
        required=False,
        initial=True,
        help_text="Leave unticked to create the job queued and start it from its page.",
    )

    initial_loss = bounded_field("initial_loss", initial=2.5, help_text="Loss at step 0.")
    final_loss = bounded_field(
        "final_loss", initial=0.3, help_text="The floor the loss decays towards."
    )
    decay_rate = bounded_field(
        "decay_rate",
        required=False,
        help_text="Per-step decay of the loss. Blank: chosen so the decay spans the job.",
    )
    seed = bounded_field("seed", required=False, help_text="Same seed, same curve. Blank: random.")
    base_learning_rate = bounded_field(
        "base_learning_rate",
        label="Base learning rate",
        initial=1e-3,
        help_text="Peak of the warm-up + cosine schedule.",
    )
    warmup_steps = bounded_field(
        "warmup_steps",
        label="Warm-up steps",
        required=False,
        help_text="Linear warm-up length. Blank: 5 % of the job, at most 500.",
    )
    diverge_at_step = bounded_field(
        "diverge_at_step",
        required=False,
        help_text="Make the loss blow up at this step, to see a failure. Blank: never.",
    )
    model_name = forms.CharField(
        label="Model",
        required=False,
        max_length=LABEL_MAX_LENGTH,
        help_text="A label, e.g. resnet18.",
    )
    dataset = forms.CharField(
        required=False, max_length=LABEL_MAX_LENGTH, help_text="A label, e.g. cifar10."
    )
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="Notes for your team."
    )
    hyperparameters = HyperparametersField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": HYPERPARAMETERS_EXAMPLE}),
        help_text="A JSON object; shown as a table on the job page and compared side by side.",
    )

    experiment = forms.CharField(
        required=False,
        max_length=EXPERIMENT_NAME_MAX,
        help_text="Groups jobs; the dashboard filters by it. Blank: Default. A new name makes one.",
    )

    def clean_hyperparameters(self) -> dict[str, Any]:
        value = self.cleaned_data["hyperparameters"]
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise ValidationError('Enter a JSON object, e.g. {"batch_size": 128}.')
        return value

    @property
    def essential_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ESSENTIAL_FIELDS]

    @property
    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ADVANCED_FIELDS]

    @property
    def advanced_has_errors(self) -> bool:
        return self.is_bound and any(name in self.errors for name in ADVANCED_FIELDS)

    def create_job(self, *, owner: User) -> TrainingJob | None:
        """Create the job through the service; on a rule it rejects, put its messages on the
        fields and return None."""
        if not self.is_valid():
            return None
        data = dict(self.cleaned_data)
        name = data.pop("experiment", "").strip()
        try:
            # Together: a job the rules refuse leaves no new experiment behind.
            with transaction.atomic():
                experiment = experiment_get_or_create(user=owner, name=name) if name else None
                return job_create(owner=owner, experiment=experiment, **data)
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                self.add_error(field if field in self.fields else NON_FIELD_ERRORS, messages)
            return None
