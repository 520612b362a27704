"""One-hot helpers for timing-critical selects: a LUT priority (no carry chain such as
``v & ~(v - 1)``) and an AND-OR select (no priority chain of muxes)."""

from amaranth import Cat, Mux, Value


def lowest(bits: Value) -> Value:
    """One-hot of the lowest set bit of ``bits`` (0 when none is set)."""
    return Cat(bits[i] & ~bits[:i].any() if i else bits[0] for i in range(len(bits)))


def select(one_hot, values) -> Value:
    """The value whose bit of ``one_hot`` is set (0 when none), OR-ed over all of them."""
    out = 0
    for i, v in enumerate(values):
        v = Value.cast(v)
        out = out | (v & one_hot[i].replicate(len(v)))
    return out


def index(one_hot) -> Value:
    """The position of ``one_hot``'s set bit (0 when none)."""
    out = 0
    for i in range(len(one_hot)):
        out = out | Mux(one_hot[i], i, 0)
    return out
