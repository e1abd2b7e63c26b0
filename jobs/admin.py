from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import Count, F, Field, FloatField, QuerySet
from django.db.models.functions import Cast
from django.http import HttpRequest
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from jobs.display import job_progress, time_ago
from jobs.forms import HyperparametersField, bind_to_service
from jobs.models import Experiment, TrainingJob
from jobs.services import (
    EDITABLE_FIELDS,
    JOB_ACTIONS,
    JOB_BOUNDS,
    USER_ACTIONS,
    JobAction,
    JobTransitionError,
    job_build,
    job_create,
    job_delete,
    job_transition,
    job_update,
    job_update_check,
)

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec

# The change page shows this many of the newest points: one indexed query, never the history.
LATEST_POINTS = 20
# The job page lists at most this many of its metric keys.
KEYS_SHOWN = 100
COMPACT_TIME = "%Y-%m-%d %H:%M"
# An action on hundreds of jobs names the first few refusals and counts the rest.
REFUSALS_SHOWN = 5

SIMULATION_FIELDS = (
    "total_epochs",
    "steps_per_epoch",
    "steps_per_tick",
    "initial_loss",
    "final_loss",
    "decay_rate",
    "seed",
    "base_learning_rate",
    "warmup_steps",
    "diverge_at_step",
)

# Left blank on the add form, job_create chooses them from the job's length.
SERVICE_DEFAULTS = ("decay_rate", "seed", "warmup_steps")


