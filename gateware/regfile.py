"""RegisterFile: the registers of firmware/registers.py REGISTER_MAP on a plain read/write port.

Nothing here names a register by hand: read-write registers become ``rw[name][i]`` signals the
design reads, read-only ones are driven by the design through ``ro[name][i]`` (or are constants,
given to the constructor), write-only strobes pulse ``wo[name]`` for one clock. The link that
reaches this port comes later; until then a testbench drives ``addr``/``w_en``/``w_data`` and
reads ``r_data`` one clock after setting ``addr``.
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS, Access, RegisterMap


class RegisterFile(wiring.Component):
    def __init__(self, regmap: RegisterMap, *, constants: dict[str, int | list[int]] | None = None,
                 implemented: dict[str, int] | None = None):
        """``constants``: values of read-only registers fixed at build time (by name).
        ``implemented``: for arrays, how many entries exist in this build (others read 0)."""
        self.regmap = regmap
        self.constants = dict(constants or {})
        self.implemented = dict(implemented or {})
        super().__init__({
            "addr": In(ADDRESS_BITS),
            "w_en": In(1),
            "w_data": In(DATA_BITS),
            "r_data": Out(DATA_BITS),
        })
        self.rw: dict[str, list[Signal]] = {}
        self.ro: dict[str, list[Signal]] = {}
        self.wo: dict[str, Signal] = {}
        for reg in regmap:
            n = min(reg.count, self.implemented.get(reg.name, reg.count))
            if reg.access is Access.RW:
                # Configuration survives a reset of the core (reset clears state, not settings),
                # so a host or testbench can set it up while the core is held in reset.
                self.rw[reg.name] = [Signal(reg.width, init=reg.reset, name=f"{reg.name}_{i}",
                                            reset_less=True) for i in range(n)]
            elif reg.access is Access.RO and reg.name not in self.constants:
                self.ro[reg.name] = [Signal(reg.width, init=reg.reset, name=f"{reg.name}_{i}")
                                     for i in range(n)]
            elif reg.access is Access.WO:
                self.wo[reg.name] = Signal(name=reg.name)

    def elaborate(self, platform):
        m = Module()
        for strobe in self.wo.values():
            m.d.comb += strobe.eq(0)
        with m.Switch(self.addr):
            for reg in self.regmap:
                n = min(reg.count, self.implemented.get(reg.name, reg.count))
                for i in range(n):
                    with m.Case(reg.address + i * reg.stride):
                        if reg.access is Access.RW:
                            m.d.sync += self.r_data.eq(self.rw[reg.name][i])
                            with m.If(self.w_en):
                                m.d.sync += self.rw[reg.name][i].eq(self.w_data[: reg.width])
                        elif reg.access is Access.RO and reg.name in self.constants:
                            value = self.constants[reg.name]
                            value = value[i] if isinstance(value, list) else value
                            m.d.sync += self.r_data.eq(value & reg.mask)
                        elif reg.access is Access.RO:
                            m.d.sync += self.r_data.eq(self.ro[reg.name][i])
                        else:
                            m.d.sync += self.r_data.eq(0)
                            m.d.comb += self.wo[reg.name].eq(self.w_en & self.w_data[0])
            with m.Default():
                m.d.sync += self.r_data.eq(0)
        return m
