"""REST API of the training registry, under /api/v1/t/<tenant>/training/: courses, requirements, completions
(with import from a learning system's CSV) and a person's status.

One class per operation (shared/STYLE.md §7): each parses its input, calls one selector or service and serializes
the result. Objects are found by id through the selectors, so another tenant's id is a 404 with the same body as
a made-up one; a member without the permission gets a 403 and an ACCESS_DENIED event. A learning system posts
completions with an API token of a compliance officer.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from portal.web.pagination import PAGE_PARAMETERS, page_of, paginated
from tenants import access
from tenants.models import Role
from training import selectors, services
from training.models import CatalogueCourse, Completion

PUBLIC_ID = OpenApiParameter("public_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The object's id.")
PERSON_ID = OpenApiParameter("person_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The person's id.")
TAGS = ["training"]


class CourseOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    title = serializers.CharField()
    provider = serializers.CharField()
    validity_months = serializers.IntegerField()
    evidence_required = serializers.BooleanField()
    catalogue = serializers.CharField(
        source="catalogue_course.code", allow_null=True, help_text="The platform catalogue course it was adopted from."
    )

    class Meta:
        ref_name = "TrainingCourse"


class RequirementOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    course = serializers.UUIDField(source="course.public_id")
    course_title = serializers.CharField(source="course.title")
    role = serializers.ChoiceField(choices=Role.choices)
    blocking = serializers.BooleanField(help_text="A lapse blocks access to patient data; else it only warns.")
    grace_days = serializers.IntegerField()

    class Meta:
        ref_name = "TrainingRequirement"


class CompletionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    person = serializers.UUIDField(source="user.subject_uuid")
    username = serializers.CharField(source="user.username")
    course = serializers.UUIDField(source="course.public_id")
    course_title = serializers.CharField(source="course.title")
    completed_on = serializers.DateField()
    expires_on = serializers.DateField()
    source = serializers.ChoiceField(choices=Completion.Source.choices)  # type: ignore[assignment]
    status = serializers.ChoiceField(choices=Completion.Status.choices)
    evidence_type = serializers.CharField(help_text="Media type of the certificate; empty when there is none.")
    recorded_by = serializers.CharField(source="recorded_by.username", allow_null=True)
    supersedes = serializers.UUIDField(source="supersedes.public_id", allow_null=True)
    reviewed_by = serializers.CharField(source="reviewed_by.username", allow_null=True)
    reviewed_at = serializers.DateTimeField(allow_null=True)
    review_reason = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "TrainingCompletion"


class StatusOutputSerializer(serializers.Serializer):
    course = serializers.UUIDField(source="course.public_id")
    course_title = serializers.CharField(source="course.title")
    state = serializers.ChoiceField(choices=list(selectors.State.LABELS.items()))
    expires_on = serializers.DateField(allow_null=True)
    blocking = serializers.BooleanField(source="requirement.blocking")
    lapses_on = serializers.DateField(help_text="The day a lapse counts: the expiry plus the grace days.")
    blocks_access = serializers.BooleanField(source="blocks")

    class Meta:
        ref_name = "TrainingRequirementStatus"


class CourseListApi(TenantApi):
    @extend_schema(
        operation_id="training_course_list", tags=TAGS, summary="The tenant's courses (any member)",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(CourseOutputSerializer, "TrainingCoursePage"), **problem_responses(401, 404)},
    )  # fmt: skip
    def get(self, request: Request, tenant: str) -> Response:
        return paginated(self, request, selectors.course_list(actor=request.user), CourseOutputSerializer)


class CourseCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        catalogue = serializers.SlugField(required=False, help_text="Adopt this platform catalogue course.")
        title = serializers.CharField(max_length=200, required=False)
        provider = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        validity_months = serializers.IntegerField(min_value=1, max_value=120, required=False)
        evidence_required = serializers.BooleanField(required=False, default=True)

        class Meta:
            ref_name = "TrainingCourseCreate"

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs.get("catalogue") and not (attrs.get("title") and attrs.get("validity_months")):
                raise serializers.ValidationError("Give a catalogue code, or a title and a validity in months.")
            return attrs

    @extend_schema(
        operation_id="training_course_create", tags=TAGS,
        summary="Adopt a catalogue course or create the tenant's own (tenants.manage_training)",
        description="With `catalogue`, adopts that platform course (idempotent); else creates a course of the "
        "tenant's own from `title`, `provider`, `validity_months`, `evidence_required`.",
        request=InputSerializer,
        responses={201: CourseOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if values.get("catalogue"):
            entry = CatalogueCourse.objects.filter(code=values["catalogue"]).first()
            if entry is None:
                raise serializers.ValidationError({"catalogue": "No such catalogue course."})
            course = services.course_adopt(actor=request.user, catalogue_course=entry)
        else:
            course = services.course_create(
                actor=request.user, title=values["title"], provider=values["provider"],
                validity_months=values["validity_months"], evidence_required=values["evidence_required"],
            )  # fmt: skip
        return Response(CourseOutputSerializer(course).data, status=status.HTTP_201_CREATED)


class RequirementListApi(TenantApi):
    @extend_schema(
        operation_id="training_requirement_list", tags=TAGS, summary="The tenant's requirements (any member)",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(RequirementOutputSerializer, "TrainingRequirementPage"), **problem_responses(401, 404)},
    )  # fmt: skip
    def get(self, request: Request, tenant: str) -> Response:
        return paginated(self, request, selectors.requirement_list(actor=request.user), RequirementOutputSerializer)


class RequirementSetApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        course = serializers.UUIDField()
        role = serializers.ChoiceField(choices=Role.choices)
        blocking = serializers.BooleanField(required=False, default=True)
        grace_days = serializers.IntegerField(required=False, default=0, min_value=0, max_value=365)

        class Meta:
            ref_name = "TrainingRequirementSet"

    @extend_schema(
        operation_id="training_requirement_set", tags=TAGS,
        summary="Require a course of a role, or change how (tenants.manage_training)",
        request=InputSerializer,
        responses={201: RequirementOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        course = selectors.course_get(actor=request.user, public_id=values.pop("course"))
        requirement = services.requirement_set(actor=request.user, course=course, **values)
        return Response(RequirementOutputSerializer(requirement).data, status=status.HTTP_201_CREATED)


class RequirementRemoveApi(TenantApi):
    @extend_schema(
        operation_id="training_requirement_remove", tags=TAGS, summary="Drop a requirement (tenants.manage_training)",
        parameters=[PUBLIC_ID], responses={204: None, **problem_responses(401, 403, 404)},
    )  # fmt: skip
    def delete(self, request: Request, tenant: str, public_id: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        requirement = selectors.requirement_get(actor=request.user, public_id=public_id)
        services.requirement_remove(actor=request.user, requirement=requirement)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CompletionListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Completion.Status.choices, required=False)
        person = serializers.UUIDField(required=False)

    @extend_schema(
        operation_id="training_completion_list", tags=TAGS,
        summary="Completions: everyone's (tenants.view_training), else the caller's own",
        description="Newest first, superseded ones included (see `supersedes`). Filter by `status` and `person`.",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={200: page_of(CompletionOutputSerializer, "TrainingCompletionPage"),
                   **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def get(self, request: Request, tenant: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        person = filters.validated_data.get("person")
        user = selectors.member_get(actor=request.user, public_id=person) if person else None
        rows = selectors.completion_list(actor=request.user, user=user, status=filters.validated_data.get("status"))
        return paginated(self, request, rows, CompletionOutputSerializer)


class CompletionRecordApi(TenantApi):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        person = serializers.UUIDField(required=False, help_text="Whose completion; the caller's own if absent.")
        username = serializers.CharField(required=False, help_text="Or the person's username.")
        course = serializers.UUIDField()
        completed_on = serializers.DateField()
        expires_on = serializers.DateField(required=False, allow_null=True, help_text="Default: the course's validity.")
        evidence = serializers.FileField(required=False, help_text="The certificate: PDF, PNG or JPEG, at most 10 MB.")
        note = serializers.CharField(required=False, allow_blank=True, max_length=300, default="")

        class Meta:
            ref_name = "TrainingCompletionRecord"

    @extend_schema(
        operation_id="training_completion_record", tags=TAGS,
        summary="Record a completion (a compliance officer: anyone's; any member: their own, pending approval)",
        description="A compliance officer's record (`tenants.manage_training`) counts at once and restores access "
        "at the person's next request; a person's own report waits in the approval queue. Send the certificate "
        "as multipart/form-data; its type is checked by its content.",
        request={"application/json": InputSerializer, "multipart/form-data": InputSerializer},
        responses={201: CompletionOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user: Any
        if values.get("person"):
            user = selectors.member_get(actor=request.user, public_id=values["person"])
        elif values.get("username"):
            user = selectors.member_by_username(actor=request.user, username=values["username"])
        else:
            user = request.user
        course = selectors.course_get(actor=request.user, public_id=values["course"])
        evidence = values.get("evidence")
        completion = services.completion_record(
            actor=request.user, user=user, course=course, completed_on=values["completed_on"],
            expires_on=values.get("expires_on"), evidence=evidence.read() if evidence else None,
            evidence_name=evidence.name if evidence else "", note=values["note"],
        )  # fmt: skip
        return Response(CompletionOutputSerializer(completion).data, status=status.HTTP_201_CREATED)


class CompletionGetApi(TenantApi):
    @extend_schema(
        operation_id="training_completion_get", tags=TAGS,
        summary="One completion (the caller's own, or any with tenants.view_training)",
        parameters=[PUBLIC_ID], responses={200: CompletionOutputSerializer, **problem_responses(401, 404)},
    )  # fmt: skip
    def get(self, request: Request, tenant: str, public_id: str) -> Response:
        completion = selectors.completion_get(actor=request.user, public_id=public_id)
        return Response(CompletionOutputSerializer(completion).data)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=300, help_text="Kept with the record and on the audit trail.")

    class Meta:
        ref_name = "TrainingReviewReason"


class CompletionApproveApi(TenantApi):
    @extend_schema(
        operation_id="training_completion_approve", tags=TAGS,
        summary="Approve a self-reported completion (tenants.manage_training)",
        parameters=[PUBLIC_ID], request=ReasonSerializer,
        responses={200: CompletionOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        completion = selectors.completion_get(actor=request.user, public_id=public_id)
        completion = services.completion_approve(actor=request.user, completion=completion, **data.validated_data)
        return Response(CompletionOutputSerializer(completion).data)


class CompletionRejectApi(TenantApi):
    @extend_schema(
        operation_id="training_completion_reject", tags=TAGS,
        summary="Reject a self-reported completion (tenants.manage_training)",
        parameters=[PUBLIC_ID], request=ReasonSerializer,
        responses={200: CompletionOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        completion = selectors.completion_get(actor=request.user, public_id=public_id)
        completion = services.completion_reject(actor=request.user, completion=completion, **data.validated_data)
        return Response(CompletionOutputSerializer(completion).data)


class CompletionSupersedeApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        completed_on = serializers.DateField()
        expires_on = serializers.DateField(required=False, allow_null=True)
        reason = serializers.CharField(max_length=300)

        class Meta:
            ref_name = "TrainingCompletionSupersede"

    @extend_schema(
        operation_id="training_completion_supersede", tags=TAGS,
        summary="Correct a completion: a new record supersedes it (tenants.manage_training)",
        parameters=[PUBLIC_ID], request=InputSerializer,
        responses={201: CompletionOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        completion = selectors.completion_get(actor=request.user, public_id=public_id)
        new = services.completion_supersede(actor=request.user, completion=completion, **data.validated_data)
        return Response(CompletionOutputSerializer(new).data, status=status.HTTP_201_CREATED)


class ImportResultSerializer(serializers.Serializer):
    imported = serializers.IntegerField()
    errors = serializers.ListField(  # type: ignore[assignment]
        child=serializers.DictField(), help_text="Each refused row: `row` (the header is row 1) and `reason`."
    )

    class Meta:
        ref_name = "TrainingImportResult"


class CompletionImportApi(TenantApi):
    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(help_text="CSV, UTF-8: username, course, completed_on[, expires_on].")

        class Meta:
            ref_name = "TrainingImport"

    @extend_schema(
        operation_id="training_completion_import", tags=TAGS,
        summary="Import completions from a learning system's CSV (tenants.manage_training)",
        description="Row by row: good rows are imported, bad rows are reported with their number and reason. A "
        "file that is not CSV or has other columns is a 400 and changes nothing.",
        request={"multipart/form-data": InputSerializer},
        responses={200: ImportResultSerializer, **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        access.require(request.user, selectors.MANAGE, self.tenant)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > services.IMPORT_MAX_BYTES:
            raise serializers.ValidationError({"file": "The file is larger than 5 MB."})
        result = services.completions_import(actor=request.user, data=upload.read())
        return Response(ImportResultSerializer(result).data)


class PersonStatusApi(TenantApi):
    @extend_schema(
        operation_id="training_person_status", tags=TAGS,
        summary="Where a person stands on each requirement of their role (own, or tenants.view_training)",
        parameters=[PERSON_ID],
        responses={200: StatusOutputSerializer(many=True), **problem_responses(401, 403, 404)},
    )  # fmt: skip
    def get(self, request: Request, tenant: str, person_id: str) -> Response:
        user = selectors.member_get(actor=request.user, public_id=person_id)
        return Response(StatusOutputSerializer(selectors.person_status(user=user), many=True).data)


class MatrixExportApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices, required=False)

    @extend_schema(
        operation_id="training_matrix_export", tags=TAGS,
        summary="The training matrix as CSV (tenants.view_training)",
        parameters=[FilterSerializer],
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR), **problem_responses(400, 401, 403, 404)},
    )  # fmt: skip
    def get(self, request: Request, tenant: str) -> HttpResponse:
        access.require(request.user, selectors.VIEW, self.tenant)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        body = services.training_matrix_export(actor=request.user, role=filters.validated_data.get("role", ""))
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="training-{self.tenant.slug}.csv"'
        return response
