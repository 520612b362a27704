"""RegisterFile: the registers of firmware/registers.py REGISTER_MAP on a plain read/write port.

Nothing here names a register by hand: read-write registers become ``rw[name][i]`` signals the
design reads, read-only ones are driven by the design through ``ro[name][i]`` (or are constants,
given to the constructor), write-only strobes pulse ``wo[name]`` for one clock.

A bus master (the link engine, or a testbench) drives ``addr``/``w_en``/``w_data`` and reads
``r_data`` ``read_latency`` clocks after setting ``addr``:

- ``read_latency=1``: one registered ``Switch`` over every address (decode and the 32-bit read
  mux of ~120 registers in one clock). Simple; what the core's own testbenches use.
- ``read_latency=2``: the read path in two registered stages, for timing closure (on the
  LFE5U-85F the one-clock decode and mux was the design's critical path, ~70 MHz): first, per
  bank of 16 addresses (``addr[4:]``), the entry ``addr[:4]`` and whether the bank is the one
  addressed; then the OR of the addressed bank's entry. Each stage is a few LUT levels.

Writes take effect at the end of the clock in which ``w_en`` is high, at either latency; a read
of the same address issued in the next clock returns the new value.
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS, Access, RegisterMap

BANK_BITS = 4  # read_latency=2: the first stage muxes 16 addresses of one bank


class RegisterFile(wiring.Component):
    def __init__(self, regmap: RegisterMap, *, constants: dict[str, int | list[int]] | None = None,
                 implemented: dict[str, int] | None = None, read_latency: int = 1):
        """``constants``: values of read-only registers fixed at build time (by name).
        ``implemented``: for arrays, how many entries exist in this build (others read 0).
        ``read_latency``: clocks from ``addr`` to ``r_data``, 1 or 2 (module docstring)."""
        self.regmap = regmap
        self.constants = dict(constants or {})
        self.implemented = dict(implemented or {})
        self.read_latency = read_latency
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
            n = self._count(reg)
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

    def _count(self, reg) -> int:
        return min(reg.count, self.implemented.get(reg.name, reg.count))

    def _read_values(self) -> dict[int, object]:
        """Address -> what a read there returns, for every implemented address."""
        values = {}
        for reg in self.regmap:
            for i in range(self._count(reg)):
                address = reg.address + i * reg.stride
                if reg.access is Access.RW:
                    values[address] = self.rw[reg.name][i]
                elif reg.access is Access.RO and reg.name in self.constants:
                    value = self.constants[reg.name]
                    value = value[i] if isinstance(value, list) else value
                    values[address] = value & reg.mask
                elif reg.access is Access.RO:
                    values[address] = self.ro[reg.name][i]
                else:
                    values[address] = 0  # write-only strobes read 0
        return values

    def elaborate(self, platform):
        if self.read_latency not in (1, 2):
            raise ValueError(f"read_latency must be 1 or 2, not {self.read_latency}")
        m = Module()

        # writes: decode, then the register's clock enable (at either read latency)
        for strobe in self.wo.values():
            m.d.comb += strobe.eq(0)
        with m.Switch(self.addr):
            for reg in self.regmap:
                if reg.access is Access.RO:
                    continue
                for i in range(self._count(reg)):
                    with m.Case(reg.address + i * reg.stride):
                        if reg.access is Access.RW:
                            with m.If(self.w_en):
                                m.d.sync += self.rw[reg.name][i].eq(self.w_data[: reg.width])
                        else:
                            m.d.comb += self.wo[reg.name].eq(self.w_en & self.w_data[0])

        values = self._read_values()
        if self.read_latency == 1:
            with m.Switch(self.addr):
                for address, value in values.items():
                    with m.Case(address):
                        m.d.sync += self.r_data.eq(value)
                with m.Default():
                    m.d.sync += self.r_data.eq(0)
            return m

        banks: dict[int, dict[int, object]] = {}
        for address, value in values.items():
            banks.setdefault(address >> BANK_BITS, {})[address & ((1 << BANK_BITS) - 1)] = value
        hits = []
        for bank, entries in sorted(banks.items()):
            entry = Signal(DATA_BITS, name=f"bank_{bank:03x}_entry")
            hit = Signal(name=f"bank_{bank:03x}_hit")
            m.d.sync += hit.eq(self.addr[BANK_BITS:] == bank)
            with m.Switch(self.addr[:BANK_BITS]):
                for low, value in entries.items():
                    with m.Case(low):
                        m.d.sync += entry.eq(value)
                with m.Default():
                    m.d.sync += entry.eq(0)
            hits.append((hit, entry))
        selected = 0
        for hit, entry in hits:
            selected = selected | (entry & hit.replicate(DATA_BITS))
        m.d.sync += self.r_data.eq(selected)
        return m
