"""``POST /signups`` with a JSON body schedules the welcome email."""

import json

from django.apps import apps
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    ductape = apps.get_app_config("jobs").ductape
    try:
        handle = ductape.job.schedule(
            env="prd",
            product_tag="my-app",
            event="send_welcome_email",
            retries=3,
            input=json.loads(request.body),
        )
    except ValueError as exc:  # not JSON, or refused by schedule() (a JobValidationError)
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"job_id": handle.job_id, "status": handle.status}, status=202)
