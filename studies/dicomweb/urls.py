"""Routes of DICOMweb, mounted by portal/urls.py under /dicomweb/<tenant>/ in namespace "dicomweb".

PS3.18 resource paths have no trailing slash. UIDs are plain strings here: the API checks them, so a malformed one
gets a problem document rather than the HTML 404 of an unmatched route.
"""

from __future__ import annotations

from django.urls import path

from portal.web.routing import api_by_method
from studies.dicomweb import qido, stow, wado, wado_uri

_STUDY = "studies/<str:study>"
_SERIES = f"{_STUDY}/series/<str:series>"
_INSTANCE = f"{_SERIES}/instances/<str:instance>"
_FRAMES = f"{_INSTANCE}/frames/<str:frames>"

patterns = [
    path("studies", api_by_method(GET=qido.StudiesSearchApi, POST=stow.StudiesStoreApi), name="studies"),
    path(_STUDY, api_by_method(GET=wado.StudyRetrieveApi, POST=stow.StudyStoreApi), name="study"),
    # QIDO-RS
    path("series", qido.SeriesSearchApi.as_view(), name="series-search"),
    path("instances", qido.InstancesSearchApi.as_view(), name="instances-search"),
    path(f"{_STUDY}/series", qido.StudySeriesSearchApi.as_view(), name="study-series-search"),
    path(f"{_STUDY}/instances", qido.StudyInstancesSearchApi.as_view(), name="study-instances-search"),
    path(f"{_SERIES}/instances", qido.SeriesInstancesSearchApi.as_view(), name="series-instances-search"),
    # WADO-RS
    path(_SERIES, wado.SeriesRetrieveApi.as_view(), name="series"),
    path(_INSTANCE, wado.InstanceRetrieveApi.as_view(), name="instance"),
    path(f"{_STUDY}/metadata", wado.StudyMetadataApi.as_view(), name="study-metadata"),
    path(f"{_SERIES}/metadata", wado.SeriesMetadataApi.as_view(), name="series-metadata"),
    path(f"{_INSTANCE}/metadata", wado.InstanceMetadataApi.as_view(), name="instance-metadata"),
    path(_FRAMES, wado.FramesRetrieveApi.as_view(), name="frames"),
    path(f"{_STUDY}/rendered", wado.StudyRenderedApi.as_view(), name="study-rendered"),
    path(f"{_SERIES}/rendered", wado.SeriesRenderedApi.as_view(), name="series-rendered"),
    path(f"{_INSTANCE}/rendered", wado.InstanceRenderedApi.as_view(), name="instance-rendered"),
    path(f"{_FRAMES}/rendered", wado.FramesRenderedApi.as_view(), name="frames-rendered"),
    path(f"{_STUDY}/thumbnail", wado.StudyThumbnailApi.as_view(), name="study-thumbnail"),
    path(f"{_SERIES}/thumbnail", wado.SeriesThumbnailApi.as_view(), name="series-thumbnail"),
    path(f"{_INSTANCE}/thumbnail", wado.InstanceThumbnailApi.as_view(), name="instance-thumbnail"),
    # WADO-URI
    path("wado", wado_uri.WadoUriApi.as_view(), name="wado-uri"),
]
