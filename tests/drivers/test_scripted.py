"""Every driver against a script of the exact bytes its instrument would exchange.

The ScriptedTransport fails on any byte the driver sends that the script does not expect,
and ``assert_done`` fails when an expected exchange never happened.
"""

from __future__ import annotations

import pytest

from qnode.drivers.errors import (InstrumentConnectionError, InstrumentError, InstrumentSuspect, InstrumentTimeout,
                                  ValueOutOfRange)
from qnode.drivers.scripted import HANG_UP, SILENCE, ScriptedTransport, ScriptMismatch, expected_exchanges


def make(spec, script, **kwargs):
    transport = ScriptedTransport(script, address="scripted:0")
    driver = spec.driver_class(spec.name, transport, timeout_s=0.2, **{**spec.driver_kwargs, **kwargs})
    return driver, transport


def test_open_identifies_with_queries_only(spec):
    """Opening reads state and never changes an output: every command sent at open is a query."""
    with expected_exchanges(spec.driver_class, spec.open_script, name=spec.name, **spec.driver_kwargs) as driver:
        assert driver.identity
    sent = [s for s, _ in spec.open_script]
    assert all(b"?" in s or b'"request"' in s for s in sent), sent


def test_read_sends_exact_bytes(spec):
    script = spec.open_script + [(spec.read_sent, spec.read_reply)]
    with expected_exchanges(spec.driver_class, script, name=spec.name, **spec.driver_kwargs) as driver:
        assert spec.read(driver) == pytest.approx(spec.read_value)


def test_setting_sends_exact_bytes_and_checks_errors(spec):
    script = spec.open_script + spec.write_script
    with expected_exchanges(spec.driver_class, script, name=spec.name, **spec.driver_kwargs) as driver:
        spec.write(driver)


def test_instrument_refusal_names_instrument_command_and_reply(spec):
    driver, transport = make(spec, spec.open_script + spec.write_error_script)
    driver.open()
    with pytest.raises(InstrumentError) as info:
        spec.write(driver)
    message = str(info.value)
    assert spec.name in message and "scripted:0" in message
    assert info.value.command is not None and info.value.reply is not None
    transport.assert_done()
    assert not driver.suspect  # a refusal is an answer: the link is fine


def test_out_of_range_sends_nothing(spec):
    driver, transport = make(spec, spec.open_script)
    driver.open()
    before = list(transport.sent)
    with pytest.raises(ValueOutOfRange) as info:
        spec.bad_write(driver)
    assert transport.sent == before
    assert spec.name in str(info.value) and "nothing was sent" in str(info.value)
    transport.assert_done()


def test_silence_times_out_marks_suspect_and_reconnects(spec):
    script = spec.open_script + [(spec.read_sent, SILENCE)] + spec.open_script + [(spec.read_sent, spec.read_reply)]
    driver, transport = make(spec, script, backoff_initial_s=0.0)
    driver.open()
    with pytest.raises(InstrumentTimeout) as info:
        spec.read(driver)
    assert driver.suspect and not transport.is_open
    assert spec.name in str(info.value) and "no reply within 0.2 s" in str(info.value)
    assert spec.read(driver) == pytest.approx(spec.read_value)  # reconnected and re-identified first
    assert not driver.suspect and driver.reconnects == 1 and transport.opens == 2
    transport.assert_done()


def test_partial_reply_is_reported_and_flushed(spec):
    partial = spec.read_reply[: max(1, len(spec.read_reply) // 2)]
    script = spec.open_script + [(spec.read_sent, partial)] + spec.open_script + [(spec.read_sent, spec.read_reply)]
    driver, transport = make(spec, script)
    driver.open()
    with pytest.raises(InstrumentTimeout) as info:
        spec.read(driver)
    assert info.value.reply == partial
    assert spec.read(driver) == pytest.approx(spec.read_value)
    transport.assert_done()


def test_hang_up_is_a_connection_error_then_reconnect(spec):
    script = spec.open_script + [(spec.read_sent, HANG_UP)] + spec.open_script + [(spec.read_sent, spec.read_reply)]
    driver, transport = make(spec, script)
    driver.open()
    with pytest.raises(InstrumentConnectionError):
        spec.read(driver)
    assert driver.suspect
    assert spec.read(driver) == pytest.approx(spec.read_value)
    assert driver.reconnects == 1
    transport.assert_done()


def test_garbage_reply_is_an_error_not_a_value(spec):
    script = spec.open_script + [(spec.read_sent, spec.garbage_reply), (spec.read_sent, spec.read_reply)]
    driver, transport = make(spec, script)
    driver.open()
    with pytest.raises(InstrumentError) as info:
        spec.read(driver)
    assert not isinstance(info.value, InstrumentTimeout)
    assert info.value.reply is not None
    assert spec.read(driver) == pytest.approx(spec.read_value)  # same link, still in step
    transport.assert_done()


def test_failed_reconnect_backs_off_without_touching_the_wire(spec):
    now = [100.0]
    script = spec.open_script + [(spec.read_sent, SILENCE)] + spec.open_script + [(spec.read_sent, spec.read_reply)]
    driver, transport = make(spec, script, backoff_initial_s=1.0, backoff_max_s=4.0, clock=lambda: now[0])
    driver.open()
    with pytest.raises(InstrumentTimeout):
        spec.read(driver)
    transport.refuse_open = True
    delays = []
    for _ in range(4):
        with pytest.raises(InstrumentConnectionError) as info:
            spec.read(driver)  # a reconnect attempt, refused
        assert "next attempt in" in str(info.value)
        delays.append(driver.next_reconnect_at - now[0])
        sent_before = len(transport.sent)
        with pytest.raises(InstrumentSuspect):
            spec.read(driver)  # within the backoff: fails at once, sends nothing
        assert len(transport.sent) == sent_before
        now[0] = driver.next_reconnect_at
    assert delays == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
    transport.refuse_open = False
    assert spec.read(driver) == pytest.approx(spec.read_value)
    assert driver.reconnects == 1 and driver.failed_reconnects == 0
    transport.assert_done()


def test_connection_refused_at_open(spec):
    transport = ScriptedTransport([], refuse_open=True)
    driver = spec.driver_class(spec.name, transport, timeout_s=0.2, **spec.driver_kwargs)
    with pytest.raises(InstrumentConnectionError) as info:
        driver.open()
    assert "refused" in str(info.value) and spec.name in str(info.value)


# --- the helper itself must be able to fail ---------------------------------------------

def test_scripted_transport_fails_on_unused_exchange():
    spec_script = [(b"*IDN?\n", b"x\n"), (b"KRDG? A\n", b"1\n")]
    transport = ScriptedTransport(spec_script)
    transport.open(1.0)
    transport.write(b"*IDN?\n", 1.0)
    transport.read_until(b"\n", 1.0)
    with pytest.raises(ScriptMismatch, match="never happened"):
        transport.assert_done()


def test_scripted_transport_fails_on_wrong_bytes():
    transport = ScriptedTransport([(b"KRDG? A\r\n", b"+2.5\r\n")])
    transport.open(1.0)
    with pytest.raises(ScriptMismatch, match="expected"):
        transport.write(b"KRDG? B\r\n", 1.0)


def test_scripted_transport_fails_on_unread_reply():
    transport = ScriptedTransport([(b"KRDG? A\r\n", b"+2.5\r\n")])
    transport.open(1.0)
    transport.write(b"KRDG? A\r\n", 1.0)
    with pytest.raises(ScriptMismatch, match="never read"):
        transport.assert_done()
