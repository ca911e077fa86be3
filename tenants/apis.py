"""REST API of members, invitations and API tokens, under /api/v1/t/<tenant>/.

One class per operation (shared/STYLE.md §7). Each parses its input, calls one selector or service and
serializes the result; objects are found by `public_id` through the selectors, so another tenant's id is a 404
with the same body as a made-up one.
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from portal.web.pagination import PAGE_PARAMETERS, page_of, paginated
from tenants import access, selectors, services
from tenants.models import ApiToken, Invitation, Membership, Role, TrustedNetwork, User

PUBLIC_ID = OpenApiParameter("public_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The object's id.")


# Members
# ------------------------------------------------------------------------------


class MemberOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    username = serializers.CharField(source="user.username")
    first_name = serializers.CharField(source="user.first_name")
    last_name = serializers.CharField(source="user.last_name")
    email = serializers.EmailField(source="user.email")
    role = serializers.ChoiceField(choices=Role.choices)
    status = serializers.ChoiceField(choices=Membership.Status.choices)
    is_current = serializers.SerializerMethodField(help_text="Active and before its end date: the member has access.")
    ends_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    ended_reason = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Member"

    def get_is_current(self, membership: Membership) -> bool:
        return membership.is_current()


def _require_view_members(request: Request, api: TenantApi) -> None:
    """Members who may not see the member list get a 403 (and an audit event) from every member endpoint,
    whatever the id, rather than an empty list or a 404."""
    access.require(request.user, "tenants.view_members", api.tenant)


class MemberListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices, required=False)
        status = serializers.ChoiceField(choices=Membership.Status.choices, required=False)

    OutputSerializer = MemberOutputSerializer

    @extend_schema(
        operation_id="member_list",
        tags=["members"],
        summary="List the tenant's members (tenants.view_members)",
        description="Everyone who has or had access to the tenant, active first, by user name; filter by `role` "
        "and `status`.",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={200: page_of(MemberOutputSerializer, "MemberPage"), **problem_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        _require_view_members(request, self)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = selectors.membership_list(actor=request.user, **filters.validated_data)
        return paginated(self, request, rows, self.OutputSerializer)


class MemberGetApi(TenantApi):
    OutputSerializer = MemberOutputSerializer

    @extend_schema(
        operation_id="member_get",
        tags=["members"],
        summary="One member (tenants.view_members)",
        description="A membership by its id. Another tenant's id is a 404, the same as an id that does not exist.",
        parameters=[PUBLIC_ID],
        responses={200: MemberOutputSerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_view_members(request, self)
        membership = selectors.membership_get(actor=request.user, public_id=public_id)
        return Response(self.OutputSerializer(membership).data)


class MemberUpdateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices, required=False)
        ends_at = serializers.DateTimeField(
            required=False, allow_null=True, help_text="A new end date, or null to clear it (not for auditors)."
        )

        class Meta:
            ref_name = "MemberUpdate"

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs:
                raise serializers.ValidationError("Send `role`, `ends_at` or both.")
            return attrs

    OutputSerializer = MemberOutputSerializer

    @extend_schema(
        operation_id="member_update",
        tags=["members"],
        summary="Change a member's role and/or end date (tenants.manage_members)",
        description="Send `role`, `ends_at` or both; both change or neither does. `ends_at: null` clears the end "
        "date (an auditor must keep one). You cannot remove your own administrator role.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: MemberOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def patch(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_view_members(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = data.validated_data
        membership = selectors.membership_get(actor=request.user, public_id=public_id)
        # Both changes or neither. The order matters only for auditors, whose membership must always have an end
        # date: set a new date before becoming an auditor, clear it only after the role no longer needs it.
        with transaction.atomic():
            if "ends_at" in changes and changes["ends_at"] is not None:
                membership = services.membership_set_end(
                    actor=request.user, membership=membership, ends_at=changes["ends_at"]
                )
            if "role" in changes:
                membership = services.membership_change_role(
                    actor=request.user, membership=membership, role=changes["role"]
                )
            if "ends_at" in changes and changes["ends_at"] is None:
                membership = services.membership_set_end(actor=request.user, membership=membership, ends_at=None)
        return Response(self.OutputSerializer(membership).data)


class MemberEndApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=200, help_text="Why access ends; kept on the audit trail.")

        class Meta:
            ref_name = "MemberEnd"

    OutputSerializer = MemberOutputSerializer

    @extend_schema(
        operation_id="member_end",
        tags=["members"],
        summary="End a membership now (tenants.manage_members)",
        description="Their access to this tenant ends at once and their API tokens of this tenant are revoked; "
        "their other organisations and their sessions there are left alone. An account with no other organisation "
        "is deactivated and signed out. You cannot end your own membership.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: MemberOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_view_members(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = selectors.membership_get(actor=request.user, public_id=public_id)
        membership = services.membership_end(actor=request.user, membership=membership, **data.validated_data)
        return Response(self.OutputSerializer(membership).data)


# Invitations
# ------------------------------------------------------------------------------


class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)
    ends_at = serializers.DateTimeField(allow_null=True, help_text="When the membership it opens ends.")
    status = serializers.ChoiceField(choices=Invitation.Status.choices)
    expires_at = serializers.DateTimeField(help_text="The link works until then.")
    created_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "Invitation"


class InvitationListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        pending = serializers.BooleanField(required=False, default=False, help_text="Only those still open.")

    OutputSerializer = InvitationOutputSerializer

    @extend_schema(
        operation_id="invitation_list",
        tags=["members"],
        summary="List the tenant's invitations (tenants.view_members)",
        description="Invitations sent to join the tenant, newest first, with their state.",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={
            200: page_of(InvitationOutputSerializer, "InvitationPage"),
            **problem_responses(400, 401, 403, 404),
        },
    )
    def get(self, request: Request, tenant: str) -> Response:
        _require_view_members(request, self)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = selectors.invitation_list(actor=request.user, pending_only=filters.validated_data["pending"])
        return paginated(self, request, rows, self.OutputSerializer)


class InvitationCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(help_text="Where the invitation is sent.")
        first_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        last_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        role = serializers.ChoiceField(choices=Role.choices)
        ends_at = serializers.DateTimeField(
            required=False, allow_null=True, help_text="When the membership ends; required for an auditor."
        )

        class Meta:
            ref_name = "InvitationCreate"

    OutputSerializer = InvitationOutputSerializer

    @extend_schema(
        operation_id="invitation_create",
        tags=["members"],
        summary="Invite a person to join (tenants.manage_members)",
        description="Queues an e-mail with a single-use link to the address. The person joins only by accepting "
        "it, signed in with their existing account or by creating one. The answer is the same whether or not an "
        "account with this address exists. A pending invitation of the same address is replaced.",
        request=InputSerializer,
        responses={201: InvitationOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        _require_view_members(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = services.invitation_create(actor=request.user, tenant=self.tenant, **data.validated_data)
        return Response(self.OutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationGetApi(TenantApi):
    OutputSerializer = InvitationOutputSerializer

    @extend_schema(
        operation_id="invitation_get",
        tags=["members"],
        summary="One invitation (tenants.view_members)",
        parameters=[PUBLIC_ID],
        responses={200: InvitationOutputSerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_view_members(request, self)
        invitation = selectors.invitation_get(actor=request.user, public_id=public_id)
        return Response(self.OutputSerializer(invitation).data)


class InvitationRevokeApi(TenantApi):
    @extend_schema(
        operation_id="invitation_revoke",
        tags=["members"],
        summary="Withdraw an invitation (tenants.manage_members)",
        description="Its link stops working. Idempotent; an accepted invitation cannot be withdrawn.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={204: None, **problem_responses(400, 401, 403, 404)},
    )
    def delete(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_view_members(request, self)
        invitation = selectors.invitation_get(actor=request.user, public_id=public_id)
        services.invitation_revoke(actor=request.user, invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


# API tokens
# ------------------------------------------------------------------------------


class ApiTokenOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The token's first characters, to recognise it; never the token.")
    status = serializers.ChoiceField(choices=["active", "expired", "revoked"])
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "ApiToken"


class ApiTokenListApi(TenantApi):
    OutputSerializer = ApiTokenOutputSerializer

    @extend_schema(
        operation_id="api_token_list",
        tags=["api tokens"],
        summary="My API tokens in this tenant",
        description="Every token of the caller in this tenant, newest first, with its state. Never the token itself.",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(ApiTokenOutputSerializer, "ApiTokenPage"), **problem_responses(401, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        rows = selectors.api_token_list(actor=request.user)
        return paginated(self, request, rows, self.OutputSerializer)


class ApiTokenCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, help_text="What will use the token.")
        days = serializers.IntegerField(
            min_value=1,
            required=False,
            help_text=f"Days until it expires: 1 to API_TOKEN_MAX_DAYS ({settings.API_TOKEN_MAX_DAYS} here), "
            f"{settings.API_TOKEN_DEFAULT_DAYS} when left out.",
        )

        class Meta:
            ref_name = "ApiTokenCreate"

    class OutputSerializer(ApiTokenOutputSerializer):
        token = serializers.CharField(help_text="The token itself. Shown this once: only its digest is stored.")

        class Meta:
            ref_name = "ApiTokenCreated"

    @extend_schema(
        operation_id="api_token_create",
        tags=["api tokens"],
        summary="Create an API token for myself",
        description=(
            "Send it as `Authorization: Bearer <token>`. It works only for this tenant. Only a signed-in browser "
            "session creates tokens: a request authenticated by a token is refused (403)."
        ),
        request=InputSerializer,
        responses={201: OutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, raw = services.api_token_create(
            actor=cast(User, request.user),
            tenant=self.tenant,
            via_token=request.auth is not None,  # any token, a device's included: only a signed-in session
            **data.validated_data,
        )
        token.token = raw  # type: ignore[attr-defined]
        return Response(self.OutputSerializer(token).data, status=status.HTTP_201_CREATED)


class ApiTokenRevokeApi(TenantApi):
    @extend_schema(
        operation_id="api_token_revoke",
        tags=["api tokens"],
        summary="Revoke one of my API tokens",
        description="Idempotent. A tenant admin may revoke any member's token.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={204: None, **problem_responses(401, 403, 404)},
    )
    def delete(self, request: Request, tenant: str, public_id: str) -> Response:
        token: ApiToken = selectors.api_token_get(actor=request.user, public_id=public_id)
        services.api_token_revoke(actor=cast(User, request.user), token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Trusted networks
# ------------------------------------------------------------------------------


class TrustedNetworkOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    network = serializers.CharField(help_text="CIDR, IPv4 or IPv6, in its canonical form.")
    label = serializers.CharField()  # type: ignore[assignment]  # a field, not Field.label
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "TrustedNetwork"


def _require_manage_networks(request: Request, api: TenantApi) -> None:
    access.require(request.user, "tenants.manage_networks", api.tenant)


class TrustedNetworkListApi(TenantApi):
    OutputSerializer = TrustedNetworkOutputSerializer

    @extend_schema(
        operation_id="trusted_network_list",
        tags=["trusted networks"],
        summary="The tenant's trusted networks (tenants.manage_networks)",
        description="The address ranges the tenant may be reached from (pages, API, DICOMweb, DICOM listener). "
        "None: any address may.",
        parameters=PAGE_PARAMETERS,
        responses={
            200: page_of(TrustedNetworkOutputSerializer, "TrustedNetworkPage"),
            **problem_responses(401, 403, 404),
        },
    )
    def get(self, request: Request, tenant: str) -> Response:
        _require_manage_networks(request, self)
        return paginated(self, request, selectors.trusted_network_list(actor=request.user), self.OutputSerializer)


class TrustedNetworkCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        network = serializers.CharField(max_length=60, help_text="CIDR: 10.20.0.0/16, 2001:db8:5::/48.")
        label = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")  # type: ignore[assignment]

        class Meta:
            ref_name = "TrustedNetworkCreate"

    OutputSerializer = TrustedNetworkOutputSerializer

    @extend_schema(
        operation_id="trusted_network_create",
        tags=["trusted networks"],
        summary="Add a trusted network (tenants.manage_networks)",
        description="From then on only the listed ranges reach the tenant: adding the first range closes it to "
        "every other address, the caller's own included. A malformed range, or one with host bits set, is a 400 "
        "that says why.",
        request=InputSerializer,
        responses={201: TrustedNetworkOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        _require_manage_networks(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = services.trusted_network_add(actor=request.user, tenant=self.tenant, **data.validated_data)
        return Response(self.OutputSerializer(row).data, status=status.HTTP_201_CREATED)


class TrustedNetworkRemoveApi(TenantApi):
    @extend_schema(
        operation_id="trusted_network_remove",
        tags=["trusted networks"],
        summary="Remove a trusted network (tenants.manage_networks)",
        description="Removing the last range opens the tenant to any address.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={204: None, **problem_responses(401, 403, 404)},
    )
    def delete(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_networks(request, self)
        row: TrustedNetwork = selectors.trusted_network_get(actor=request.user, public_id=public_id)
        services.trusted_network_remove(actor=request.user, network=row)
        return Response(status=status.HTTP_204_NO_CONTENT)
