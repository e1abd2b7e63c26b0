from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.forms.fields import InvalidJSONInput

from jobs.models import TrainingJob
from jobs.services import (
    MAX_EPOCHS,
    MAX_SEED,
    MAX_STEPS_PER_EPOCH,
    MAX_STEPS_PER_TICK,
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
        if problem := unstorable_json(value):
            raise ValidationError(problem, code="unstorable")


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
)


class JobCreateForm(forms.Form):
    """A simulated job. Validation of values lives in jobs.services.job_create."""

    name = forms.CharField(
        max_length=NAME_MAX_LENGTH,
        help_text="Shown on the dashboard; searchable.",
        widget=forms.TextInput(attrs={"autofocus": True, "placeholder": "resnet18-cifar10-lr3e-4"}),
    )
    total_epochs = forms.IntegerField(
        label="Epochs",
        min_value=1,
        max_value=MAX_EPOCHS,
        initial=10,
        help_text="Passes over the data.",
    )
    steps_per_epoch = forms.IntegerField(
        min_value=1,
        max_value=MAX_STEPS_PER_EPOCH,
        initial=100,
        help_text="Optimizer steps in one epoch.",
    )
    steps_per_tick = forms.IntegerField(
        label="Speed",
        min_value=1,
        max_value=MAX_STEPS_PER_TICK,
        initial=10,
        help_text="Steps simulated per tick (one tick a second).",
    )
    start = forms.BooleanField(
        label="Start right away",
        required=False,
        initial=True,
        help_text="Leave unticked to create the job queued and start it from its page.",
    )

    initial_loss = forms.FloatField(initial=2.5, help_text="Loss at step 0.")
    final_loss = forms.FloatField(
        initial=0.3, min_value=0, help_text="The floor the loss decays towards."
    )
    decay_rate = forms.FloatField(
        required=False,
        help_text="Per-step decay of the loss. Blank: chosen so the decay spans the job.",
    )
    seed = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_SEED,
        help_text="Same seed, same curve. Blank: random.",
    )
    base_learning_rate = forms.FloatField(
        label="Base learning rate",
        initial=1e-3,
        min_value=0,
        help_text="Peak of the warm-up + cosine schedule.",
    )
    warmup_steps = forms.IntegerField(
        label="Warm-up steps",
        required=False,
        min_value=0,
        help_text="Linear warm-up length. Blank: 5 % of the job, at most 500.",
    )
    diverge_at_step = forms.IntegerField(
        required=False,
        min_value=0,
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

    def create_job(self, *, owner: AbstractBaseUser) -> TrainingJob | None:
        """Create the job through the service; on a rule it rejects, put its messages on the
        fields and return None."""
        if not self.is_valid():
            return None
        data = dict(self.cleaned_data)
        try:
            return job_create(owner=owner, **data)
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                self.add_error(field if field in self.fields else NON_FIELD_ERRORS, messages)
            return None
