"""The device register pages, under /t/<tenant>/devices/, for tenant administrators (`tenants.manage_devices`):
the register (filters by kind, state and custodian; counts by state), a device's page (history, custody, grants,
wipe orders), the wipe orders with their printable sanitization certificates.

Changes are POSTs that call one service and redirect back with a message (post/redirect/get); a refused change
renders the page again with the reason. Listing devices reads no patient data, so it writes no audit event; every
change does, in its service. Approval takes a second administrator: the service refuses the one who registered
the device (a 403), and the page says so instead of showing a bare error page.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from audit.services import access_denied_record
from devices import selectors, services
from devices.forms import DeviceRegisterForm, DeviceRequestForm, DeviceRevokeForm, SanitizationForm
from devices.models import Device, IllegalTransition
from portal.web.pages import TenantPageView
from tenants import access
from tenants.forms import errors_apply

DEVICES_PER_PAGE = 50
PERMISSION = "tenants.manage_devices"
# The register, a device's page and the wipe orders are read by auditors and compliance officers too (read-only).
VIEW_PERMISSION = "tenants.view_devices"


def _messages_of(exc: ValidationError) -> list[str]:
    return [str(message) for message in exc.messages]


def devices_page(
    view: TenantPageView,
    request: HttpRequest,
    *,
    register_form: DeviceRegisterForm | None = None,
    failed: tuple[UUID, list[str]] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The devices page; `failed` is the device whose action was refused, with the reasons to show beside it."""
    filters = {
        "status": request.GET.get("status") if request.GET.get("status") in Device.Status.values else None,
        "kind": request.GET.get("kind") if request.GET.get("kind") in Device.Kind.values else None,
        "custodian": (request.GET.get("custodian") or "").strip()[:150] or None,
    }
    devices = selectors.device_list(actor=request.user, **filters)
    page = Paginator(devices, DEVICES_PER_PAGE).get_page(request.GET.get("page"))
    rows = [
        {
            "device": device,
            "registered_by_me": device.requested_by_id == request.user.pk,
            "can_approve": Device.Status.APPROVED in device.allowed_next(),
            "can_revoke": Device.Status.REVOKED in device.allowed_next(),
            "steps": [step for step in STEPS if STEPS[step][0] in device.allowed_next()],
            "errors": failed[1] if failed is not None and failed[0] == device.public_id else [],
        }
        for device in page
    ]
    counts = selectors.device_counts_by_status(actor=request.user)
    most = max(counts.values()) or 1
    context = {
        "page": page,
        "rows": rows,
        "filters": filters,
        "statuses": Device.Status.choices,
        "kinds": Device.Kind.choices,
        "chart": [{"status": label, "value": value, "count": counts[value]} for value, label in Device.Status.choices],
        "chart_max": most,
        "may_manage": PERMISSION in view.perms,
        "step_labels": {step: label for step, (_, label, _) in STEPS.items()},
        "register_form": register_form or DeviceRegisterForm(),
        "dicom_host": settings.DICOM_HOST,
        "dicom_port": settings.DICOM_PORT,
    }
    return view.render(request, "devices/devices.html", context, status=status)


def _approved_message(device: Device) -> str:
    if not device.ae_title:
        return f"“{device.name}” is approved."
    where = f"from {device.host}" if device.host else "from any address"
    return f"“{device.name}” is approved: it may now send images as {device.ae_title}, {where}."


# The life-cycle steps a page offers (action -> (state it leads to, button, service)).
STEPS: dict[str, tuple[str, str, Any]] = {
    "suspend": (Device.Status.SUSPENDED, "Suspend", services.device_suspend),
    "report_lost": (Device.Status.LOST, "Report lost", services.device_report_lost),
    "order_wipe": (Device.Status.WIPE_ORDERED, "Order wipe", services.device_wipe_order),
    "retire": (Device.Status.RETIRED, "Retire", services.device_retire),
}


class DevicesView(TenantPageView):
    """The tenant's devices: which may send images, from where, and who let them in."""

    required_permission = VIEW_PERMISSION

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return devices_page(self, request)


class DeviceRegisterView(TenantPageView):
    required_permission = PERMISSION

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = DeviceRegisterForm(request.POST)
        if form.is_valid():
            try:
                device = services.device_register(actor=request.user, **form.service_arguments())
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(
                    request,
                    f"“{device.name}” is registered and waits for approval by another administrator. "
                    "Until then its associations are refused.",
                )
                return redirect("portal:devices", tenant=self.tenant.slug)
        messages.error(request, "The device was not registered: see the reasons in the form.")
        return devices_page(self, request, register_form=form, status=400)


class DeviceApproveView(TenantPageView):
    required_permission = PERMISSION

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        device = selectors.device_get(actor=request.user, public_id=public_id)
        try:
            device = services.device_approve(actor=request.user, device=device)
        except access.Forbidden as exc:
            # Shown on the page rather than as a bare 403; the refusal is on the audit trail all the same, as
            # TenantPageView would have written it.
            access_denied_record(actor=request.user, where=type(self).__name__, method=request.method or "")
            messages.error(request, f"“{device.name}” was not approved: {exc}")
            return devices_page(self, request, failed=(device.public_id, [str(exc)]), status=403)
        except IllegalTransition as exc:
            messages.error(request, f"“{device.name}” was not approved: {exc}")
            return devices_page(self, request, failed=(device.public_id, [str(exc)]), status=409)
        except ValidationError as exc:
            messages.error(request, f"“{device.name}” was not approved: {' '.join(_messages_of(exc))}")
            return devices_page(self, request, failed=(device.public_id, _messages_of(exc)), status=400)
        messages.success(request, _approved_message(device))
        return redirect("portal:devices", tenant=self.tenant.slug)


