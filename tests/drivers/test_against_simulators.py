"""Every driver against its simulator over a real TCP socket on 127.0.0.1 or a real pty,
with the simulator misbehaving on purpose: silence, garbage, a reset, a refused connection."""

from __future__ import annotations

import os

import pytest

from qnode.drivers.errors import InstrumentConnectionError, InstrumentError, InstrumentTimeout, ValueOutOfRange
from qnode.drivers.transport import SerialTransport, TcpTransport

FAULT_TIMEOUT_S = 0.2  # short, so fault tests finish quickly; never asserted on


def test_opens_and_changes_a_setting(served, spec):
    driver = served.driver().open()
    try:
        before = spec.power_on_read(driver)
        spec.change(driver)
        assert spec.power_on_read(driver) != before
    finally:
        driver.close()


def test_no_answer_times_out_then_reconnects(served, spec):
    driver = served.driver(timeout_s=FAULT_TIMEOUT_S).open()
    served.server.mute = True
    with pytest.raises(InstrumentTimeout) as info:
        spec.read(driver)
    assert driver.suspect
    assert spec.name in str(info.value) and served.server.address in str(info.value)
    served.server.mute = False
    # only the muted read needs the short timeout; the reconnect (identify, counts port) may
    # take longer than 0.2 s on a loaded machine
    driver.timeout_s = 2.0
    spec.read(driver)  # reconnects, identifies, reads
    assert not driver.suspect and driver.reconnects == 1
    driver.close()


def test_garbage_reply_raises_and_the_next_call_works(served, spec):
    driver = served.driver(timeout_s=FAULT_TIMEOUT_S).open()
    served.server.garbage_replies = 1
    with pytest.raises(InstrumentError) as info:
        spec.read(driver)
    assert not isinstance(info.value, InstrumentTimeout) and info.value.reply
    spec.read(driver)
    assert not driver.suspect
    driver.close()


def test_instrument_reset_mid_session(served, spec):
    """The instrument reboots: the driver recovers and reads the power-on state, not a stale one."""
    driver = served.driver(timeout_s=FAULT_TIMEOUT_S).open()
    reconnected = []
    driver.on_reconnect.append(reconnected.append)
    spec.change(driver)
    assert spec.power_on_read(driver) != spec.power_on_value
    served.server.power_cycle()
    try:
        value = spec.power_on_read(driver)
    except InstrumentConnectionError:  # TCP: the link dropped with the reboot
        assert driver.suspect
        value = spec.power_on_read(driver)
        assert driver.reconnects == 1 and reconnected == [driver]  # the owner hears of it
    assert value == pytest.approx(spec.power_on_value)
    driver.close()


def test_connection_refused(served, spec):
    if spec.serial:
        transport = SerialTransport(f"/dev/qnode-no-such-port-{os.getpid()}")
    else:
        port = served.server.port
        served.stop()  # nothing listens there any more
        transport = TcpTransport("127.0.0.1", port)
    driver = spec.driver_class(spec.name, transport, timeout_s=FAULT_TIMEOUT_S, **spec.driver_kwargs)
    with pytest.raises(InstrumentConnectionError) as info:
        driver.open()
    assert spec.name in str(info.value) and "cannot connect" in str(info.value)


def test_out_of_range_reaches_no_instrument(served, spec):
    driver = served.driver().open()
    seen = served.server.messages_seen
    with pytest.raises(ValueOutOfRange):
        spec.bad_write(driver)
    assert served.server.messages_seen == seen
    driver.close()
