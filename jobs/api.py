"""The job endpoints of the HTTP API (/api/v1/jobs/...): create, read and finish a job.

Mounted on the one NinjaAPI in trainmon/api.py, whose error handlers (trainmon/api_errors.py)
turn the exceptions raised here into JSON errors.
"""

from __future__ import annotations

from ninja import Router, Status

from jobs.api_schemas import FinishIn, JobIn, JobOut
from jobs.models import TrainingJob
from jobs.selectors import job_get_owned
from jobs.services import experiment_get_or_create, job_complete, job_create, job_fail
from trainmon.api_errors import HTTP_CONFLICT, ApiError, responses
from trainmon.http import ApiRequest

router = Router(tags=["jobs"])


@router.post("/jobs/", response=responses({201: JobOut}), url_name="job_create")
def create_job(request: ApiRequest, payload: JobIn) -> Status[JobOut]:
    """Create an external job, running at once; report its points with POST .../metrics/.

    Its length (total_epochs and steps_per_epoch, both or neither) is optional: a hint for
    progress and ETA, never a limit.
    """
    fields = payload.model_dump(exclude={"experiment"})
    experiment = (
        None
        if payload.experiment is None
        else experiment_get_or_create(user=request.auth, name=payload.experiment)
    )
    job = job_create(
        owner=request.auth,
        source=TrainingJob.Source.EXTERNAL,
        start=True,
        experiment=experiment,
        **fields,
    )
    return Status(201, JobOut.of(job, request))


@router.get("/jobs/{int:job_id}/", response=responses({200: JobOut}), url_name="job")
def get_job(request: ApiRequest, job_id: int) -> JobOut:
    """A job's status and progress."""
    return JobOut.of(job_get_owned(user=request.auth, job_id=job_id), request)


@router.post(
    "/jobs/{int:job_id}/finish/",
    response=responses({200: JobOut}, HTTP_CONFLICT),
    url_name="job_finish",
)
def finish_job(request: ApiRequest, job_id: int, payload: FinishIn) -> JobOut:
    """Mark an external job completed or failed (with a reason). A finished job answers 409."""
    job = job_reportable(job_get_owned(user=request.auth, job_id=job_id))
    if payload.status == "completed":
        job_complete(job=job)
    else:
        job_fail(job=job, reason=payload.reason or "Reported failed by the training script.")
    return JobOut.of(job, request)


def job_reportable(job: TrainingJob) -> TrainingJob:
    """`job`, if the API may report on it (external, not finished); ApiError 409 otherwise."""
    if job.source != TrainingJob.Source.EXTERNAL:
        raise ApiError(
            HTTP_CONFLICT,
            f"Job {job.pk} is simulated: only external jobs take reports from the API.",
            {"status": job.status},
        )
    if job.is_terminal:
        reason = f" ({job.failure_reason})" if job.failure_reason else ""
        raise ApiError(
            HTTP_CONFLICT, f"Job {job.pk} is {job.status}{reason}.", {"status": job.status}
        )
    return job
