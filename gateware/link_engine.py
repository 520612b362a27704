"""LinkEngine: the device side of the link protocol (firmware/link.py) on a byte stream.

Three parts, one clock domain:

- **Receiver.** UART bytes go into a ring (``rx_ring_bytes``). A parser reads them: it searches
  for the magic 0x51 0xAE, reads type, seq and length, then the payload and the CRC-32/ISO-HDLC
  (``amaranth.lib.crc``), exactly like ``link.FrameParser``. Requests are short, so a length above
  ``MAX_REQUEST_PAYLOAD`` means "not a frame start" (``bad_lengths``); a CRC that does not match
  counts in ``crc_errors``. Either way the parser drops one byte -- the candidate's first -- and
  searches again from the next one, which the ring still holds: resynchronisation costs only the
  bytes it touched, every one counted in ``bytes_skipped``. A ring that fills (the host sends
  while a long EVENTS frame holds up the reply) stops taking bytes; the UART then counts overruns.
- **Executor.** A valid frame is executed against the register bus (the ``RegisterFile`` port:
  ``addr``/``w_en``/``w_data`` out, ``r_data`` in, ``read_latency`` clocks after ``addr``, the
  register file's own setting: 1, or 2 with its registered read path): HELLO -> IDENTIFY
  (payload read from the register map's identity block, including ``gateware_hash``, plus the
  board name), REG_READ -> REG_DATA, REG_WRITE -> REG_ACK (value read back), and ERROR replies:
  BAD_ADDRESS (no register there), READ_ONLY, BAD_REQUEST (unknown type, wrong payload size).
  Which addresses exist and how they may be accessed comes from the register map. The reply's
  payload is written into a reply buffer with the request's seq; the next request waits until
  the transmitter has sent it.
- **Transmitter.** Between frames it sends a waiting reply first, else an EVENTS frame of the
  words waiting in the word FIFO (``word_fifo_depth``), up to ``max_event_words``: the length is
  fixed when the frame starts, so a short frame goes out as soon as the UART is free. It keeps
  ``first_word_index`` (every word it has taken, mod 2^32) and the epoch in force (EPOCH words set
  it as they pass, HEADER resets it to 0). The word FIFO's ``ready`` is the only way the link
  slows the core: a full FIFO back-pressures the packer, which records what it cannot send as
  LOSS (reason OUTPUT). The engine itself never drops a word.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import crc, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qnode.firmware import link
from qnode.firmware.events import Kind
from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS, REGISTER_MAP, Access, RegisterMap

MAX_REQUEST_PAYLOAD = 16  # the longest request (REG_WRITE) has 6 bytes; longer is not a request
REPLY_BUFFER_BYTES = 1024  # REG_DATA of 255 registers: 3 + 4 * 255 = 1023 bytes
COUNTER_BITS = 32

FrameType = link.FrameType
ErrorCode = link.ErrorCode

# IDENTIFY payload (link.IDENTITY "<HBBHI8s16s") as register reads: (name, index, bytes, reversed).
# The gateware hash is 8 bytes, the big-endian form of gateware_hash[1] << 32 | gateware_hash[0].
IDENTITY_FIELDS = [
    ("protocol_version", 0, 2, False),
    ("channel_count", 0, 1, False),
    ("oversampling", 0, 1, False),
    ("bin_ps", 0, 2, False),
    ("sys_clk_khz", 0, 4, False),
    ("gateware_hash", 1, 4, True),
    ("gateware_hash", 0, 4, True),
]
BOARD_BYTES = 16

# what the reply emitter can load (LinkEngine.elaborate): the register bus's data, the same with
# its bytes reversed (the gateware hash), a REG_DATA header, an address, an ERROR payload, and
# the board name 4 bytes at a time
SRC_R_DATA, SRC_R_DATA_SWAPPED, SRC_READ_HEADER, SRC_ADDRESS, SRC_ERROR, SRC_BOARD = range(6)
EMIT_SOURCES = SRC_BOARD + BOARD_BYTES // 4


def event_rate_words_per_s(baud: float, words_per_frame: int = link.MAX_EVENT_WORDS) -> float:
    """Event words per second an 8N1 UART at ``baud`` carries in EVENTS frames of
    ``words_per_frame`` words (10 line bits per byte; frame overhead: 6 header + 8 index/epoch +
    4 CRC bytes)."""
    frame_bytes = link.FRAME_OVERHEAD + 8 + 8 * words_per_frame
    return baud / 10 * words_per_frame / frame_bytes


class LinkEngine(wiring.Component):
    """Link protocol engine. ``board``: the name IDENTIFY reports (at most 16 ASCII bytes).
    ``read_latency``: that of the RegisterFile on the bus (1, 2 or 3 clocks from ``addr``)."""

    def __init__(self, *, board: str, regmap: RegisterMap = REGISTER_MAP,
                 word_fifo_depth: int = 1024, max_event_words: int = link.MAX_EVENT_WORDS,
                 rx_ring_bytes: int = 128, read_latency: int = 1):
        board_bytes = board.encode("ascii")
        if len(board_bytes) > BOARD_BYTES:
            raise ValueError(f"board name {board!r} is longer than {BOARD_BYTES} bytes")
        if not 1 <= max_event_words <= link.MAX_EVENT_WORDS:
            raise ValueError(f"max_event_words must be 1..{link.MAX_EVENT_WORDS}")
        if rx_ring_bytes & (rx_ring_bytes - 1) or rx_ring_bytes < 2 * (10 + MAX_REQUEST_PAYLOAD):
            raise ValueError("rx_ring_bytes must be a power of two holding two requests")
        if read_latency not in (1, 2, 3):
            raise ValueError(f"read_latency must be 1, 2 or 3 (the RegisterFile's), not {read_latency}")
        self.read_latency = read_latency
        self.board = board_bytes.ljust(BOARD_BYTES, b"\0")
        self.regmap = regmap
        self.word_fifo_depth = word_fifo_depth
        self.max_event_words = max_event_words
        self.rx_ring_bytes = rx_ring_bytes
        super().__init__({
            "rx": In(stream.Signature(8)),  # bytes from the UART
            "tx": Out(stream.Signature(8)),  # bytes to the UART
            "words": In(stream.Signature(64)),  # event words from the core's packer
            "addr": Out(ADDRESS_BITS),  # register bus (RegisterFile port)
            "w_en": Out(1),
            "w_data": Out(DATA_BITS),
            "r_data": In(DATA_BITS),
            # receiver counters (wrap)
            "frames_received": Out(COUNTER_BITS),
            "crc_errors": Out(COUNTER_BITS),
            "bad_lengths": Out(COUNTER_BITS),
            "bytes_skipped": Out(COUNTER_BITS),
            # transmitter counters (wrap)
            "replies_sent": Out(COUNTER_BITS),
            "event_frames_sent": Out(COUNTER_BITS),
            "words_sent": Out(COUNTER_BITS),
        })

    # -- the register map as hardware --------------------------------------------------

    def _decode_address(self, m, address):
        """(exists, read_only) of ``address`` from the register map, registered: valid the
        clock after ``address`` (a decode over every address of the map is several LUT levels)."""
        exists = Signal()
        read_only = Signal()
        m.d.sync += [exists.eq(0), read_only.eq(0)]
        with m.Switch(address):
            for reg in self.regmap:
                for a in reg.addresses():
                    with m.Case(a):
                        m.d.sync += [exists.eq(1), read_only.eq(reg.access is Access.RO)]
        return exists, read_only

    def elaborate(self, platform):
        m = Module()
        ring_bits = (self.rx_ring_bytes - 1).bit_length()

        # ---------------------------------------------------------------- receiver ring
        m.submodules.ring = ring = Memory(shape=8, depth=self.rx_ring_bytes, init=[])
        ring_w = ring.write_port()
        ring_r = ring.read_port(domain="comb")
        tail = Signal(ring_bits + 1)  # next byte written
        head = Signal(ring_bits + 1)  # next byte the parser reads
        start = Signal(ring_bits + 1)  # first byte of the candidate frame (or == head while searching)
        m.d.comb += [
            self.rx.ready.eq((tail - start)[:ring_bits + 1] < self.rx_ring_bytes),
            ring_w.addr.eq(tail[:ring_bits]),
            ring_w.data.eq(self.rx.payload),
            ring_w.en.eq(self.rx.valid & self.rx.ready),
            ring_r.addr.eq(head[:ring_bits]),
        ]
        with m.If(self.rx.valid & self.rx.ready):
            m.d.sync += tail.eq(tail + 1)
        byte = ring_r.data
        have = head != tail

        m.submodules.rx_crc = rx_crc = crc.catalog.CRC32_ISO_HDLC(data_width=8).create()
        m.d.comb += rx_crc.data.eq(byte)

        ftype = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        received = Signal(16)  # payload bytes so far
        payload = Signal(8 * 8)  # the first 8 payload bytes (requests use at most 6)
        crc_left = Signal(range(5))
        low_over = Signal()  # length's low byte > MAX_REQUEST_PAYLOAD (set in LEN0)
        low_zero = Signal()  # ... and == 0
        req_address = payload[0:16]
        read_count = payload[16:24]
        write_value = payload[16:48]

        # ---------------------------------------------------------------- reply buffer
        m.submodules.reply = reply = Memory(shape=8, depth=REPLY_BUFFER_BYTES, init=[])
        reply_w = reply.write_port()
        reply_r = reply.read_port()  # one clock latency; the transmitter waits for it
        reply_pending = Signal()
        reply_type = Signal(8)
        reply_seq = Signal(8)
        reply_len = Signal(16)

        err_code = Signal(8)
        err_addr = Signal(16)

        # The emitter writes ``emit_n`` bytes of ``emit_val`` (LSB first) to the reply buffer.
        # The executor only names the source (``emit``: a small code, registered); the emitter
        # loads the value a clock later, from registers that hold still until then (r_data: the
        # bus address changes at the earliest at the end of that clock). So the executor's many
        # states never sit in front of a 32-bit value mux.
        emit_val = Signal(32)
        emit_n = Signal(range(5))
        emit_go = Signal()  # a request waits: load it
        emit_src = Signal(range(EMIT_SOURCES))
        emit_req_n = Signal(range(5))
        wptr = Signal(range(REPLY_BUFFER_BYTES + 1))
        emit_idle = (emit_n == 0) & ~emit_go
        writing = emit_n != 0
        m.d.comb += [reply_w.addr.eq(wptr), reply_w.data.eq(emit_val[:8]), reply_w.en.eq(writing)]
        r = self.r_data
        sources = {
            SRC_R_DATA: r,
            SRC_R_DATA_SWAPPED: Cat(r[24:32], r[16:24], r[8:16], r[0:8]),
            SRC_READ_HEADER: Cat(payload[0:16], payload[16:24]),  # address, count
            SRC_ADDRESS: payload[0:16],
            **{SRC_BOARD + j: int.from_bytes(self.board[4 * j:4 * j + 4], "little")
               for j in range(BOARD_BYTES // 4)},
        }
        with m.If(emit_go):
            m.d.sync += [emit_go.eq(0), emit_n.eq(emit_req_n)]
            with m.Switch(emit_src):
                for code, value in sources.items():
                    with m.Case(code):
                        m.d.sync += emit_val.eq(value)
                with m.Case(SRC_ERROR):
                    m.d.sync += emit_val.eq(Cat(ftype, err_code, err_addr))
        with m.Elif(writing):
            m.d.sync += [emit_val.eq(emit_val >> 8), emit_n.eq(emit_n - 1), wptr.eq(wptr + 1)]

        def emit(source, nbytes):
            m.d.sync += [emit_src.eq(source), emit_req_n.eq(nbytes), emit_go.eq(1)]

        # The address a REG_READ or REG_WRITE checks, and what the map says of it, as a pipeline:
        # ``check_addr`` is a clock behind ``index``, ``exists``/``read_only`` two; the states
        # that change ``index`` pass through two SETTLE states before the next check.
        index = Signal(8)  # register index within a REG_READ
        check_addr = Signal(ADDRESS_BITS)
        m.d.sync += check_addr.eq(req_address + index)
        exists, read_only = self._decode_address(m, check_addr)

        def settle(prefix, then):
            for w in range(2):
                with m.State(f"{prefix}_SETTLE{w}"):
                    m.next = f"{prefix}_SETTLE1" if w == 0 else then

        def resync():
            # not a frame start: drop the candidate's first byte and search from the next
            m.d.sync += [start.eq(start + 1), head.eq(start + 1),
                         self.bytes_skipped.eq(self.bytes_skipped + 1)]
            m.next = "SEARCH"

        def error(code, address):
            m.d.sync += [err_code.eq(code), err_addr.eq(address)]
            m.next = "ERROR"

        def reg_read_states(prefix, address, then):
            """States that put ``address`` on the bus; ``then(r_data)`` runs when it is valid."""
            with m.State(f"{prefix}_ADDR"):
                m.d.sync += self.addr.eq(address)
                m.next = f"{prefix}_WAIT0"
            for w in range(self.read_latency):  # the register file's read latency
                with m.State(f"{prefix}_WAIT{w}"):
                    m.next = f"{prefix}_WAIT{w + 1}" if w + 1 < self.read_latency else f"{prefix}_DATA"
            with m.State(f"{prefix}_DATA"):
                with m.If(emit_idle):
                    then(self.r_data)

        with m.FSM(name="rx"):
            with m.State("SEARCH"):
                with m.If(have):
                    m.d.sync += head.eq(head + 1)
                    with m.If(byte == link.MAGIC[0]):
                        m.next = "MAGIC1"
                    with m.Else():
                        m.d.sync += [start.eq(head + 1), self.bytes_skipped.eq(self.bytes_skipped + 1)]
            with m.State("MAGIC1"):
                with m.If(have):
                    with m.If(byte == link.MAGIC[1]):
                        m.d.sync += head.eq(head + 1)
                        m.next = "TYPE"
                    with m.Else():
                        resync()
            with m.State("TYPE"):
                with m.If(have):
                    m.d.comb += [rx_crc.start.eq(1), rx_crc.valid.eq(1)]
                    m.d.sync += [head.eq(head + 1), ftype.eq(byte)]
                    m.next = "SEQ"
            with m.State("SEQ"):
                with m.If(have):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [head.eq(head + 1), seq.eq(byte)]
                    m.next = "LEN0"
            with m.State("LEN0"):
                with m.If(have):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [head.eq(head + 1), length[:8].eq(byte),
                                 low_over.eq(byte > MAX_REQUEST_PAYLOAD), low_zero.eq(byte == 0)]
                    m.next = "LEN1"
            with m.State("LEN1"):
                with m.If(have):
                    # length > MAX_REQUEST_PAYLOAD (< 256): its high byte is not 0, or the low
                    # byte, judged in LEN0, is over (no 16-bit compare behind the ring read)
                    with m.If((byte != 0) | low_over):
                        m.d.sync += self.bad_lengths.eq(self.bad_lengths + 1)
                        resync()
                    with m.Else():
                        m.d.comb += rx_crc.valid.eq(1)
                        m.d.sync += [head.eq(head + 1), length[8:].eq(byte), received.eq(0),
                                     payload.eq(0), crc_left.eq(4)]
                        m.next = "PAYLOAD"
                        with m.If((byte == 0) & low_zero):
                            m.next = "CRC"
            with m.State("PAYLOAD"):
                with m.If(have):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [head.eq(head + 1), received.eq(received + 1)]
                    with m.If(received < 8):
                        m.d.sync += payload.word_select(received[:3], 8).eq(byte)
                    with m.If(received + 1 == length):
                        m.next = "CRC"
            with m.State("CRC"):
                with m.If(have):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [head.eq(head + 1), crc_left.eq(crc_left - 1)]
                    with m.If(crc_left == 1):
                        m.next = "CHECK"
            with m.State("CHECK"):  # the CRC register has taken the last byte
                with m.If(rx_crc.match_detected):
                    m.d.sync += [start.eq(head), self.frames_received.eq(self.frames_received + 1)]
                    m.next = "EXECUTE"
                with m.Else():
                    m.d.sync += self.crc_errors.eq(self.crc_errors + 1)
                    resync()

            # ---------------------------------------------------------------- executor
            with m.State("EXECUTE"):
                with m.If(~reply_pending):  # the reply buffer is free
                    m.d.sync += [wptr.eq(0), index.eq(0), reply_seq.eq(seq)]
                    with m.If(ftype == FrameType.HELLO):
                        m.d.sync += reply_type.eq(FrameType.IDENTIFY)
                        m.next = "ID0_ADDR"
                    with m.Elif((ftype == FrameType.REG_READ) & (length == 3)):
                        m.d.sync += reply_type.eq(FrameType.REG_DATA)
                        m.next = "READ_SETTLE0"
                    with m.Elif((ftype == FrameType.REG_WRITE) & (length == 6)):
                        m.d.sync += reply_type.eq(FrameType.REG_ACK)
                        m.next = "WRITE_SETTLE0"
                    with m.Else():
                        error(ErrorCode.BAD_REQUEST, 0)

            # HELLO: the identity block, register by register, then the board name
            for i, (name, idx, nbytes, swap) in enumerate(IDENTITY_FIELDS):
                def take(r, nbytes=nbytes, swap=swap, i=i):
                    emit(SRC_R_DATA_SWAPPED if swap else SRC_R_DATA, nbytes)
                    m.next = f"ID{i + 1}_ADDR" if i + 1 < len(IDENTITY_FIELDS) else "BOARD0"
                reg_read_states(f"ID{i}", self.regmap.address(name, idx), take)
            for j in range(BOARD_BYTES // 4):
                with m.State(f"BOARD{j}"):
                    with m.If(emit_idle):
                        emit(SRC_BOARD + j, 4)
                        m.next = f"BOARD{j + 1}" if j + 1 < BOARD_BYTES // 4 else "DONE"

            # REG_READ: every address must exist before any value goes out
            with m.State("READ_CHECK"):
                with m.If(index == read_count):
                    m.d.sync += index.eq(0)
                    emit(SRC_READ_HEADER, 3)
                    m.next = "READ_ADDR"
                    with m.If(read_count == 0):
                        m.next = "DONE"
                with m.Elif(~exists):
                    error(ErrorCode.BAD_ADDRESS, check_addr)
                with m.Else():
                    m.d.sync += index.eq(index + 1)
                    m.next = "READ_SETTLE0"
            settle("READ", "READ_CHECK")

            def read_take(r):
                emit(SRC_R_DATA, 4)
                m.d.sync += index.eq(index + 1)
                m.next = "READ_ADDR"
                with m.If(index + 1 == read_count):
                    m.next = "DONE"
            reg_read_states("READ", req_address + index, read_take)

            # REG_WRITE: write, then read back what the register holds
            settle("WRITE", "WRITE_CHECK")
            with m.State("WRITE_CHECK"):
                with m.If(~exists):
                    error(ErrorCode.BAD_ADDRESS, req_address)
                with m.Elif(read_only):
                    error(ErrorCode.READ_ONLY, req_address)
                with m.Else():
                    m.d.sync += [self.addr.eq(req_address), self.w_data.eq(write_value), self.w_en.eq(1)]
                    m.next = "WRITE_STROBE"
            with m.State("WRITE_STROBE"):  # the register file takes the write at this clock's end
                m.d.sync += self.w_en.eq(0)
                m.next = "WRITE_WAIT0"
            for w in range(self.read_latency):  # ... and has the new value read after these
                with m.State(f"WRITE_WAIT{w}"):
                    m.next = f"WRITE_WAIT{w + 1}" if w + 1 < self.read_latency else "WRITE_DATA"
            with m.State("WRITE_DATA"):
                with m.If(emit_idle):
                    emit(SRC_ADDRESS, 2)
                    m.next = "WRITE_VALUE"
            with m.State("WRITE_VALUE"):
                with m.If(emit_idle):
                    emit(SRC_R_DATA, 4)
                    m.next = "DONE"

            with m.State("ERROR"):
                m.d.sync += reply_type.eq(FrameType.ERROR)
                emit(SRC_ERROR, 4)
                m.next = "DONE"

            with m.State("DONE"):
                with m.If(emit_idle):
                    m.d.sync += [reply_len.eq(wptr), reply_pending.eq(1)]
                    m.next = "SEARCH"

        # ---------------------------------------------------------------- transmitter
        m.submodules.words_fifo = words_fifo = fifo.SyncFIFOBuffered(width=64, depth=self.word_fifo_depth)
        m.d.comb += [
            words_fifo.w_data.eq(self.words.payload),
            words_fifo.w_en.eq(self.words.valid),
            self.words.ready.eq(words_fifo.w_rdy),
        ]
        # The word the transmitter takes next, in a register: the FIFO's block RAM output
        # (slow clock-to-out) only feeds this register, never the byte and epoch logic.
        head = Signal(64)
        head_valid = Signal()
        take_head = Signal()
        m.d.comb += words_fifo.r_en.eq(~head_valid)
        with m.If(words_fifo.r_rdy & ~head_valid):
            m.d.sync += [head.eq(words_fifo.r_data), head_valid.eq(1)]
        with m.Elif(take_head):
            m.d.sync += head_valid.eq(0)
        word_index = Signal(32)  # words taken from the FIFO into frames, since reset
        epoch = Signal(32)  # the epoch in force after the last word taken

        m.submodules.tx_crc = tx_crc = crc.catalog.CRC32_ISO_HDLC(data_width=8).create()

        is_reply = Signal()
        f_type = Signal(8)
        f_seq = Signal(8)
        f_len = Signal(16)
        f_index = Signal(32)
        f_epoch = Signal(32)
        pos = Signal(16)  # byte position in the frame (from the magic)
        out = Signal(8)  # the byte on offer
        word = Signal(64)  # the event word whose bytes are going out
        k = Signal(16)  # payload byte index
        m.d.comb += [k.eq(pos - 6), reply_r.addr.eq(k), self.tx.payload.eq(out)]
        # words waiting (FIFO + head), registered: a clock late it can only undercount, since
        # only the transmitter's own takes remove words, and none happen in IDLE
        level = Signal(range(self.word_fifo_depth + 2))
        m.d.sync += level.eq(words_fifo.r_level + head_valid)
        n_words = Signal(range(self.max_event_words + 1))
        m.d.sync += n_words.eq(Mux(words_fifo.r_level + head_valid > self.max_event_words,
                                   self.max_event_words, words_fifo.r_level + head_valid))
        end = Signal(16)  # position of the first CRC byte: 6 + f_len, set with it
        # what SEND does with the byte at ``pos``, registered in FETCH (pos holds still until
        # SEND), so the UART handshake meets flip-flops, not 16-bit compares
        in_crc = Signal()
        crc_first = Signal()
        frame_last = Signal()

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                m.d.sync += pos.eq(0)
                with m.If(reply_pending):
                    m.d.sync += [is_reply.eq(1), f_type.eq(reply_type), f_seq.eq(reply_seq),
                                 f_len.eq(reply_len), end.eq(6 + reply_len)]
                    m.next = "FETCH"
                with m.Elif(level != 0):
                    m.d.sync += [is_reply.eq(0), f_type.eq(FrameType.EVENTS), f_seq.eq(0),
                                 f_len.eq(8 + 8 * n_words), end.eq(6 + 8 + 8 * n_words),
                                 f_index.eq(word_index), f_epoch.eq(epoch)]
                    m.next = "FETCH"
            with m.State("FETCH"):  # work out the byte at ``pos``
                m.next = "SEND"
                m.d.sync += [in_crc.eq((pos >= 2) & (pos < end)), crc_first.eq(pos == 2),
                             frame_last.eq(pos == end + 3)]
                with m.Switch(pos):
                    with m.Case(0):
                        m.d.sync += out.eq(link.MAGIC[0])
                    with m.Case(1):
                        m.d.sync += out.eq(link.MAGIC[1])
                    with m.Case(2):
                        m.d.sync += out.eq(f_type)
                    with m.Case(3):
                        m.d.sync += out.eq(f_seq)
                    with m.Case(4):
                        m.d.sync += out.eq(f_len[:8])
                    with m.Case(5):
                        m.d.sync += out.eq(f_len[8:])
                    with m.Default():
                        with m.If(pos >= end):
                            m.d.sync += out.eq(tx_crc.crc.word_select((pos - end)[:2], 8))
                        with m.Elif(is_reply):
                            m.next = "FETCH_REPLY"  # the buffer's read port has k now
                        with m.Elif(k < 4):
                            m.d.sync += out.eq(f_index.word_select(k[:2], 8))
                        with m.Elif(k < 8):
                            m.d.sync += out.eq(f_epoch.word_select(k[:2], 8))
                        with m.Elif(k[:3] == 0):  # a new word: take it from the head register
                            w = head
                            m.d.comb += take_head.eq(1)
                            m.d.sync += [out.eq(w[:8]), word.eq(w >> 8), word_index.eq(word_index + 1)]
                            with m.If(w[60:] == Kind.EPOCH):
                                m.d.sync += epoch.eq(w[:32])
                            with m.Elif(w[60:] == Kind.HEADER):
                                m.d.sync += epoch.eq(0)
                        with m.Else():
                            m.d.sync += [out.eq(word[:8]), word.eq(word >> 8)]
            with m.State("FETCH_REPLY"):
                m.d.sync += out.eq(reply_r.data)
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += self.tx.valid.eq(1)
                with m.If(self.tx.ready):
                    m.d.comb += [tx_crc.data.eq(out), tx_crc.valid.eq(in_crc), tx_crc.start.eq(crc_first)]
                    m.d.sync += pos.eq(pos + 1)
                    m.next = "FETCH"
                    with m.If(frame_last):
                        m.next = "IDLE"
                        with m.If(is_reply):
                            m.d.sync += [reply_pending.eq(0), self.replies_sent.eq(self.replies_sent + 1)]
                        with m.Else():
                            m.d.sync += [self.event_frames_sent.eq(self.event_frames_sent + 1),
                                         self.words_sent.eq(self.words_sent + (f_len - 8)[3:])]
        return m


def event_rate_table(bauds=(115_200, 1_000_000, 100_000_000 / 33, 3_000_000)) -> str:
    """The table in docs/link.md (``python -m qnode.gateware.link_engine``)."""
    lines = ["| baud | words/s, 1024-word frames | words/s, 64-word frames | words/s, 1-word frames |",
             "|---|---|---|---|"]
    for baud in bauds:
        lines.append(f"| {baud:,.0f} | {event_rate_words_per_s(baud):,.0f} "
                     f"| {event_rate_words_per_s(baud, 64):,.0f} | {event_rate_words_per_s(baud, 1):,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(event_rate_table())
