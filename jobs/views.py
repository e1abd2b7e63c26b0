from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from jobs import services
from jobs.forms import JobCreateForm
from jobs.models import TrainingJob
from jobs.selectors import (
    experiment_get_for_filter,
    experiment_list,
    job_count_by_status,
    job_get_visible,
    job_list_dashboard,
)
from jobs.services import JOB_ACTIONS, JobTransitionError, job_transition
from trainmon.http import HtmxHttpRequest

JOBS_PER_PAGE = 50
SEARCH_MAX_LENGTH = 200
HTTP_CONFLICT = 409


def _partial_request(request: HtmxHttpRequest) -> bool:
    # A history restore after a cache miss wants the whole page, not the fragment.
    return bool(request.htmx) and not request.htmx.history_restore_request


@require_GET
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    if status not in TrainingJob.Status.values:
        status = ""
    search = request.GET.get("q", "").strip()[:SEARCH_MAX_LENGTH]
    if "\x00" in search:
        # No one types it, and PostgreSQL refuses it in a query parameter: a 400, not a 500.
        return HttpResponseBadRequest(
            "Search text cannot contain NUL characters.", content_type="text/plain; charset=utf-8"
        )
    experiment = experiment_get_for_filter(
        user=request.user, value=request.GET.get("experiment", "")
    )
    jobs = job_list_dashboard(
        user=request.user, status=status or None, search=search or None, experiment=experiment
    )
    counts = job_count_by_status(user=request.user)
    paginator = Paginator(jobs, JOBS_PER_PAGE)
    if not search and experiment is None:
        # The counts by status already say how long the list is: no COUNT query of its own.
        paginator.count = counts[status] if status else sum(counts.values())
    page = paginator.get_page(request.GET.get("page"))
    context = {
        "page": page,
        "jobs": page.object_list,
        "polling": any(job.is_active for job in page.object_list),
        "status": status,
        "search": search,
        "summary": [(value, label, counts[value]) for value, label in TrainingJob.Status.choices],
        "total": sum(counts.values()),
        "statuses": TrainingJob.Status.choices,
        "experiment": experiment,
        "experiments": experiment_list(user=request.user),
    }
    if _partial_request(request):
        response = render(request, "jobs/_dashboard_update.html", context)
    else:
        response = render(request, "jobs/dashboard.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@require_http_methods(["GET", "POST"])
def job_new(request: HtmxHttpRequest) -> HttpResponse:
    form = JobCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and (job := form.create_job(owner=request.user)):
        verb = "Started" if job.status == TrainingJob.Status.RUNNING else "Created"
        messages.success(request, f"{verb} “{job.name}”.")
        return redirect(job)
    status = 400 if form.is_bound else 200
    return render(request, "jobs/new.html", {"form": form}, status=status)


@require_GET
def job_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    job = job_get_visible(user=request.user, job_id=pk)
    return render(request, "jobs/detail.html", {"job": job})


@require_POST
def job_action(request: HtmxHttpRequest, pk: int, action: str) -> HttpResponse:
    job = job_get_visible(user=request.user, job_id=pk)
    # Only jobs.services.USER_ACTIONS route here (jobs/urls.py).
    described = JOB_ACTIONS[action]
    try:
        job_transition(job=job, action=action)
    except JobTransitionError as error:
        return _action_answer(request, job, str(error), "error", status=HTTP_CONFLICT)
    message = f"{described.past_tense.capitalize()} “{job.name}”."
    return _action_answer(request, job, message, described.tone)


@require_POST
def job_delete(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    job = job_get_visible(user=request.user, job_id=pk)
    name = job.name
    services.job_delete(job=job)
    messages.success(request, f"Deleted “{name}”.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("jobs:dashboard"))
    return redirect("jobs:dashboard")


def _action_answer(
    request: HtmxHttpRequest, job: TrainingJob, message: str, level: str, status: int = 200
) -> HttpResponse:
    if not request.htmx:
        # A plain form post (no JavaScript): the page again, with the message as a toast.
        getattr(messages, level)(request, message)
        if status == HTTP_CONFLICT:
            return render(request, "jobs/detail.html", {"job": job}, status=status)
        return redirect(job, permanent=False)
    # The header is the buttons' hx-target; progress and stats follow out of band.
    response = render(
        request,
        "jobs/_job_live.html",
        {"job": job, "with_header": True, "header_oob": False},
        status=status,
    )
    return trigger_client_event(response, "toast", {"message": message, "level": level})
