"""The listener answers a C-STORE with a command set it encodes itself (studies.net.scp._StoreResponder): the bytes
pynetdicom's own C-STORE-RSP message would send, for statuses, message ids and UIDs of odd and even length; any
response with more than a status, or an EVT_DIMSE_SENT handler bound, goes pynetdicom's way. These tests also pin
what the responder relies on in pynetdicom: that a service class answers through `assoc.dimse.send_msg`, and that
the DUL sends what `send_pdu` queues."""

from __future__ import annotations

import copy

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from studies.dicom.synthetic import make_study
from studies.net import scp
from studies.net.scp import _application_entity, _Context, _store_response_command, _StoreResponder
from tests.studies.net.scu import associate, write_files

CT = "1.2.840.10008.5.1.4.1.1.2"
MODE_ACCEPTOR = "acceptor"


def _response(*, status: int = 0x0000, message_id: int = 7, sop_instance: str = "1.2.3.4") -> C_STORE:
    """As pynetdicom's StorageServiceClass.SCP builds it from the request, with the handler's status."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.AffectedSOPClassUID = CT
    rsp.Status = status
    return rsp


def _sent(provider_class: type[DIMSEServiceProvider], rsp: C_STORE, *, maximum_pdu: int = 16384) -> list[P_DATA]:
    """What a DIMSE provider of an acceptor association (never connected) hands its DUL for `rsp`."""
    assoc = Association(AE(), MODE_ACCEPTOR)
    assoc.requestor.maximum_length = maximum_pdu
    provider = provider_class(assoc)
    provider.send_msg(rsp, 3)
    sent = []
    while not assoc.dul.to_provider_queue.empty():
        sent.append(assoc.dul.to_provider_queue.get_nowait())
    return sent


@pytest.mark.parametrize(
    ("status", "message_id", "sop_instance"),
    [
        (0x0000, 1, "1.2.3.4"),  # even length
        (0x0000, 65535, "1.2.3.4.5"),  # odd: padded with a NUL
        (0x0000, 2, "1.2.826.0.1.3680043.8.498." + "1" * 38),  # 64 characters
        (0x0124, 3, "1.2.3"),  # not authorised: a status alone
        (0xB000, 4, "1.2.3.4"),  # a warning
    ],
)
def test_the_response_is_the_one_pynetdicom_sends(status, message_id, sop_instance):
    rsp = _response(status=status, message_id=message_id, sop_instance=sop_instance)

    ours = _sent(_StoreResponder, rsp)
    theirs = _sent(DIMSEServiceProvider, _response(status=status, message_id=message_id, sop_instance=sop_instance))

    assert len(ours) == len(theirs) == 1
    assert ours[0].presentation_data_value_list == theirs[0].presentation_data_value_list
    assert ours[0].presentation_data_value_list == [(3, b"\x03" + _store_response_command(rsp))]


def test_a_response_with_an_error_comment_goes_pynetdicoms_way():
    rsp = _response(status=0xA700)
    rsp.ErrorComment = "The archive could not store the object; try again later."
    assert _store_response_command(rsp) is None

    ours = _sent(_StoreResponder, rsp)

    assert [p.presentation_data_value_list for p in ours] == [
        p.presentation_data_value_list for p in _sent(DIMSEServiceProvider, rsp)
    ]
    assert b"try again later" in ours[0].presentation_data_value_list[0][1]


def test_a_uid_that_is_not_digits_and_dots_goes_pynetdicoms_way():
    rsp = _response()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        rsp.AffectedSOPInstanceUID = "1.2.3.4a"  # pynetdicom accepts it with a warning

    assert _store_response_command(rsp) is None


def test_a_peer_whose_pdus_are_too_small_for_the_command_gets_pynetdicoms_fragments():
    rsp = _response(sop_instance="1.2.826.0.1.3680043.8.498." + "1" * 38)

    ours = _sent(_StoreResponder, rsp, maximum_pdu=64)

    assert len(ours) > 1  # pynetdicom's fragments, as pynetdicom cuts them
    assert [p.presentation_data_value_list for p in ours] == [
        p.presentation_data_value_list for p in _sent(DIMSEServiceProvider, rsp, maximum_pdu=64)
    ]


def test_a_context_copy_is_a_new_context_with_the_same_syntaxes():
    (context,) = [_Context.of(c) for c in _application_entity().supported_contexts if c.abstract_syntax == CT]

    copied = copy.deepcopy([context])[0]

    assert type(copied) is _Context
    assert copied is not context
    assert (copied.abstract_syntax, copied.transfer_syntax, copied.scu_role, copied.scp_role) == (
        context.abstract_syntax,
        context.transfer_syntax,
        context.scu_role,
        context.scp_role,
    )
    assert copied.transfer_syntax is not context.transfer_syntax
    copied.context_id = 9  # negotiation sets the copy's id and result, never the listener's
    copied.result = 0
    assert context.context_id is None
    assert context.result is None


def test_a_bound_dimse_sent_handler_is_still_given_the_message():
    assoc = Association(AE(), MODE_ACCEPTOR)
    assoc.requestor.maximum_length = 16384
    seen = []
    assoc.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(type(event.message).__name__))

    _StoreResponder(assoc).send_msg(_response(), 1)

    assert seen == ["C_STORE_RSP"]
    assert not assoc.dul.to_provider_queue.empty()


def test_an_association_is_answered_by_the_responder(listener, north, demo_ct, tmp_path, monkeypatch):
    """Over a real association: pynetdicom's storage service class answers through the association's DIMSE
    provider, which is ours once the association is admitted, and the SCU reads our responses as successes. The
    association negotiated on its own copy of the listener's contexts, made by `_Context.__deepcopy__`."""
    encoded = []
    accepted = []

    def look(_client_side: Association) -> None:
        (acceptor,) = listener.active_associations
        accepted.append((acceptor.dimse, acceptor.acceptor.supported_contexts))

    def counting(rsp: C_STORE) -> bytes | None:
        command = _store_response_command(rsp)
        encoded.append(command)
        return command

    monkeypatch.setattr(scp, "_store_response_command", counting)
    files = write_files(tmp_path, make_study(series=1, instances_per_series=2, patient_id="RSP0001"))

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=files, during=look)

    assert result.statuses == [0x0000, 0x0000]
    ((dimse, contexts),) = accepted
    assert isinstance(dimse, _StoreResponder)
    assert len(contexts) == len(listener.contexts)
    assert all(type(c) is _Context for c in contexts)
    assert all(ours is not theirs for ours, theirs in zip(contexts, listener.contexts, strict=True))
    assert len(encoded) == 2
    assert all(encoded)
