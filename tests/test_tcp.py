"""The TCP layer both sides share: TCP_INFO parsing, congestion control checks, and a round's stall."""

import socket
import struct

import pytest

from asyncfl import settings
from asyncfl.client.remote import RoundTcp
from asyncfl.net import tcp


def test_tcp_info_fields_come_from_their_offsets_and_newer_ones_are_none_on_older_kernels():
    raw = bytearray(256)
    raw[4] = 3  # backoff
    struct.pack_into("I", raw, 8, 200_000)  # rto_us
    struct.pack_into("I", raw, 100, 17)  # total_retrans
    struct.pack_into("I", raw, 224, 5)  # rcv_ooopack
    struct.pack_into("H", raw, 240, 4)  # total_rto
    info = tcp.parse_info(bytes(raw))
    assert (info.backoff, info.rto_us, info.total_retrans, info.rcv_ooopack, info.total_rto) == (3, 200_000, 17, 5, 4)
    old = tcp.parse_info(bytes(raw[:232]))  # a kernel before 6.7 returns no total_rto
    assert old.total_rto is None and old.rcv_ooopack == 5


def test_a_live_socket_reports_what_was_set_on_it():
    with socket.socket() as s:
        tcp.set_congestion(s, "reno")  # every Linux has reno, and any user may set it
        assert tcp.congestion(s) == "reno"
        assert tcp.read_info(s).state in range(1, 13)


def test_an_unknown_congestion_control_is_a_problem_of_the_settings():
    assert tcp.problem("reno") is None
    assert "nosuch" in tcp.problem("nosuch")
    assert any("--tcp-cc" in p for p in settings.problems(settings.ClientArgs(tcp_cc="nosuch")))
    with pytest.raises(tcp.CcError), socket.socket() as s:
        tcp.set_congestion(s, "nosuch")


def test_a_stall_is_the_longest_wait_apart_from_the_servers_own_work():
    r = RoundTcp(retrans_segs=0, rtos=0, max_backoff=0, rto_ms=200, srtt_ms=1, first_byte_s=3.5, longest_gap_s=0.2)
    assert r.stall_s(server_work_s=3.0) == pytest.approx(0.5)  # the request's wait, less the pace
    assert r.stall_s(server_work_s=3.49) == pytest.approx(0.2)  # a gap inside the reply is longer
    assert r.stall_s(server_work_s=9.0) == pytest.approx(0.2)
