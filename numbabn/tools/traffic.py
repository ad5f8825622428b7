"""The traffic model: the least data each op must move, counted in passes over the input.

Batch normalization cannot move less data than

==========  =========================  ==================================================
op          memory floor               why
==========  =========================  ==================================================
train       1 copy + 1 read of x       statistics read x; normalizing reads x, writes y
infer       1 copy                     read x, write y
step        2 copies + 4 reads         train, then the backward sums read x and dy, and
                                       the input gradient reads x and dy and writes dx
==========  =========================  ==================================================

where a *copy* reads one input-sized array and writes one (2 passes) and a *read* reads one
(1 pass). An op's bandwidth is its passes times the input's bytes over its time
(:func:`gb_per_s`); its floor on a machine is the time of its copies and reads measured there
(:func:`floors`), so time ÷ floor says how far an op is from the memory bound. ``bench`` (CPU
roofline), ``selftest`` (GPU copy bandwidth) and the asv ``track_bandwidth`` benchmarks all
count bytes this way.
"""
import dataclasses

# Passes over an input-sized array: a copy reads one and writes one, a read reads one.
COPY_PASSES = 2
READ_PASSES = 1


@dataclasses.dataclass(frozen=True)
class Traffic:
    """An op's least traffic: ``copies`` and ``reads`` of input-sized arrays."""
    copies: int
    reads: int

    @property
    def passes(self):
        """Input-sized arrays read plus written."""
        return COPY_PASSES * self.copies + READ_PASSES * self.reads

    def floor(self, copy_seconds, read_seconds):
        """The op's time at the memory bound, from the time of one copy and of one read."""
        return self.copies * copy_seconds + self.reads * read_seconds

    def describe(self):
        """``"2 copies + 4 reads"``."""
        parts = [f"{n} {word if n == 1 else plural}"
                 for n, word, plural in ((self.copies, "copy", "copies"),
                                         (self.reads, "read", "reads")) if n]
        return " + ".join(parts)


OPS = ("train", "infer", "step")
TRAFFIC = {
    "train": Traffic(copies=1, reads=1),
    "infer": Traffic(copies=1, reads=0),
    "step": Traffic(copies=2, reads=4),
}


def bytes_moved(op, nbytes):
    """Bytes ``op`` must move on an input of ``nbytes`` bytes."""
    return TRAFFIC[op].passes * nbytes


def gb_per_s(op, nbytes, seconds):
    """The bandwidth ``op`` uses when it takes ``seconds`` on an input of ``nbytes`` bytes."""
    return bytes_moved(op, nbytes) / seconds / 1e9


def floors(copy_seconds, read_seconds, ops=OPS):
    """Each op's floor (seconds) from the time of one copy and of one read of the input."""
    return {op: TRAFFIC[op].floor(copy_seconds, read_seconds) for op in ops}


def legend(ops=OPS):
    """``"train = 1 copy + 1 read, infer = 1 copy, step = 2 copies + 4 reads"``."""
    return ", ".join(f"{op} = {TRAFFIC[op].describe()}" for op in ops)
