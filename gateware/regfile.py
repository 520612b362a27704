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
- ``read_latency=3``: the bus registered first, per bank: whether it addresses the bank, the
  write enable, and the bank's own copy of ``addr[:4]`` (loaded only when it addresses the
  bank, so synthesis keeps the copies apart); then the two stages above from those. The ULX3S
  build's choice: ``addr`` drove every bank's read select and write decode, a ~1 k-load net
  whose route (13 ns) was one seed's critical path.

Writes take effect at the end of the clock in which ``w_en`` is high at latencies 1 and 2, a
clock later at 3; at every latency a read of the same address issued in the next clock returns
the new value.
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS, Access, RegisterMap

BANK_BITS = 4  # read_latency 2 and 3: a bank is 16 addresses, muxed in one stage


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
        if self.read_latency not in (1, 2, 3):
            raise ValueError(f"read_latency must be 1, 2 or 3, not {self.read_latency}")
        m = Module()
        for strobe in self.wo.values():
            m.d.comb += strobe.eq(0)
        values = self._read_values()
        if self.read_latency == 3:
            self._elaborate_bus_stage(m, values)
            return m

        # writes: decode, then the register's clock enable (read latencies 1 and 2)
        with m.Switch(self.addr):
            for reg, i, address in self._writable():
                with m.Case(address):
                    self._write(m, reg, i, self.w_en, self.w_data)

        if self.read_latency == 1:
            with m.Switch(self.addr):
                for address, value in values.items():
                    with m.Case(address):
                        m.d.sync += self.r_data.eq(value)
                with m.Default():
                    m.d.sync += self.r_data.eq(0)
            return m

        hits = []
        for bank, entries in self._banks(values).items():
            hit = Signal(name=f"bank_{bank:03x}_hit")
            m.d.sync += hit.eq(self.addr[BANK_BITS:] == bank)
            hits.append((hit, self._bank_entry(m, bank, entries, self.addr[:BANK_BITS])))
        self._or_of_hits(m, hits)
        return m

    def _elaborate_bus_stage(self, m, values):
        w_data = Signal(DATA_BITS, name="w_data_q")
        m.d.sync += w_data.eq(self.w_data)
        writable = {}
        for reg, i, address in self._writable():
            writable.setdefault(address >> BANK_BITS, []).append((reg, i, address))
        banks = self._banks(values)  # every writable address reads too (a strobe reads 0)
        hits = []
        for bank, entries in banks.items():
            addressed = self.addr[BANK_BITS:] == bank
            sel = Signal(name=f"bank_{bank:03x}_sel")
            we = Signal(name=f"bank_{bank:03x}_we")
            low = Signal(BANK_BITS, name=f"bank_{bank:03x}_low")
            m.d.sync += [sel.eq(addressed), we.eq(addressed & self.w_en)]
            with m.If(addressed):
                m.d.sync += low.eq(self.addr[:BANK_BITS])
            with m.Switch(low):
                for reg, i, address in writable.get(bank, []):
                    with m.Case(address & ((1 << BANK_BITS) - 1)):
                        self._write(m, reg, i, we, w_data)
            hit = Signal(name=f"bank_{bank:03x}_hit")
            m.d.sync += hit.eq(sel)
            hits.append((hit, self._bank_entry(m, bank, entries, low)))
        self._or_of_hits(m, hits)

    def _writable(self):
        """(register, index, address) of every implemented RW register and WO strobe."""
        for reg in self.regmap:
            if reg.access is not Access.RO:
                for i in range(self._count(reg)):
                    yield reg, i, reg.address + i * reg.stride

    def _write(self, m, reg, i, enable, w_data):
        if reg.access is Access.RW:
            with m.If(enable):
                m.d.sync += self.rw[reg.name][i].eq(w_data[: reg.width])
        else:
            m.d.comb += self.wo[reg.name].eq(enable & w_data[0])

    @staticmethod
    def _banks(values) -> dict[int, dict[int, object]]:
        banks: dict[int, dict[int, object]] = {}
        for address, value in sorted(values.items()):
            banks.setdefault(address >> BANK_BITS, {})[address & ((1 << BANK_BITS) - 1)] = value
        return banks

    @staticmethod
    def _bank_entry(m, bank, entries, low):
        """The register at ``low`` of one bank, registered."""
        entry = Signal(DATA_BITS, name=f"bank_{bank:03x}_entry")
        with m.Switch(low):
            for offset, value in entries.items():
                with m.Case(offset):
                    m.d.sync += entry.eq(value)
            with m.Default():
                m.d.sync += entry.eq(0)
        return entry

    def _or_of_hits(self, m, hits):
        selected = 0
        for hit, entry in hits:
            selected = selected | (entry & hit.replicate(DATA_BITS))
        m.d.sync += self.r_data.eq(selected)
