"""InputCapture: one word of N oversampled bits per channel per system clock.

Bit b of a channel's word is the input level at bin ``now * N + b`` (bit 0 is the earliest
sample). In simulation the testbench drives the words directly; on hardware a platform layer
(gateware/ulx3s.py) fills them from the FPGA's DDR/SERDES input primitives. This component
registers the words together with the coarse time they belong to, so everything downstream sees
a word and its time in the same clock.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .params import TIME_BITS


def coarse_bits(oversampling: int) -> int:
    """Width of the clock counter: together with log2(N) fine bits it makes TIME_BITS bins."""
    return TIME_BITS - (oversampling.bit_length() - 1)


class InputCapture(wiring.Component):
    def __init__(self, channels: int, oversampling: int):
        self.channels = channels
        self.oversampling = oversampling
        words = data.ArrayLayout(oversampling, channels)
        super().__init__({
            "pins": In(words),  # word per channel for this clock, bit 0 earliest
            "now": In(coarse_bits(oversampling)),  # coarse time of this clock
            "samples": Out(words),  # the same words one clock later ...
            "sample_now": Out(coarse_bits(oversampling)),  # ... with the clock they were taken in
        })

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [
            self.samples.eq(self.pins),
            self.sample_now.eq(self.now),
        ]
        return m


# --- ECP5 (ULX3S) input path -------------------------------------------------------------------
#
# IDDRX2F is ECP5's widest generic input gearbox: 2 bits per ECLK edge pair, 4 bits per
# SCLK = ECLK / 2; Lattice's DS1044 / TN1265 give generic DDRX2 inputs 800 Mb/s (ECLK 400 MHz).
# The core does not close timing at the 200 MHz SCLK on an LFE5U-85F-6 (docs/gateware.md,
# "Timing"), so the 4-bit words are geared 2:1 in fabric and cross into a 100 MHz system
# clock from the same PLL through a 4-slot ring: N = 8 bits per 100 MHz clock, the same
# 1250 ps bin as IDDRX2F's 800 Mb/s. Only the IDDRX2F outputs, a holding register, the ring
# and its write pointer run at 200 MHz.

ECP5_ECLK_HZ = 400_000_000  # IDDRX2F edge clock: 800 Mb/s on the pin
ECP5_SCLK_HZ = 200_000_000  # IDDRX2F word clock, 4 bits per clock
ECP5_SYS_CLK_HZ = 100_000_000  # the core's clock after the 2:1 gearbox
ECP5_OVERSAMPLING = 8  # bits per system clock: bin = 1 / 800 MHz = 1250 ps


class ECP5Capture(wiring.Component):
    """25 MHz in -> PLL (VCO 800 MHz): ECLK 400 MHz (ECLKSYNCB, CLKDIVF /2 -> SCLK 200 MHz)
    and the 100 MHz ``sync`` domain; per channel an IDDRX2F, a 2:1 gearbox in the 200 MHz
    ``capture`` domain, and a 4-slot ring into ``sync``. ``words`` are the core's pins (bit 0
    earliest), ``locked`` the PLL lock (both domains are held in reset until it is high).

    Both clocks come from one VCO (frequency-locked, fixed phase), so the ring is an elastic
    buffer with a fixed fill: a slot is written every 10 ns and read two slots (20 ns) behind
    its write, in the middle of the 40 ns it holds still; the release of the two resets may
    differ by a clock of either domain, well inside that margin. No gray-coded pointers, no
    synchronisers on the data. The crossing delays every channel the same: relative times are
    exact, absolute ones carry a constant offset like any cable."""

    def __init__(self, channels: int):
        self.channels = channels
        super().__init__({
            "clk25": In(1),
            "pads": In(channels),
            "words": Out(data.ArrayLayout(ECP5_OVERSAMPLING, channels)),
            "locked": Out(1),
        })

    def elaborate(self, platform):
        from amaranth import Cat, ClockDomain, ClockSignal, ResetSignal
        from amaranth.hdl import Instance

        m = Module()
        c = self.channels
        pll_op, pll_os = Signal(name="pll_op"), Signal(name="pll_os")
        eclk, sclk = Signal(name="eclk"), Signal(name="sclk")
        m.submodules.pll = Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=1, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=2, p_CLKOP_CPHASE=1,
            p_CLKOP_FPHASE=0, p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=8, p_CLKOS_CPHASE=7,
            p_CLKOS_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=16,
            i_RST=0, i_STDBY=0, i_CLKI=self.clk25, o_CLKOP=pll_op, o_CLKOS=pll_os,
            i_CLKFB=pll_op, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
            i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0, i_ENCLKOS=0, o_LOCK=self.locked,
            a_FREQUENCY_PIN_CLKI="25", a_FREQUENCY_PIN_CLKOP="400", a_FREQUENCY_PIN_CLKOS="100",
            a_ICP_CURRENT="6", a_LPF_RESISTOR="16", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
        )
        m.submodules.eclksync = Instance("ECLKSYNCB", i_ECLKI=pll_op, i_STOP=0, o_ECLKO=eclk)
        m.submodules.clkdiv = Instance("CLKDIVF", p_DIV="2.0", i_CLKI=eclk, i_RST=0,
                                       i_ALIGNWD=0, o_CDIVX=sclk)
        m.domains.capture = ClockDomain()
        m.domains.sync = ClockDomain()
        m.d.comb += [
            ClockSignal("capture").eq(sclk), ResetSignal("capture").eq(~self.locked),
            ClockSignal("sync").eq(pll_os), ResetSignal("sync").eq(~self.locked),
        ]
        if platform is not None:
            platform.add_clock_constraint(eclk, ECP5_ECLK_HZ)
            platform.add_clock_constraint(sclk, ECP5_SCLK_HZ)
            # the 100 MHz ``sync`` clock needs none: nextpnr derives it from the PLL's CLKOS
            # divider ("Derived frequency constraint of 100.0 MHz for net capture.clk"), and
            # pll_os is merged into that net, so a constraint on it would be ignored

        # 200 MHz: IDDRX2F, then every other clock the held half and this one into the FIFO
        halves = []
        for i in range(c):
            q = [Signal(name=f"tdc{i}_q{b}") for b in range(4)]
            m.submodules[f"iddr{i}"] = Instance(
                "IDDRX2F", i_D=self.pads[i], i_ECLK=eclk, i_SCLK=sclk, i_RST=0, i_ALIGNWD=0,
                o_Q0=q[0], o_Q1=q[1], o_Q2=q[2], o_Q3=q[3])  # Q0 is the earliest sample
            halves.append(Cat(q))
        # one register more at the pins: the ring sits beside the core, far across the die
        # from the right-bank inputs (a 6.6 ns route at 200 MHz when it followed the IDDRs)
        at_pins = Signal(4 * c)
        m.d.capture += at_pins.eq(Cat(halves))
        now4 = Signal(4 * c)
        m.d.capture += now4.eq(at_pins)
        ring = [Signal(8 * c, name=f"ring_{k}") for k in range(4)]
        for i in range(c):
            # Per channel its own copy of the gearbox phase and of the one-hot write strobe (a
            # register per slot: slot k is written when phase is 1 and the write pointer is k;
            # the 8-state ring is (pointer, phase)): one strobe for all channels was a 6.6 ns
            # route to 256 clock enables at 200 MHz. (The copies are rings, each FF fed by its
            # own copy's, so synthesis cannot merge them.)
            held = Signal(4, name=f"held_{i}")
            phase = Signal(name=f"phase_{i}")
            m.d.capture += phase.eq(~phase)
            with m.If(~phase):
                m.d.capture += held.eq(now4[4 * i:4 * i + 4])
            state = Signal(8, init=1, name=f"slot_strobe_{i}")
            m.d.capture += state.eq(Cat(state[7], state[:7]))
            for k in range(4):
                with m.If(state[2 * k + 1]):
                    m.d.capture += ring[k][8 * i:8 * i + 8].eq(Cat(held, now4[4 * i:4 * i + 4]))
        # 100 MHz: read two slots behind the writer (slot 2 first: zeros until the ring runs)
        rp = Signal(2, init=2)
        m.d.sync += rp.eq(rp + 1)
        with m.Switch(rp):
            for k in range(4):
                with m.Case(k):
                    m.d.sync += self.words.eq(ring[k])
        return m
