"""The training pages under /t/<tenant>/training/: my training (what is due, self-report with a certificate),
the matrix (people by required course, with CSV import and export), a person's record, the approval queue, and
courses with their requirements.

Changes are POSTs that call one service and redirect back with a message; a refused change shows the page again
with the reason. Everyone may reach their own training page, whatever the gate says: that is where a lapsed
person records the completion that gives them access again.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect

from portal.web.pages import TenantPageView
from tenants import access
from tenants.models import Role
from training import selectors, services
from training.forms import (
    CompletionForm,
    CourseAdoptForm,
    CourseCreateForm,
    ImportForm,
    MatrixFilterForm,
    RequirementForm,
    ReviewForm,
)
from training.models import CatalogueCourse, Completion

VIEW, MANAGE = selectors.VIEW, selectors.MANAGE


def _reasons(exc: ValidationError) -> str:
    return " ".join(str(m) for m in exc.messages)


def _record_page(view: TenantPageView, request: HttpRequest, user: Any, *, form: CompletionForm | None = None,
                 status: int = 200) -> HttpResponse:  # fmt: skip
    statuses = selectors.person_status(user=user)
    completions = selectors.completion_list(actor=request.user, user=user)
    context = {
        "person": user,
        "own": user.pk == request.user.pk,
        "statuses": statuses,
        "completions": completions,
        "courses": selectors.course_list(actor=request.user),
        "form": form or CompletionForm(),
    }
    return view.render(request, "training/record.html", context, status=status)


class MyTrainingView(TenantPageView):
    """What is due and when, my completions, and the form to report one (with its certificate)."""

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return _record_page(self, request, request.user)

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = CompletionForm(request.POST, request.FILES)
        if form.is_valid():
            course = selectors.course_get(actor=request.user, public_id=form.cleaned_data["course"])
            evidence = form.cleaned_data.get("evidence")
            try:
                completion = services.completion_record(
                    actor=request.user, user=request.user, course=course,
                    completed_on=form.cleaned_data["completed_on"], expires_on=form.cleaned_data.get("expires_on"),
                    evidence=evidence.read() if evidence else None, evidence_name=evidence.name if evidence else "",
                    note=form.cleaned_data["note"],
                )  # fmt: skip
            except ValidationError as exc:
                messages.error(request, f"Not recorded: {_reasons(exc)}")
                return _record_page(self, request, request.user, form=form, status=400)
            if completion.status == Completion.Status.PENDING:
                messages.success(
                    request, f"“{course.title}” is recorded and waits for a compliance officer's approval."
                )
            else:
                messages.success(request, f"“{course.title}” is recorded.")
            return redirect("portal:training_me", tenant=self.tenant.slug)
        messages.error(request, "Not recorded: see the reasons in the form.")
        return _record_page(self, request, request.user, form=form, status=400)


class PersonTrainingView(TenantPageView):
    """One person's record (`tenants.view_training`, or one's own)."""

    def get(self, request: HttpRequest, tenant: str, person_id: UUID) -> HttpResponse:
        user = selectors.member_get(actor=request.user, public_id=person_id)
        return _record_page(self, request, user)


class EvidenceView(TenantPageView):
    """The certificate of a completion (one's own, or any with `tenants.view_training`), decrypted; its read is
    on the audit trail before the bytes leave."""

    def get(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        completion = selectors.completion_get(actor=request.user, public_id=public_id)
        data, media_type, name = services.completion_evidence_read(actor=request.user, completion=completion)
        response = HttpResponse(data, content_type=media_type)
        extension = {"application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpg"}.get(media_type, "bin")
        response["Content-Disposition"] = f'attachment; filename="certificate-{completion.public_id}.{extension}"'
        response["X-Content-Type-Options"] = "nosniff"
        del name  # the uploaded name is not echoed into a header
        return response


class MatrixView(TenantPageView):
    """People by required course, coloured by state; filters by role and course; CSV export; CSV import for
    those who manage training."""

    required_permission = VIEW

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self._page(request)

    def _page(self, request: HttpRequest, *, import_result: Any = None, import_form: ImportForm | None = None,
              status: int = 200) -> HttpResponse:  # fmt: skip
        filters = MatrixFilterForm(request.GET or None)
        role, course = "", None
        if filters.is_valid():
            role = filters.cleaned_data.get("role") or ""
            if filters.cleaned_data.get("course"):
                course = selectors.course_get(actor=request.user, public_id=filters.cleaned_data["course"])
        matrix = selectors.training_matrix(actor=request.user, role=role, course=course)
        counts: dict[str, int] = {}
        for row in matrix.rows:
            for cell in row.cells.values():
                counts[cell.state] = counts.get(cell.state, 0) + 1
        context = {
            "matrix": matrix,
            "rows": [(row, [row.cells.get(c.pk) for c in matrix.courses]) for row in matrix.rows],
            "filters": filters,
            "roles": Role.choices,
            "all_courses": selectors.course_list(actor=request.user),
            "role": role,
            "course": course,
            "counts": [(label, counts.get(state, 0), state) for state, label in selectors.State.LABELS.items()],
            "import_form": import_form or ImportForm(),
            "import_result": import_result,
            "query": request.GET.urlencode(),
            "charts": selectors.training_charts(actor=request.user, role=role),
        }
        return self.render(request, "training/matrix.html", context, status=status)


class MatrixExportView(TenantPageView):
    required_permission = VIEW

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        role = request.GET.get("role", "")
        if role and role not in Role.values:
            role = ""
        body = services.training_matrix_export(actor=request.user, role=role)
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="training-{self.tenant.slug}.csv"'
        return response


class ImportView(MatrixView):
    required_permission = MANAGE

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = ImportForm(request.POST, request.FILES)
        if not form.is_valid():
            return self._page(request, import_form=form, status=400)
        try:
            result = services.completions_import(actor=request.user, data=form.cleaned_data["file"].read())
        except ValidationError as exc:
            messages.error(request, f"Nothing was imported: {_reasons(exc)}")
            return self._page(request, import_form=form, status=400)
        messages.success(request, f"{result.imported} completions imported, {len(result.errors)} rows refused.")
        return self._page(request, import_result=result)


class ApprovalQueueView(TenantPageView):
    required_permission = MANAGE

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self._page(request)

    def _page(self, request: HttpRequest, *, failed: tuple[UUID, str] | None = None, status: int = 200) -> HttpResponse:
        context = {"queue": selectors.approval_queue(actor=request.user), "failed": failed, "form": ReviewForm()}
        return self.render(request, "training/queue.html", context, status=status)


class ReviewView(ApprovalQueueView):
    required_permission = MANAGE
    http_method_names = ["post"]  # the queue's GET takes no completion: a GET here is a 405, not a server error

    def post(self, request: HttpRequest, tenant: str, public_id: UUID, verdict: str) -> HttpResponse:
        if verdict not in ("approve", "reject"):  # any other word used to reject
            raise Http404
        completion = selectors.completion_get(actor=request.user, public_id=public_id)
        form = ReviewForm(request.POST)
        if not form.is_valid():
            return self._page(request, failed=(completion.public_id, "Give a reason."), status=400)
        review = services.completion_approve if verdict == "approve" else services.completion_reject
        try:
            review(actor=request.user, completion=completion, reason=form.cleaned_data["reason"])
        except ValidationError as exc:
            return self._page(request, failed=(completion.public_id, _reasons(exc)), status=400)
        done = "approved" if verdict == "approve" else "rejected"
        messages.success(request, f"{completion.user.username}'s “{completion.course.title}” is {done}.")
        return redirect("portal:training_queue", tenant=self.tenant.slug)


class CoursesView(TenantPageView):
    """Courses (adopted from the catalogue or the tenant's own) and which roles must hold each."""

    required_permission = MANAGE

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self._page(request)

    def _page(self, request: HttpRequest, *, status: int = 200, **forms: Any) -> HttpResponse:
        courses = list(selectors.course_list(actor=request.user))
        requirements = list(selectors.requirement_list(actor=request.user))
        adopted = {c.catalogue_course_id for c in courses}
        context = {
            "courses": [(c, [r for r in requirements if r.course_id == c.pk]) for c in courses],
            "catalogue": [entry for entry in CatalogueCourse.objects.all() if entry.pk not in adopted],
            "adopt_form": forms.get("adopt_form") or CourseAdoptForm(),
            "create_form": forms.get("create_form") or CourseCreateForm(),
            "requirement_form": forms.get("requirement_form") or RequirementForm(),
            "roles": Role.choices,
        }
        return self.render(request, "training/courses.html", context, status=status)

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        action = request.POST.get("action")
        try:
            if action == "adopt":
                adopt_form = CourseAdoptForm(request.POST)
                if not adopt_form.is_valid():
                    return self._page(request, adopt_form=adopt_form, status=400)
                entry = CatalogueCourse.objects.get(code=adopt_form.cleaned_data["catalogue"])
                course = services.course_adopt(actor=request.user, catalogue_course=entry)
                messages.success(request, f"“{course.title}” is adopted.")
            elif action == "create":
                create_form = CourseCreateForm(request.POST)
                if not create_form.is_valid():
                    return self._page(request, create_form=create_form, status=400)
                course = services.course_create(actor=request.user, **create_form.cleaned_data)
                messages.success(request, f"“{course.title}” is created.")
            elif action == "require":
                requirement_form = RequirementForm(request.POST)
                if not requirement_form.is_valid():
                    return self._page(request, requirement_form=requirement_form, status=400)
                data = dict(requirement_form.cleaned_data)
                course = selectors.course_get(actor=request.user, public_id=data.pop("course"))
                requirement = services.requirement_set(actor=request.user, course=course, **data)
                messages.success(request, f"{requirement} is set.")
            elif action == "remove":
                requirement = selectors.requirement_get(
                    actor=request.user, public_id=request.POST.get("requirement", "")
                )
                services.requirement_remove(actor=request.user, requirement=requirement)
                messages.success(request, f"{requirement} is removed.")
            else:
                raise access.NotVisible()
        except ValidationError as exc:
            messages.error(request, f"Not changed: {_reasons(exc)}")
            return self._page(request, status=400)
        return redirect("portal:training_courses", tenant=self.tenant.slug)


class OperatorsView(TenantPageView):
    """Who at the vendor can reach the platform, and whether their training is current."""

    required_permission = VIEW

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        operators = selectors.operator_training_list(actor=request.user)
        courses = [c for c, _, _ in operators[0].cells] if operators else []
        return self.render(request, "training/operators.html", {"operators": operators, "courses": courses})
