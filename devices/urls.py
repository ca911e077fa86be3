"""Routes of the devices app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

from __future__ import annotations

from django.urls import path

from devices import apis, views
from portal.web.routing import api_by_method

page_patterns = [
    path("devices/", views.DevicesView.as_view(), name="devices"),
    path("devices/register/", views.DeviceRegisterView.as_view(), name="device_register"),
    path("devices/<uuid:public_id>/approve/", views.DeviceApproveView.as_view(), name="device_approve"),
    path("devices/<uuid:public_id>/revoke/", views.DeviceRevokeView.as_view(), name="device_revoke"),
]

# Ids in API paths are plain strings: a malformed one is then the same problem+json 404 as a missing one.
api_patterns = [
    path("devices/", api_by_method(GET=apis.DeviceListApi, POST=apis.DeviceRegisterApi), name="devices"),
    path("devices/<str:public_id>/", apis.DeviceGetApi.as_view(), name="device"),
    path("devices/<str:public_id>/approve/", apis.DeviceApproveApi.as_view(), name="device_approve"),
    path("devices/<str:public_id>/revoke/", apis.DeviceRevokeApi.as_view(), name="device_revoke"),
]
