"""The listener writes each received data set behind the Part-10 header that pynetdicom's
`Event.encoded_dataset(include_meta=True)` would write, encoded directly (studies.net.scp._part10): the same bytes,
for UIDs of odd and even length, up to 64 characters, and any transfer syntax."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContextTuple

from studies.dicom.synthetic import make_instance
from studies.net.scp import _part10

CT = "1.2.840.10008.5.1.4.1.1.2"


def _event(*, sop_class: str, sop_instance: str, syntax: str, data_set: bytes) -> evt.Event:
    request = C_STORE()
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.DataSet = BytesIO(data_set)
    context = PresentationContextTuple(1, UID(sop_class), UID(syntax))
    return evt.Event(None, evt.EVT_C_STORE, {"request": request, "context": context})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sop_instance", "syntax"),
    [
        ("1.2.3.4", "1.2.840.10008.1.2.1"),  # even lengths
        ("1.2.3.4.5", "1.2.840.10008.1.2"),  # odd: padded with a NUL
        ("1.2.826.0.1.3680043.8.498." + "1" * 38, "1.2.840.10008.1.2.4.50"),  # 64 characters
        ("1.2.3.4.5", "1.2.840.10008.1.2.5"),
    ],
)
def test_the_header_is_the_one_pynetdicom_writes(sop_instance, syntax):
    data_set = make_instance()[132:]  # any bytes: the data set is copied as it is, never decoded
    event = _event(sop_class=CT, sop_instance=sop_instance, syntax=syntax, data_set=data_set)

    written = _part10(event)

    assert written == event.encoded_dataset(include_meta=True)
    assert written.endswith(data_set)
    assert written[128:132] == b"DICM"


def test_a_uid_that_is_not_digits_and_dots_takes_pynetdicoms_way():
    event = _event(sop_class=CT, sop_instance="1.2.3.4", syntax="1.2.840.10008.1.2.1", data_set=b"\x08\x00")
    event.request.AffectedSOPInstanceUID = "1.2.3.4a"  # pynetdicom accepts it with a warning; pydicom encodes it

    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        assert _part10(event) == event.encoded_dataset(include_meta=True)


def test_the_received_buffer_is_left_usable():
    event = _event(sop_class=CT, sop_instance="1.2.3.4", syntax="1.2.840.10008.1.2.1", data_set=b"\x08\x00\x05\x00")

    _part10(event)

    event.request.DataSet.write(b"more")  # the view into it was released: the buffer can still grow