class DeviceRevokeView(TenantPageView):
    required_permission = PERMISSION

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        device = selectors.device_get(actor=request.user, public_id=public_id)
        form = DeviceRevokeForm(request.POST)
        reasons: list[str]
        if form.is_valid():
            try:
                device = services.device_revoke(actor=request.user, device=device, **form.cleaned_data)
            except IllegalTransition as exc:
                messages.error(request, f"“{device.name}” was not revoked: {exc}")
                return devices_page(self, request, failed=(device.public_id, [str(exc)]), status=409)
            except ValidationError as exc:
                reasons = _messages_of(exc)
            else:
                messages.success(request, f"“{device.name}” is revoked: its next association will be refused.")
                return redirect("portal:devices", tenant=self.tenant.slug)
        else:
            reasons = [str(m) for errors in form.errors.values() for m in errors]
        messages.error(request, f"“{device.name}” was not revoked: {' '.join(reasons)}")
        return devices_page(self, request, failed=(device.public_id, reasons), status=400)


class DeviceStepView(TenantPageView):
    """A life-cycle step with its reason (suspend, report lost, order a wipe, retire). A step the device's state
    does not allow is refused with the states it may go to (a 409)."""

    required_permission = PERMISSION

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        device = selectors.device_get(actor=request.user, public_id=public_id)
        step = STEPS.get(request.POST.get("action", ""))
        if step is None:
            return devices_page(self, request, failed=(device.public_id, ["Unknown action."]), status=400)
        _, label, service = step
        try:
            service(actor=request.user, device=device, reason=request.POST.get("reason", ""))
        except IllegalTransition as exc:
            messages.error(request, f"“{device.name}”: {exc}")
            return devices_page(self, request, failed=(device.public_id, [str(exc)]), status=409)
        except ValidationError as exc:
            messages.error(request, f"“{device.name}”: {' '.join(_messages_of(exc))}")
            return devices_page(self, request, failed=(device.public_id, _messages_of(exc)), status=400)
        messages.success(request, f"“{device.name}”: {label.lower()} done.")
        return redirect("portal:device_detail", tenant=self.tenant.slug, public_id=device.public_id)


class DeviceDetailView(TenantPageView):
    """One device: its state and the steps it allows, custody history, grants, attestations, wipe orders and
    every event that names it."""

    required_permission = VIEW_PERMISSION

    def get(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        device = selectors.device_get(actor=request.user, public_id=public_id)
        return device_page(self, request, device)


def device_page(
    view: TenantPageView,
    request: HttpRequest,
    device: Device,
    *,
    form: SanitizationForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "device": device,
        "history": selectors.device_history(device=device),
        "steps": [(step, label) for step, (to, label, _) in STEPS.items() if to in device.allowed_next()],
        "open_order": selectors.open_wipe_order_get(device=device),
        "sanitization_form": form or SanitizationForm(),
        "may_manage": PERMISSION in view.perms,
    }
    return view.render(request, "devices/device.html", context, status=status)


class DeviceSanitizationView(TenantPageView):
    """Close a device's open wipe order with its sanitization record (a lost device wiped remotely, media
    destroyed, a device that could not confirm itself)."""

    required_permission = PERMISSION

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        device = selectors.device_get(actor=request.user, public_id=public_id)
        form = SanitizationForm(request.POST)
        if form.is_valid():
            try:
                services.device_sanitization_record(actor=request.user, device=device, **form.cleaned_data)
            except IllegalTransition as exc:
                form.add_error(None, str(exc))
                return device_page(self, request, device, form=form, status=409)
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(request, f"“{device.name}” is wiped: its sanitization record is kept.")
                return redirect("portal:device_detail", tenant=self.tenant.slug, public_id=device.public_id)
        return device_page(self, request, device, form=form, status=400)


class WipeOrdersView(TenantPageView):
    """Every wipe order, open ones first, each with its sanitization certificate (printable)."""

    required_permission = VIEW_PERMISSION

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        orders = list(selectors.wipe_order_list(actor=request.user)[:500])
        orders.sort(key=lambda order: order.sanitized_at is not None)
        return self.render(request, "devices/wipe_orders.html", {"orders": orders})


class DeviceRequestView(TenantPageView):
    """Any member asks for a device in their own custody (a tablet, a workstation at home, a disc burner); an
    administrator other than them approves it on the register."""

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self.render(request, "devices/request.html", {"form": DeviceRequestForm()})

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = DeviceRequestForm(request.POST)
        if form.is_valid():
            try:
                device = services.device_request(actor=request.user, **form.service_arguments())
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(request, f"“{device.name}” is requested: an administrator will review it.")
                return redirect("portal:device_request", tenant=self.tenant.slug)
        return self.render(request, "devices/request.html", {"form": form}, status=400)