class TrainingJobAddForm(forms.ModelForm[TrainingJob]):
    """The service's parameters; `job_create` both validates them and creates the job."""

    start = forms.BooleanField(
        required=False, initial=True, help_text="Run at once; otherwise the job waits, queued."
    )

    class Meta:
        model = TrainingJob
        fields = (
            "name",
            "owner",
            "description",
            "model_name",
            "dataset",
            "hyperparameters",
            "source",
            *SIMULATION_FIELDS,
        )
        help_texts = {
            "decay_rate": "Per-step loss decay. Blank: 5 / total steps (spans the job).",
            "seed": "Blank: random.",
            "warmup_steps": "Blank: 5% of the steps, at most 500.",
            "diverge_at_step": "Make the loss blow up from this step on, so the job fails.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Blank means "the service's default", so the model's own defaults are not shown.
        for name in SERVICE_DEFAULTS:
            self.fields[name].required = False
            self.initial.pop(name, None)

    def service_arguments(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in (*self.Meta.fields, "start")}

    def clean(self) -> dict[str, Any] | None:
        cleaned_data = super().clean()
        if not self.errors:
            # The service is the validator, so the admin refuses exactly what the web form,
            # the API and createjob refuse; save_model then creates the job through it.
            _add_service_errors(self, job_build, **self.service_arguments())
        return cleaned_data


class TrainingJobChangeForm(forms.ModelForm[TrainingJob]):
    """An existing job's editable fields, checked by `job_update` as it will save them."""

    class Meta:
        model = TrainingJob
        fields = EDITABLE_FIELDS

    def service_arguments(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.changed_data if name in self.fields}

    def clean(self) -> dict[str, Any] | None:
        cleaned_data = super().clean()
        if not self.errors:
            _add_service_errors(self, job_update_check, data=self.service_arguments())
        return cleaned_data


def _add_service_errors(
    form: forms.BaseForm, check: Callable[..., object], **arguments: Any
) -> None:
    # The service is the validator: its messages land on the fields they name.
    try:
        check(**arguments)
    except ValidationError as error:
        for field, field_errors in error.message_dict.items():
            form.add_error(field if field in form.fields else NON_FIELD_ERRORS, field_errors)


class TrainingJobChangeList(ChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: Any = None
    ) -> QuerySet[TrainingJob]:
        # The list never shows hyperparameters, and they may be kilobytes per job.
        return super().get_queryset(request, exclude_parameters).defer("hyperparameters")


def _transition_action(action: JobAction) -> Callable[..., None]:
    """The admin action for `action` (in the style of contrib.admin.actions.delete_selected)."""
    only = f" ({next(iter(action.sources))})" if len(action.sources) == 1 else ""

    @admin.action(description=f"{action.verb} selected jobs{only}", permissions=["change"])
    def transition_selected(
        modeladmin: admin.ModelAdmin[TrainingJob],
        request: HttpRequest,
        queryset: QuerySet[TrainingJob],
    ) -> None:
        changed = 0
        refusals: list[str] = []
        for job in queryset.order_by("pk"):
            try:
                job_transition(job=job, action=action.name)
            except JobTransitionError as error:
                refusals.append(str(error))
            else:
                changed += 1
        past = action.past_tense
        if changed:
            modeladmin.message_user(
                request, f"{past.capitalize()} {changed} job{pluralize(changed)}.", messages.SUCCESS
            )
        if refusals:
            shown = " ".join(refusals[:REFUSALS_SHOWN])
            more = len(refusals) - REFUSALS_SHOWN
            modeladmin.message_user(
                request,
                f"{len(refusals)} job{pluralize(len(refusals))} not {past}: {shown}"
                + (f" (and {more} more)" if more > 0 else ""),
                messages.WARNING,
            )

    transition_selected.__name__ = f"{action.name}_jobs"
    return transition_selected


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin[TrainingJob]):
    list_display = (
        "name",
        "status",
        "owner",
        "progress",
        "last_loss_display",
        "created",
        "updated",
        "live_link",
    )
    list_filter = (
        "status",
        "source",
        ("owner", admin.RelatedOnlyFieldListFilter),
        "created_at",
    )
    list_select_related = ("owner",)
    search_fields = ("name",)
    autocomplete_fields = ("owner",)
    actions = tuple(_transition_action(JOB_ACTIONS[name]) for name in USER_ACTIONS)
    add_form = TrainingJobAddForm
    form = TrainingJobChangeForm
    add_fieldsets: _FieldsetSpec = (
        (None, {"fields": ("name", "owner", "start")}),
        ("Labels", {"fields": ("description", "model_name", "dataset", "hyperparameters")}),
        ("Simulation", {"fields": ("source", *SIMULATION_FIELDS)}),
    )
    fieldsets = (
        (None, {"fields": ("name", "owner", "status", "failure_reason")}),
        ("Labels", {"fields": ("description", "model_name", "dataset", "hyperparameters")}),
        (
            "Progress",
            {
                "fields": (
                    "progress",
                    "current_step",
                    "last_loss",
                    "best_loss",
                    "best_loss_step",
                    "last_accuracy",
                    "last_learning_rate",
                    "steps_per_second",
                    "last_reported_at",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "updated_at",
                )
            },
        ),
        ("Latest points", {"fields": ("latest_points",)}),
        ("Metric keys", {"fields": ("keys_table",)}),
        ("Simulation", {"fields": ("source", *SIMULATION_FIELDS), "classes": ("collapse",)}),
    )

    def formfield_for_dbfield(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        if db_field.name == "hyperparameters":
            # Refuses what PostgreSQL's jsonb cannot store (NUL, NaN) with a message, not a 500.
            kwargs["form_class"] = HyperparametersField
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is not None and db_field.name in JOB_BOUNDS:
            # The service's range and message, as on the web form and in the API.
            bind_to_service(field, db_field.name)
        return field

    def get_form(
        self,
        request: HttpRequest,
        obj: TrainingJob | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[forms.ModelForm[TrainingJob]]:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: TrainingJob | None = None) -> _FieldsetSpec:
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(
        self, request: HttpRequest, obj: TrainingJob | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        fields = flatten_fieldsets(self.fieldsets)
        return tuple(field for field in fields if field not in EDITABLE_FIELDS)

    def view_on_site(self, obj: TrainingJob) -> str:
        return obj.get_absolute_url()

    def save_model(
        self,
        request: HttpRequest,
        obj: TrainingJob,
        form: TrainingJobAddForm | TrainingJobChangeForm,
        change: bool,
    ) -> None:
        if not change:
            job = job_create(**form.service_arguments())
            obj.pk = job.pk
            obj.refresh_from_db()
            return
        # Only the edited columns (job_update): a full save would write back progress and status
        # read before a concurrent tick or action changed them.
        if changes := form.service_arguments():
            job_update(job=obj, data=changes)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TrainingJobChangeList

    def delete_model(self, request: HttpRequest, obj: TrainingJob) -> None:
        job_delete(job=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        for job in queryset:
            job_delete(job=job)

    def get_deleted_objects(
        self, objs: Sequence[TrainingJob] | QuerySet[TrainingJob], request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[str]]:
        # Django's default lists every related point, a line each: a long run has millions.
        jobs = list(objs)
        metric_model = TrainingJob._meta.get_field("metrics").related_model
        metric_opts = metric_model._meta
        points = dict(
            metric_model._default_manager.filter(job__in=jobs)
            .order_by()
            .values_list("job")
            .annotate(Count("pk"))
        )
        deleted = [
            [f"Training job: {job}", [f"{points.get(job.pk, 0):,} metric points"]] for job in jobs
        ]
        # str(): the names are lazy translations; the admin's template shows them as text.
        counts = {str(TrainingJob._meta.verbose_name_plural): len(jobs)}
        perms_needed: set[str] = set()
        if total := sum(points.values()):
            counts[str(metric_opts.verbose_name_plural)] = total
            codename = get_permission_codename("delete", metric_opts)
            if not request.user.has_perm(f"{metric_opts.app_label}.{codename}"):
                perms_needed.add(str(metric_opts.verbose_name_plural))
        return deleted, counts, perms_needed, []

    # --- columns and read-only panels ---------------------------------------------------------

    @admin.display(
        description="Progress",
        ordering=Cast("current_step", FloatField()) / (F("total_epochs") * F("steps_per_epoch")),
    )
    def progress(self, job: TrainingJob) -> SafeString:
        progress = job_progress(job)
        if progress.percent is None:
            # No declared length: a <progress> without a value is the indeterminate bar.
            return format_html(
                '<span style="white-space: nowrap" title="{}">'
                '<progress style="width: 5em"></progress> {}</span>',
                progress.value_text,
                progress.label,
            )
        return format_html(
            '<span style="white-space: nowrap" title="{}">'
            '<progress value="{}" max="100" style="width: 5em"></progress> {}</span>',
            progress.steps_text,
            progress.percent,
            progress.label,
        )

    @admin.display(description="Last loss", ordering="last_loss")
    def last_loss_display(self, job: TrainingJob) -> str | None:
        return None if job.last_loss is None else f"{job.last_loss:.4g}"

    @admin.display(description="Created", ordering="created_at")
    def created(self, job: TrainingJob) -> str:
        return timezone.localtime(job.created_at).strftime(COMPACT_TIME)

    @admin.display(description="Updated", ordering="updated_at")
    def updated(self, job: TrainingJob) -> str:
        return time_ago(job.updated_at)

    @admin.display(description="Live")
    def live_link(self, job: TrainingJob) -> SafeString:
        return format_html('<a href="{}">View live</a>', job.get_absolute_url())

    @admin.display(description="Latest points")
    def latest_points(self, job: TrainingJob) -> SafeString | str:
        # Through the reverse relation: the jobs app never imports metrics.
        points = list(
            job.metrics.order_by("-step").values_list(
                "step", "epoch", "loss", "accuracy", "learning_rate"
            )[:LATEST_POINTS]
        )
        if not points:
            return "No points yet."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{step:,}",
                    "-" if epoch is None else epoch,
                    f"{loss:.5g}",
                    _optional(accuracy),
                    _optional(rate),
                )
                for step, epoch, loss, accuracy, rate in points
            ),
        )
        return format_html(
            "<table><thead><tr><th>Step</th><th>Epoch</th><th>Loss</th><th>Accuracy</th>"
            "<th>Learning rate</th></tr></thead><tbody>{}</tbody></table>"
            '<p class="help">The newest {} points, latest first. The whole history: the '
            '<a href="{}">live page</a>, or every point as <a href="{}">CSV</a> or '
            '<a href="{}">JSON</a>.</p>',
            rows,
            len(points),
            job.get_absolute_url(),
            reverse("metrics:export_csv", args=[job.pk]),
            reverse("metrics:export_json", args=[job.pk]),
        )

    @admin.display(description="Metric keys")
    def keys_table(self, job: TrainingJob) -> SafeString | str:
        # One query, at most KEYS_SHOWN + 1 rows (the extra one says there are more): the
        # statistics are kept on the key rows by the write path, so no point is read.
        keys = list(
            job.metric_keys.order_by("name").values_list(
                "name", "count", "last_step", "last_value", "min_value", "max_value"
            )[: KEYS_SHOWN + 1]
        )
        if not keys:
            return "No named metrics."
        more = len(keys) > KEYS_SHOWN
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    name,
                    f"{count:,}",
                    "-" if last_step is None else f"{last_step:,}",
                    _optional(last),
                    _optional(low),
                    _optional(high),
                )
                for name, count, last_step, last, low, high in keys[:KEYS_SHOWN]
            ),
        )
        return format_html(
            "<table><thead><tr><th>Key</th><th>Points</th><th>Last step</th><th>Last</th>"
            "<th>Min</th><th>Max</th></tr></thead><tbody>{}</tbody></table>"
            '<p class="help">{}Min and max are over finite values. Every named point of '
            'this job as <a href="{}">CSV</a> or <a href="{}">JSON</a>.</p>',
            rows,
            f"The first {KEYS_SHOWN} keys by name. " if more else "",
            reverse("metrics:export_keys_csv", args=[job.pk]),
            reverse("metrics:export_keys_json", args=[job.pk]),
        )


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin[Experiment]):
    """Experiments group jobs (MLflow's experiments); renamed and deleted through MLflow."""

    list_display = ("name", "owner", "lifecycle", "is_default", "created_at")
    list_filter = ("lifecycle", "is_default")
    search_fields = ("name", "owner__username")
    readonly_fields = ("is_default", "created_at", "updated_at")
    list_select_related = ("owner",)
