"""Routes of DICOMweb, mounted by portal/urls.py under /dicomweb/<tenant>/ in namespace "dicomweb".

PS3.18 resource paths have no trailing slash. UIDs are plain strings here: the API checks them, so a malformed one
gets a problem document rather than the HTML 404 of an unmatched route.
"""

from __future__ import annotations

from django.urls import path

from studies.dicomweb import stow

patterns = [
    path("studies", stow.StudiesStoreApi.as_view(), name="studies"),
    path("studies/<str:study>", stow.StudyStoreApi.as_view(), name="study"),
]
