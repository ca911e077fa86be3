"""Routes of the devices app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

from __future__ import annotations

from django.urls import path

from devices import views
from devices.apis import admin, device
from portal.web.routing import api_by_method

page_patterns = [
    path("devices/", views.DevicesView.as_view(), name="devices"),
    path("devices/register/", views.DeviceRegisterView.as_view(), name="device_register"),
    path("devices/request/", views.DeviceRequestView.as_view(), name="device_request"),
    path("devices/wipe-orders/", views.WipeOrdersView.as_view(), name="device_wipe_orders"),
    path("devices/<uuid:public_id>/", views.DeviceDetailView.as_view(), name="device_detail"),
    path("devices/<uuid:public_id>/approve/", views.DeviceApproveView.as_view(), name="device_approve"),
    path("devices/<uuid:public_id>/revoke/", views.DeviceRevokeView.as_view(), name="device_revoke"),
    path("devices/<uuid:public_id>/step/", views.DeviceStepView.as_view(), name="device_step"),
    path("devices/<uuid:public_id>/sanitization/", views.DeviceSanitizationView.as_view(), name="device_sanitization"),
]

# Ids in API paths are plain strings: a malformed one is then the same problem+json 404 as a missing one.
# The device's own endpoints (self/, enrol/) come before <public_id>/.
api_patterns = [
    path("devices/", api_by_method(GET=admin.DeviceListApi, POST=admin.DeviceRegisterApi), name="devices"),
    path("devices/requests/", device.DeviceRequestApi.as_view(), name="device_requests"),
    path("devices/enrol/", device.DeviceEnrolApi.as_view(), name="device_enrol"),
    path("devices/self/", device.DeviceSelfStatusApi.as_view(), name="device_self"),
    path("devices/self/refresh/", device.DeviceSelfRefreshApi.as_view(), name="device_self_refresh"),
    path("devices/self/wipe-confirmation/", device.DeviceSelfWipeConfirmApi.as_view(), name="device_self_wipe"),
    path(
        "devices/policy/",
        api_by_method(GET=admin.DevicePolicyGetApi, PATCH=admin.DevicePolicyUpdateApi),
        name="device_policy",
    ),
    path("devices/wipe-orders/", admin.WipeOrderListApi.as_view(), name="device_wipe_orders"),
    path("devices/<str:public_id>/", admin.DeviceGetApi.as_view(), name="device"),
    path("devices/<str:public_id>/history/", admin.DeviceHistoryApi.as_view(), name="device_history"),
    path("devices/<str:public_id>/approve/", admin.DeviceApproveApi.as_view(), name="device_approve"),
    path("devices/<str:public_id>/revoke/", admin.DeviceRevokeApi.as_view(), name="device_revoke"),
    path("devices/<str:public_id>/suspend/", admin.DeviceSuspendApi.as_view(), name="device_suspend"),
    path("devices/<str:public_id>/report-lost/", device.DeviceReportLostApi.as_view(), name="device_report_lost"),
    path("devices/<str:public_id>/order-wipe/", admin.DeviceWipeOrderApi.as_view(), name="device_order_wipe"),
    path(
        "devices/<str:public_id>/sanitization/", admin.DeviceSanitizationRecordApi.as_view(), name="device_sanitization"
    ),
    path("devices/<str:public_id>/retire/", admin.DeviceRetireApi.as_view(), name="device_retire"),
    path("devices/<str:public_id>/custodian/", admin.DeviceCustodianApi.as_view(), name="device_custodian"),
    path("devices/<str:public_id>/grants/", admin.DeviceGrantsApi.as_view(), name="device_grants"),
    path(
        "devices/<str:public_id>/enrolment-code/", admin.EnrolmentCodeIssueApi.as_view(), name="device_enrolment_code"
    ),
    path("devices/<str:public_id>/media-exports/", device.MediaExportCreateApi.as_view(), name="device_media_exports"),
]
